// A LoRA adapter (tree depth 0) as a GGUF LoRA file, the one llama.cpp's --lora and its server
// load: general.type "adapter", adapter.type "lora", adapter.lora.alpha (llama.cpp scales by
// alpha / rank, as PEFT does), and per adapted projection "blk.N.<name>.weight.lora_a" (A as
// PEFT stores it, (r, in)) and ".lora_b" (B, (out, r)), B's rows of q and k in llama.cpp's order.
#pragma once

#include <string>

#include "adapters/lora.h"
#include "model/config.h"

namespace tinylora {

void WriteLoraGguf(const Adapter& adapter, const LlamaConfig& base, const std::string& path);

}  // namespace tinylora
