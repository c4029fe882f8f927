// LoRA adapters with PEFT's semantics, names and files (DESIGN.md §2 with d = 0):
//   y = W x + s · B (A · dropout(x)),   A (r, in), B (out, r), s = alpha / r.
// A tree adapter (DESIGN.md §2) stacks 2^d leaves in the same tensors; this is its d = 0 case.
// Legend: N = tokens, r = rank.
#pragma once

#include <array>
#include <memory>
#include <string>
#include <vector>

#include "formats/safetensors.h"
#include "model/config.h"
#include "model/param_block.h"
#include "ops/tree_lora.h"

namespace tinylora {

// "q_proj,v_proj" or "all-linear" → modules; Error naming `what` otherwise.
std::vector<Module> ParseTargets(const std::string& text, const std::string& what);

struct AdapterConfig {
  int r = 8;
  double alpha = 16;
  double dropout = 0;
  std::vector<Module> targets = {Module::kQ, Module::kV};
  int tree_depth = 0;
  std::string gate = "path";
  std::string training_json = "{}";  // how it was trained, kept in adapter_config.json
  double scale() const { return alpha / r; }
};

class Adapter {
 public:
  // A fresh adapter: A Kaiming-uniform (PEFT: bound 1/sqrt(in)), B zero.
  static std::unique_ptr<Adapter> Create(const LlamaConfig& base, const AdapterConfig& config,
                                         uint64_t seed, bool with_grads);
  // A PEFT adapter directory; every tensor checked against the base's shapes. The file is
  // memory-mapped; without gradients (inference) its F32 tensors are used in place (copy-on-
  // write pages, read from disk when first touched: a leaf never routed to is never read), and
  // only a tree's B is copied, to go leaf-major.
  static std::unique_ptr<Adapter> Load(const std::string& dir, const LlamaConfig& base,
                                       bool with_grads);
  // adapter_config.json + adapter_model.safetensors, each written atomically.
  void Save(const std::string& dir) const;

  const AdapterConfig& config() const { return config_; }
  // JSON saved as adapter_config.json's "training" record.
  void SetTrainingRecord(const std::string& json) { config_.training_json = json; }
  // The adapter of (layer, module), or null when that projection is not adapted.
  const LoraWeights* Get(int layer, Module m) const {
    const LoraWeights& w = modules_[static_cast<size_t>(layer)][static_cast<size_t>(m)];
    return w.A == nullptr ? nullptr : &w;
  }
  // The block's router, or null for a plain LoRA (tree_depth 0).
  const RouterWeights* Router(int layer) const {
    return config_.tree_depth > 0 ? &routers_[static_cast<size_t>(layer)] : nullptr;
  }
  int depth() const { return config_.tree_depth; }
  ParamBlock& params() { return params_; }
  const ParamBlock& params() const { return params_; }
  int64_t ParamCount() const { return params_.total(); }
  // Tensor i's shape and data as adapter files hold them (a tree's B: PEFT's (out, leaves·r)),
  // from `data` in memory layout (its values, or a gradient).
  std::vector<int64_t> FileShape(int i) const;
  std::vector<float> ToFileLayout(int i, const float* data) const;

 private:
  Adapter() = default;
  // Registers the tensors; those found as F32 in `in_place` (same shape and layout) are used
  // from that mapping instead of being allocated.
  void Build(const LlamaConfig& base, bool with_grads, const SafetensorsFile* in_place = nullptr);
  bool LeafMajorB(int i) const;  // a tree's B: leaf-major here, PEFT in files
  AdapterConfig config_;
  ParamBlock params_;
  std::unique_ptr<SafetensorsFile> mapped_;  // the loaded file, when tensors live in it
  std::vector<std::array<LoraWeights, kNumModules>> modules_;  // (L, 7)
  std::vector<RouterWeights> routers_;                         // (L) when tree_depth > 0
};

// PEFT tensor names: base_model.model.<ModulePath>.lora_A.weight / lora_B.weight
std::string LoraTensorName(int layer, Module m, char which);
// base_model.model.model.layers.{i}.tree_router.weight / .bias
std::string RouterTensorName(int layer, bool bias);

}  // namespace tinylora
