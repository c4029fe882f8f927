// LoraRowsForward, compiled for each SIMD target (the B·u loop is plain code the compiler
// vectorises for the target) and dispatched at run time.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "ops/lora_rows.cc"
#include "ops/lora_rows.h"

#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include <vector>

#include "ops/matmul.h"

HWY_BEFORE_NAMESPACE();
namespace tinylora {
namespace HWY_NAMESPACE {
void LoraRowImpl(const float* A, const float* B, int r, float scale, int64_t in, int64_t out,
                 const float* x, float* y) {
  constexpr int kStackRank = 256;
  float u_stack[kStackRank];
  std::vector<float> u_heap;
  float* u = u_stack;
  if (r > kStackRank) {
    u_heap.resize(static_cast<size_t>(r));
    u = u_heap.data();
  }
  // u (r) = A x by the streaming kernel's fixed-order dot.
  DotRows(A, in, r, x, in, 1.0f, u);
  // y_o += scale · Σ_k B[o, k] u_k, k in order. Rows of B are only r long, so eight outputs
  // at a time, for eight independent chains (the tail does the same operations per output).
  int64_t o = 0;
  for (; o + 8 <= out; o += 8) {
    const float* b = B + o * r;
    float acc[8] = {};
    for (int k = 0; k < r; ++k)
      for (int i = 0; i < 8; ++i) acc[i] += b[i * r + k] * u[k];
    for (int i = 0; i < 8; ++i) y[o + i] += scale * acc[i];
  }
  for (; o < out; ++o) {
    float acc = 0;
    for (int k = 0; k < r; ++k) acc += B[o * r + k] * u[k];
    y[o] += scale * acc;
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace tinylora
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace tinylora {

HWY_EXPORT(LoraRowImpl);

void LoraRowsForward(const LoraRow* rows, int64_t T, int64_t in, int64_t out, const float* x,
                     float* y) {
#pragma omp parallel for schedule(static) if (T >= 16)
  for (int64_t t = 0; t < T; ++t) {
    const LoraRow& row = rows[t];
    if (row.A == nullptr) continue;
    HWY_DYNAMIC_DISPATCH(LoraRowImpl)
    (row.A, row.B, row.r, row.scale, in, out, x + t * in, y + t * out);
  }
}

void LoraRowsForwardReference(const LoraRow* rows, int64_t T, int64_t in, int64_t out,
                              const float* x, float* y) {
  for (int64_t t = 0; t < T; ++t) {
    const LoraRow& row = rows[t];
    if (row.A == nullptr) continue;
    std::vector<double> u(static_cast<size_t>(row.r), 0.0);
    for (int k = 0; k < row.r; ++k)
      for (int64_t i = 0; i < in; ++i)
        u[static_cast<size_t>(k)] += static_cast<double>(row.A[k * in + i]) * x[t * in + i];
    for (int64_t o = 0; o < out; ++o) {
      double acc = 0;
      for (int k = 0; k < row.r; ++k) acc += row.B[o * row.r + k] * u[static_cast<size_t>(k)];
      y[t * out + o] += static_cast<float>(row.scale * acc);
    }
  }
}

}  // namespace tinylora
#endif  // HWY_ONCE
