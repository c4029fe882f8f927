// The base model's weights as F32 parameters with gradients, for pretraining: one ParamBlock
// (HF tensor names) with ModelWeights / ModelGrads views over it.
#pragma once

#include <memory>

#include "model/param_block.h"
#include "model/weights.h"
#include "train/train_model.h"

namespace tinylora {

struct TrainableBase {
  ParamBlock params;
  ModelWeights weights;  // views into params' values
  ModelGrads grads;      // views into params' gradients; lm_head == embed when tied
  int ParamIndex(const std::string& name) const { return params.Find(name); }
};

// Copies (widening BF16 to F32) every tensor of `source` into a fresh TrainableBase.
std::unique_ptr<TrainableBase> MakeTrainable(const ModelWeights& source, bool with_grads = true);

// A randomly initialised model: matrices N(0, 0.02²) (HF's initializer_range), norms 1, drawn
// from a counter-based hash so the values depend on the seed only, not the thread count.
std::unique_ptr<TrainableBase> CreateRandomBase(const LlamaConfig& config, uint64_t seed,
                                                bool with_grads);

// Writes config.json + model.safetensors (F32 or BF16) of a TrainableBase into `dir`, each
// file atomically.
void SaveModel(const TrainableBase& base, const std::string& dir, Format format = Format::kF32);

}  // namespace tinylora
