// AdamW (decoupled weight decay, bias correction, as torch.optim.AdamW), gradient clipping by
// global norm, and the learning-rate schedule.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "train/param_block.h"

namespace tinylora {

struct AdamWOptions {
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  double weight_decay = 0.0;
  bool decay_vectors = false;  // also decay 1-D tensors (norm weights); torch decays all
};

class AdamW {
 public:
  explicit AdamW(ParamBlock* params);
  // One update with learning rate `lr`; `step` counts from 1 (bias correction).
  void Step(const AdamWOptions& o, double lr, int64_t step);
  // Tensor i of the block learns at lr · scale (e.g. the routers' own rate).
  void SetLrScale(int i, double scale) { lr_scale_[static_cast<size_t>(i)] = scale; }
  std::vector<float>& m() { return m_; }  // first moments, same layout as the parameters
  std::vector<float>& v() { return v_; }  // second moments

 private:
  ParamBlock* p_;
  std::vector<float> m_, v_;
  std::vector<double> lr_scale_;
};

// sqrt(Σ g²) over every gradient, summed in double in fixed-size chunks in a fixed order, so
// the value does not depend on the thread count.
double GradNorm(const ParamBlock& params);
// The name of the first tensor holding a non-finite gradient, or "" when all are finite.
std::string FirstNonFiniteGrad(const ParamBlock& params);
// Scales every gradient by `clip / norm` when norm > clip (torch's clip_grad_norm_ with its
// 1e-6). Returns the norm before clipping.
double ClipGradNorm(ParamBlock& params, double clip);

struct Schedule {
  std::string kind = "cosine";  // cosine | linear | constant
  double lr = 1e-3;
  int64_t warmup = 0;             // steps of linear warm-up from 0
  int64_t total = 1;              // steps in the run
  double min_lr_ratio = 0.0;      // decay ends at lr · min_lr_ratio
  double At(int64_t step) const;  // learning rate of update `step` (1-based)
};

}  // namespace tinylora
