// The gradients of a trainable bank as the kernels reach them, without knowing who owns them.
#pragma once

namespace tinylora {

// Where a bank's gradients live (model/param_block's ParamBlock): a tensor's dense gradient,
// or one segment's (a leaf, a router node), zeroed on its first use in a step; `fresh` (when
// given) says whether this call was that first use.
class SegmentGrads {
 public:
  virtual float* SegmentGrad(int tensor, int segment, bool* fresh = nullptr) = 0;
  virtual float* TensorGrad(int tensor) = 0;
  virtual bool with_grads() const = 0;

 protected:
  ~SegmentGrads() = default;
};

}  // namespace tinylora
