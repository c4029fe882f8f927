// Named F32 tensors in one allocation, with their gradients: what the optimiser updates and a
// checkpoint saves (llm.c's parameter block).
//
// A tensor may be split into equal contiguous segments (a tree adapter's leaves, a router's
// nodes). A segmented tensor has no dense gradient: a segment's gradient exists only once it
// is touched in the current step (SegmentGrad), so a step's gradient memory and the work of
// zeroing, clipping and updating follow the segments a batch used, not the bank's size.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "ops/segment_grads.h"

namespace tinylora {

class ParamBlock final : public SegmentGrads {
 public:
  // Adds a tensor of `segments` equal pieces along its first dimension (1: a dense tensor);
  // returns its index. Call Allocate() after the last Add().
  int Add(const std::string& name, const std::vector<int64_t>& shape, int segments = 1);
  void Allocate(bool with_grads);
  // Before Allocate(): tensor i lives at `data` (e.g. a memory-mapped file) instead of the
  // block's own storage.
  void SetExternal(int i, float* data) { at(i).external = data; }

  int size() const { return static_cast<int>(tensors_.size()); }
  const std::string& name(int i) const { return at(i).name; }
  const std::vector<int64_t>& shape(int i) const { return at(i).shape; }
  int64_t numel(int i) const { return at(i).numel; }
  int segments(int i) const { return at(i).segments; }
  int64_t segment_numel(int i) const { return at(i).numel / at(i).segments; }
  bool sparse(int i) const { return at(i).segments > 1; }
  int Find(const std::string& name) const;  // -1 when absent
  float* value(int i) { return at(i).external ? at(i).external : values_.data() + at(i).offset; }
  const float* value(int i) const {
    return at(i).external ? at(i).external : values_.data() + at(i).offset;
  }
  // The block's own storage: every tensor not SetExternal, in Add order.
  const std::vector<float>& values() const { return values_; }
  int64_t total() const { return next_; }  // elements over all tensors
  bool with_grads() const override { return with_grads_; }

  // The dense gradient of tensor i; null for a segmented tensor or without gradients.
  float* grad(int i);
  float* TensorGrad(int i) override { return grad(i); }
  const float* grad(int i) const;
  // Segment s's gradient, zeroed on its first use in a step (a dense tensor: a view into its
  // gradient). Not thread-safe: take the pointers before a parallel region. With `fresh`, a
  // first use is not zeroed: *fresh says so, and the caller must overwrite, not accumulate.
  float* SegmentGrad(int i, int s, bool* fresh = nullptr) override;
  // Segment s's gradient if touched in this step, else null (dense: always the view).
  const float* TouchedSegmentGrad(int i, int s) const;
  // Every gradient that exists in this step, in a fixed order (tensor index, then segment):
  // fn(tensor, segment or -1 for a dense tensor, gradient, element count).
  void ForEachGrad(const std::function<void(int i, int s, float* g, int64_t n)>& fn);
  void ForEachGrad(const std::function<void(int i, int s, const float* g, int64_t n)>& fn) const;
  // Tensor i's whole gradient, zeros where no segment was touched (tests, tools).
  std::vector<float> DenseGrad(int i) const;
  // Zeroes the dense gradients and forgets the touched segments.
  void ZeroGrads();
  int64_t touched_segments() const { return static_cast<int64_t>(touched_.size()); }

 private:
  struct Tensor {
    std::string name;
    std::vector<int64_t> shape;
    int64_t numel = 0, offset = 0, grad_offset = -1;  // grad_offset: dense gradients only
    float* external = nullptr;
    int segments = 1;
    int32_t used = 0;                            // pool buffers handed out in this step
    std::vector<int32_t> slot;                   // segment → its gradient buffer, -1 untouched
    std::vector<std::unique_ptr<float[]>> pool;  // segment gradient buffers, reused per step
  };
  const Tensor& at(int i) const { return tensors_[static_cast<size_t>(i)]; }
  Tensor& at(int i) { return tensors_[static_cast<size_t>(i)]; }
  void SortTouched() const;

  std::vector<Tensor> tensors_;
  int64_t next_ = 0;
  bool with_grads_ = false;
  std::vector<float> values_, grads_;
  mutable std::vector<std::pair<int, int>> touched_;  // (tensor, segment) of this step
  mutable bool touched_sorted_ = true;
};

}  // namespace tinylora
