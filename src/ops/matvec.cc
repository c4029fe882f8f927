// Highway kernels for the memory-bound side of MatMul: W is streamed once from memory and
// every loaded vector of W meets up to 4 rows of x. Compiled for each SIMD target and
// dispatched at run time.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "ops/matvec.cc"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include "ops/matmul.h"

HWY_BEFORE_NAMESPACE();
namespace tinylora {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using DF = hn::ScalableTag<float>;

// Loads N weights starting at w[i] as f32.
template <typename WT>
HWY_INLINE hn::Vec<DF> LoadWeights(DF df, const WT* w, int64_t i);

template <>
HWY_INLINE hn::Vec<DF> LoadWeights<float>(DF df, const float* w, int64_t i) {
  return hn::LoadU(df, w + i);
}

template <>
HWY_INLINE hn::Vec<DF> LoadWeights<uint16_t>(DF df, const uint16_t* w, int64_t i) {
  const hn::RebindToUnsigned<DF> du32;
  const hn::Rebind<uint16_t, DF> du16;
  const auto wide = hn::PromoteTo(du32, hn::LoadU(du16, w + i));
  return hn::BitCast(df, hn::ShiftLeft<16>(wide));
}

inline float ScalarWeight(const float* w, int64_t i) { return w[i]; }
inline float ScalarWeight(const uint16_t* w, int64_t i) {
  uint32_t bits = static_cast<uint32_t>(w[i]) << 16;
  float f;
  __builtin_memcpy(&f, &bits, 4);
  return f;
}

// One row of W against one row of x, four independent accumulators.
template <typename WT>
HWY_INLINE float DotOne(const WT* w, const float* x, int64_t n) {
  const DF df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  auto a0 = hn::Zero(df), a1 = hn::Zero(df), a2 = hn::Zero(df), a3 = hn::Zero(df);
  int64_t i = 0;
  for (; i + 4 * N <= n; i += 4 * N) {
    a0 = hn::MulAdd(LoadWeights(df, w, i), hn::LoadU(df, x + i), a0);
    a1 = hn::MulAdd(LoadWeights(df, w, i + N), hn::LoadU(df, x + i + N), a1);
    a2 = hn::MulAdd(LoadWeights(df, w, i + 2 * N), hn::LoadU(df, x + i + 2 * N), a2);
    a3 = hn::MulAdd(LoadWeights(df, w, i + 3 * N), hn::LoadU(df, x + i + 3 * N), a3);
  }
  for (; i + N <= n; i += N) a0 = hn::MulAdd(LoadWeights(df, w, i), hn::LoadU(df, x + i), a0);
  float sum = hn::GetLane(hn::SumOfLanes(df, hn::Add(hn::Add(a0, a1), hn::Add(a2, a3))));
  for (; i < n; ++i) sum += ScalarWeight(w, i) * x[i];
  return sum;
}

// One row of W against four rows of x (stride ldx): out[k] = w · x_k.
template <typename WT>
HWY_INLINE void DotFour(const WT* w, const float* x, int64_t ldx, int64_t n, float* out) {
  const DF df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  auto a0 = hn::Zero(df), a1 = hn::Zero(df), a2 = hn::Zero(df), a3 = hn::Zero(df);
  int64_t i = 0;
  for (; i + N <= n; i += N) {
    const auto wv = LoadWeights(df, w, i);
    a0 = hn::MulAdd(wv, hn::LoadU(df, x + i), a0);
    a1 = hn::MulAdd(wv, hn::LoadU(df, x + ldx + i), a1);
    a2 = hn::MulAdd(wv, hn::LoadU(df, x + 2 * ldx + i), a2);
    a3 = hn::MulAdd(wv, hn::LoadU(df, x + 3 * ldx + i), a3);
  }
  out[0] = hn::GetLane(hn::SumOfLanes(df, a0));
  out[1] = hn::GetLane(hn::SumOfLanes(df, a1));
  out[2] = hn::GetLane(hn::SumOfLanes(df, a2));
  out[3] = hn::GetLane(hn::SumOfLanes(df, a3));
  for (; i < n; ++i) {
    const float wi = ScalarWeight(w, i);
    for (int k = 0; k < 4; ++k) out[k] += wi * x[k * ldx + i];
  }
}

template <typename WT>
void MatVecRowsT(const WT* w, int64_t in, int64_t out_dim, const float* x, int64_t T, int64_t r0,
                 int64_t r1, float* y) {
  for (int64_t r = r0; r < r1; ++r) {
    const WT* wr = w + r * in;
    int64_t t = 0;
    for (; t + 4 <= T; t += 4) {
      float o[4];
      DotFour(wr, x + t * in, in, in, o);
      for (int k = 0; k < 4; ++k) y[(t + k) * out_dim + r] = o[k];
    }
    for (; t < T; ++t) y[t * out_dim + r] = DotOne(wr, x + t * in, in);
  }
}

void MatVecF32(const float* w, int64_t in, int64_t out_dim, const float* x, int64_t T, int64_t r0,
               int64_t r1, float* y) {
  MatVecRowsT(w, in, out_dim, x, T, r0, r1, y);
}

void MatVecBf16(const uint16_t* w, int64_t in, int64_t out_dim, const float* x, int64_t T,
                int64_t r0, int64_t r1, float* y) {
  MatVecRowsT(w, in, out_dim, x, T, r0, r1, y);
}

void WidenBf16Impl(const uint16_t* src, int64_t n, float* dst) {
  const DF df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  int64_t i = 0;
  for (; i + N <= n; i += N) hn::StoreU(LoadWeights(df, src, i), df, dst + i);
  for (; i < n; ++i) dst[i] = ScalarWeight(src, i);
}

}  // namespace HWY_NAMESPACE
}  // namespace tinylora
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace tinylora {

HWY_EXPORT(MatVecF32);
HWY_EXPORT(MatVecBf16);
HWY_EXPORT(WidenBf16Impl);

void MatVecRows(const Tensor& w, const float* x, int64_t T, int64_t row_begin, int64_t row_end,
                float* y) {
  if (w.dtype == DType::kBF16) {
    HWY_DYNAMIC_DISPATCH(MatVecBf16)(w.bf16(), w.cols, w.rows, x, T, row_begin, row_end, y);
  } else {
    HWY_DYNAMIC_DISPATCH(MatVecF32)(w.f32(), w.cols, w.rows, x, T, row_begin, row_end, y);
  }
}

void WidenBf16(const uint16_t* src, int64_t n, float* dst) {
  HWY_DYNAMIC_DISPATCH(WidenBf16Impl)(src, n, dst);
}

}  // namespace tinylora
#endif  // HWY_ONCE
