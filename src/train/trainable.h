// The base model's weights as F32 parameters with gradients, for pretraining: one ParamBlock
// (HF tensor names) with ModelWeights / ModelGrads views over it.
#pragma once

#include <memory>

#include "model/weights.h"
#include "train/param_block.h"
#include "train/train_model.h"

namespace tinylora {

struct TrainableBase {
  ParamBlock params;
  ModelWeights weights;  // views into params' values
  ModelGrads grads;      // views into params' gradients; lm_head == embed when tied
  int ParamIndex(const std::string& name) const { return params.Find(name); }
};

// Copies (widening BF16 to F32) every tensor of `source` into a fresh TrainableBase.
std::unique_ptr<TrainableBase> MakeTrainable(const ModelWeights& source);

// Writes config.json + model.safetensors (F32) of a TrainableBase into `dir`, atomically.
void SaveModel(const TrainableBase& base, const std::string& dir);

}  // namespace tinylora
