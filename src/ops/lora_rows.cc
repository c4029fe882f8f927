// Highway kernel of LoraRowsForward, compiled for each SIMD target and dispatched at run time.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "ops/lora_rows.cc"
#include "ops/lora_rows.h"

#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include <vector>

HWY_BEFORE_NAMESPACE();
namespace tinylora {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// a · b over n floats: four vector accumulators over full vectors of `d`, summed as
// (a0 + a1) + (a2 + a3), then the lanes, then the scalar tail in order.
template <class D>
HWY_INLINE float DotN(D d, const float* a, const float* b, int64_t n) {
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  auto a0 = hn::Zero(d), a1 = hn::Zero(d), a2 = hn::Zero(d), a3 = hn::Zero(d);
  int64_t i = 0;
  for (; i + 4 * N <= n; i += 4 * N) {
    a0 = hn::MulAdd(hn::LoadU(d, a + i), hn::LoadU(d, b + i), a0);
    a1 = hn::MulAdd(hn::LoadU(d, a + i + N), hn::LoadU(d, b + i + N), a1);
    a2 = hn::MulAdd(hn::LoadU(d, a + i + 2 * N), hn::LoadU(d, b + i + 2 * N), a2);
    a3 = hn::MulAdd(hn::LoadU(d, a + i + 3 * N), hn::LoadU(d, b + i + 3 * N), a3);
  }
  for (; i + N <= n; i += N) a0 = hn::MulAdd(hn::LoadU(d, a + i), hn::LoadU(d, b + i), a0);
  float sum = hn::GetLane(hn::SumOfLanes(d, hn::Add(hn::Add(a0, a1), hn::Add(a2, a3))));
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

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
  // u (r) = A x: rows of A are long, so full vectors.
  const hn::ScalableTag<float> df;
  for (int k = 0; k < r; ++k) u[k] = DotN(df, A + static_cast<int64_t>(k) * in, x, in);
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
