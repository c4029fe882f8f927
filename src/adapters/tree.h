// Tree-routed LoRA (DESIGN.md §2) as the adapters see it: the kernels, routing and statistics
// are in ops/tree_lora.h; here, what an adapter config says about them.
#pragma once

#include "adapters/lora.h"
#include "ops/tree_lora.h"

namespace tinylora {

// The gate an adapter config names ("path" or "unit", checked when the adapter is made).
inline GateKind GateOf(const AdapterConfig& c) {
  return c.gate == "unit" ? GateKind::kUnit : GateKind::kPath;
}

}  // namespace tinylora
