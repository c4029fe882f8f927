// The step's one reduction point of data-parallel training: every rank's gradients of a
// ParamBlock summed, so that every rank clips and updates the same parameters the same way.
#pragma once

#include <cstdint>
#include <vector>

#include "dist/comm.h"
#include "model/param_block.h"

namespace tinylora {

class GradSync {
 public:
  explicit GradSync(Comm& comm) : comm_(comm) {}
  // Block `layer`'s backward of the step's last micro-batch is done: its dense gradients (the
  // tensors named "…layers.N.…") start summing now, while backward goes on to the blocks
  // below (one bucket per block: 1.1 MB of a TinyLlama all-linear LoRA). Sum() waits for them.
  void BlockDone(ParamBlock& params, int layer);
  // Sums the gradients over the ranks. Dense tensors: all of them. Segmented tensors (a tree's
  // leaves, its routers' nodes): the union of the segments any rank touched in this step —
  // their indices first, then only their values — so the traffic follows the leaves the step
  // used, never 2^d, and every rank ends with the same touched set (lazy AdamW then moves the
  // same segments, with the same update counts, everywhere). One rank: nothing to do.
  void Sum(ParamBlock& params);
  // What the last step's sums sent: bytes of gradient values and of segment indices, and the
  // seconds spent in them (its BlockDone calls and its Sum).
  int64_t value_bytes() const { return value_bytes_; }
  int64_t index_bytes() const { return index_bytes_; }
  double seconds() const { return seconds_; }

 private:
  Comm& comm_;
  std::vector<float> buffer_;
  std::vector<std::vector<int>> by_layer_;  // dense tensors per block, from their names
  std::vector<char> started_;               // per tensor: summing since BlockDone
  int64_t value_bytes_ = 0, index_bytes_ = 0, step_bytes_ = 0;
  double seconds_ = 0, step_seconds_ = 0;
};

}  // namespace tinylora
