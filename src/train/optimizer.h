// AdamW (decoupled weight decay, bias correction, as torch.optim.AdamW), gradient clipping by
// global norm, and the learning-rate schedule.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "model/param_block.h"

namespace tinylora {

struct AdamWOptions {
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  double weight_decay = 0.0;
  bool decay_vectors = false;  // also decay 1-D tensors (norm weights); torch decays all
};

// Segmented tensors (a tree's leaves, a router's nodes; see ParamBlock) are updated lazily:
// only segments with a gradient in this step move, their moments are allocated on first use,
// and each counts its own updates for the bias correction (an unused leaf neither decays nor
// drifts on stale momentum, and a rarely used one takes full-size steps: FFF's LocalAdam).
// Dense tensors follow torch.optim.AdamW exactly.
class AdamW {
 public:
  explicit AdamW(ParamBlock* params, const Backend& backend = CpuBackend());
  // One update with learning rate `lr`; `step` counts from 1 (bias correction). The gradients
  // are taken times `grad_scale` (ClipScale: clipping folded into the update, one pass less).
  void Step(const AdamWOptions& o, double lr, int64_t step, float grad_scale = 1.0f);
  // Tensor i of the block learns at lr · scale (e.g. the routers' own rate).
  void SetLrScale(int i, double scale) { state_[static_cast<size_t>(i)].lr_scale = scale; }

  // Checkpoint access. A dense tensor's moments (numel floats each):
  float* m(int i) { return state_[static_cast<size_t>(i)].m.data(); }
  float* v(int i) { return state_[static_cast<size_t>(i)].v.data(); }
  // A segmented tensor's segments that have moments, ascending; their moments (segment_numel
  // floats each, allocated zero by Segment()) and update counts.
  std::vector<int> SegmentsWithState(int i) const;
  float* SegmentM(int i, int s);
  float* SegmentV(int i, int s) { return SegmentM(i, s) + params_->segment_numel(i); }
  int64_t& SegmentSteps(int i, int s) {
    return state_[static_cast<size_t>(i)].steps[static_cast<size_t>(s)];
  }
  // Segments holding optimizer state, over all tensors.
  int64_t segments_with_state() const;

 private:
  struct TensorState {
    double lr_scale = 1.0;
    std::vector<float> m, v;                    // dense tensors
    std::vector<std::unique_ptr<float[]>> seg;  // segmented: m then v, null until first use
    std::vector<int64_t> steps;                 // segmented: updates so far
  };
  ParamBlock* params_;
  const Ops& ops_;
  std::vector<TensorState> state_;
};

// sqrt(Σ g²) over every gradient, summed in double in fixed-size chunks in a fixed order, so
// the value does not depend on the thread count.
double GradNorm(const ParamBlock& params, const Ops& ops = CpuBackend().ops());
// The name of the first tensor holding a non-finite gradient, or "" when all are finite.
std::string FirstNonFiniteGrad(const ParamBlock& params);
// The factor torch's clip_grad_norm_ applies: clip / (norm + 1e-6) when norm > clip, else 1.
float ClipScale(double norm, double clip);
// Scales every gradient by ClipScale. Returns the norm before clipping.
double ClipGradNorm(ParamBlock& params, double clip, const Ops& ops = CpuBackend().ops());

struct Schedule {
  std::string kind = "cosine";  // cosine | linear | constant
  double lr = 1e-3;
  int64_t warmup = 0;             // steps of linear warm-up from 0
  int64_t total = 1;              // steps in the run
  double min_lr_ratio = 0.0;      // decay ends at lr · min_lr_ratio
  double At(int64_t step) const;  // learning rate of update `step` (1-based)
};

}  // namespace tinylora
