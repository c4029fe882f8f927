// Adapters applied over a per-row index (DESIGN.md §8): row t of a batch names its own LoRA
// leaf — whichever adapter of a forest and whichever leaf of its tree — or none, so one call
// serves a batch that mixes adapters. Inference only (no saved activations, no gradients).
//   y_t (out) += scale_t · B_t (A_t x_t),   A_t (r_t, in), B_t (out, r_t)
// Each row is computed on its own in a fixed order (u = A·x by the same dot product whatever
// the batch, then y += scale · B·u), so a row's result does not depend on the other rows, on
// their number, or on the thread count: the batch invariance generate and serve rely on.
// Legend: T = rows, in / out = the projection's sizes, r = a leaf's rank.
#pragma once

#include <cstdint>

namespace tinylora {

struct LoraRow {
  const float* A = nullptr;  // (r, in); null: the row has no adapter here
  const float* B = nullptr;  // (out, r), row-major
  int r = 0;
  float scale = 0;  // alpha / r times the routing gate
};

// x (T, in), y (T, out) row-major; rows whose A is null are left as they are.
void LoraRowsForward(const LoraRow* rows, int64_t T, int64_t in, int64_t out, const float* x,
                     float* y);
// Plain reference: double sums. For tests.
void LoraRowsForwardReference(const LoraRow* rows, int64_t T, int64_t in, int64_t out,
                              const float* x, float* y);

}  // namespace tinylora
