// Highway kernels for the memory-bound side of MatMul and for batch-invariant products: W is
// streamed once per group of up to 4 rows of x, each output element summed in a fixed order.
// Compiled for each SIMD target and dispatched at run time.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "ops/matvec.cc"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include "ops/format.h"
#include "ops/matmul.h"
#include "util/half.h"

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

template <>
HWY_INLINE hn::Vec<DF> LoadWeights<hwy::float16_t>(DF df, const hwy::float16_t* w, int64_t i) {
  const hn::Rebind<hwy::float16_t, DF> d16;
  return hn::PromoteTo(df, hn::LoadU(d16, w + i));
}

inline float ScalarWeight(const float* w, int64_t i) { return w[i]; }
inline float ScalarWeight(const hwy::float16_t* w, int64_t i) {
  uint16_t bits;
  __builtin_memcpy(&bits, w + i, 2);
  return F16ToF32(bits);
}
inline float ScalarWeight(const uint16_t* w, int64_t i) {
  uint32_t bits = static_cast<uint32_t>(w[i]) << 16;
  float f;
  __builtin_memcpy(&f, &bits, 4);
  return f;
}

// Every output element y[t, o] = W_o · x_t is summed in one order, whichever tile computes it
// and whatever T is: two vector accumulators, the row's full vectors k = 0, 1, … going to the
// one of k's parity and the zero-padded tail as one more vector, added, then the lanes. Tiles
// differ only in how many rows of x and of W they take at once (independent chains), so a
// token's result does not depend on its batch: the batch invariance of inference.
template <typename WT>
HWY_INLINE hn::Vec<DF> LoadTail(DF df, const WT* p, int64_t n) {  // n < Lanes, zero-padded
  HWY_ALIGN WT buf[hn::MaxLanes(DF())] = {};
  for (int64_t i = 0; i < n; ++i) buf[i] = p[i];
  return LoadWeights(df, buf, 0);
}

// One vector of the dot products: acc[t][o] += W_o[i, i + N) · x_t[i, i + N) (kTail: the
// n - i < N last elements, zero-padded).
template <int RT, int RO, bool kTail, typename WT>
HWY_INLINE void TileStep(DF df, const WT* w, int64_t ldw, const float* x, int64_t ldx, int64_t i,
                         int64_t n, hn::Vec<DF> (&acc)[RT][RO]) {
  hn::Vec<DF> wv[RO];
#pragma GCC unroll 4
  for (int o = 0; o < RO; ++o)
    wv[o] = kTail ? LoadTail(df, w + o * ldw + i, n - i) : LoadWeights(df, w + o * ldw, i);
#pragma GCC unroll 4
  for (int t = 0; t < RT; ++t) {
    const auto xv = kTail ? LoadTail(df, x + t * ldx + i, n - i) : hn::LoadU(df, x + t * ldx + i);
#pragma GCC unroll 4
    for (int o = 0; o < RO; ++o) acc[t][o] = hn::MulAdd(wv[o], xv, acc[t][o]);
  }
}

// y[t·ldy + o] for RT rows of x (stride ldx) and RO rows of W (stride ldw), rows n long.
// Every element sums in one order: the row's vectors k = 0, 1, … go to two accumulators by the
// parity of k (the zero-padded tail is one more vector), which are added, then the lanes. Two
// chains of FMAs let a single row of W stream at twice the rate one chain allows, so decode
// reads one row at a time (one stream per thread: DRAM serves that best, 1.3× four rows at a
// time). `next` (or null): the RO rows of W the following tile reads, fetched into the cache at
// the same offsets (a row of a BF16 matrix 2048 wide is one 4 KiB page, and the hardware
// prefetcher stops at a page's end).
template <int RT, int RO, typename WT>
HWY_INLINE void Tile(const WT* w, int64_t ldw, const float* x, int64_t ldx, int64_t n, float* y,
                     int64_t ldy, const WT* next = nullptr) {
  const DF df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  // The constant loops are unrolled so that the accumulators live in registers.
  hn::Vec<DF> even[RT][RO], odd[RT][RO];
#pragma GCC unroll 16
  for (int k = 0; k < RT * RO; ++k) even[k / RO][k % RO] = odd[k / RO][k % RO] = hn::Zero(df);
  int64_t i = 0;
  for (; i + 2 * N <= n; i += 2 * N) {
    if (next != nullptr) {
#pragma GCC unroll 4
      for (int o = 0; o < RO; ++o) {  // 2N weights: one 64-byte line, two of F32
        __builtin_prefetch(next + o * ldw + i);
        if (sizeof(WT) == 4) __builtin_prefetch(next + o * ldw + i + N);
      }
    }
    TileStep<RT, RO, false>(df, w, ldw, x, ldx, i, n, even);
    TileStep<RT, RO, false>(df, w, ldw, x, ldx, i + N, n, odd);
  }
  bool in_odd = false;  // the accumulator the next vector goes to
  if (i + N <= n) {
    TileStep<RT, RO, false>(df, w, ldw, x, ldx, i, n, even);
    i += N;
    in_odd = true;
  }
  if (i < n) TileStep<RT, RO, true>(df, w, ldw, x, ldx, i, n, in_odd ? odd : even);
#pragma GCC unroll 16
  for (int k = 0; k < RT * RO; ++k)
    y[(k / RO) * ldy + k % RO] =
        hn::GetLane(hn::SumOfLanes(df, hn::Add(even[k / RO][k % RO], odd[k / RO][k % RO])));
}

// Rows [r0, r1) of W against all T rows of x: tiles of 4 rows of x × 2 of W (prefill, a batch
// of decodes; the first group of x prefetches W, the later ones find it in the cache), one row
// of x × one of W for the rows of x left over (decode).
template <typename WT>
void MatVecRowsT(const WT* w, int64_t in, int64_t out_dim, const float* x, int64_t T, int64_t r0,
                 int64_t r1, float* y) {
  int64_t t = 0;
  for (; t + 4 <= T; t += 4) {
    int64_t r = r0;
    for (; r + 2 <= r1; r += 2)
      Tile<4, 2>(w + r * in, in, x + t * in, in, in, y + t * out_dim + r, out_dim,
                 t == 0 && r + 4 <= out_dim ? w + (r + 2) * in : nullptr);
    for (; r < r1; ++r)
      Tile<4, 1>(w + r * in, in, x + t * in, in, in, y + t * out_dim + r, out_dim);
  }
  for (; t < T; ++t) {
    int64_t r = r0;
    for (; r < r1; ++r)
      Tile<1, 1>(w + r * in, in, x + t * in, in, in, y + t * out_dim + r, out_dim,
                 r + 1 < out_dim ? w + (r + 1) * in : nullptr);
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

void MatVecF16(const hwy::float16_t* w, int64_t in, int64_t out_dim, const float* x, int64_t T,
               int64_t r0, int64_t r1, float* y) {
  MatVecRowsT(w, in, out_dim, x, T, r0, r1, y);
}

// out[j] = alpha · (a_j · x) for rows a_j = a + j·lda, each summed as Tile sums an element.
void DotRowsImpl(const float* a, int64_t lda, int64_t rows, const float* x, int64_t n, float alpha,
                 float* out) {
  int64_t j = 0;
  for (; j + 4 <= rows; j += 4) Tile<1, 4>(a + j * lda, lda, x, n, n, out + j, 1);
  for (; j < rows; ++j) Tile<1, 1>(a + j * lda, lda, x, n, n, out + j, 1);
  for (j = 0; j < rows; ++j) out[j] *= alpha;
}

// out (n) = Σ_j p_j · v_j over rows v_j = v + j·ldv, j in increasing order, per element.
void WeightedSumRowsImpl(const float* p, const float* v, int64_t ldv, int64_t rows, int64_t n,
                         float* out) {
  const DF df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  int64_t i = 0;
  for (; i + N <= n; i += N) {
    auto acc = hn::Zero(df);
    for (int64_t j = 0; j < rows; ++j)
      acc = hn::MulAdd(hn::Set(df, p[j]), hn::LoadU(df, v + j * ldv + i), acc);
    hn::StoreU(acc, df, out + i);
  }
  if (i < n) {
    auto acc = hn::Zero(df);
    for (int64_t j = 0; j < rows; ++j)
      acc = hn::MulAdd(hn::Set(df, p[j]), LoadTail(df, v + j * ldv + i, n - i), acc);
    HWY_ALIGN float buf[hn::MaxLanes(DF())];
    hn::Store(acc, df, buf);
    for (int64_t k = 0; i + k < n; ++k) out[i + k] = buf[k];
  }
}

template <typename WT>
void WidenT(const WT* src, int64_t n, float* dst) {
  const DF df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  int64_t i = 0;
  for (; i + N <= n; i += N) hn::StoreU(LoadWeights(df, src, i), df, dst + i);
  for (; i < n; ++i) dst[i] = ScalarWeight(src, i);
}

void WidenBf16Impl(const uint16_t* src, int64_t n, float* dst) { WidenT(src, n, dst); }
void WidenF16Impl(const hwy::float16_t* src, int64_t n, float* dst) { WidenT(src, n, dst); }

}  // namespace HWY_NAMESPACE
}  // namespace tinylora
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace tinylora {

HWY_EXPORT(MatVecF32);
HWY_EXPORT(MatVecBf16);
HWY_EXPORT(MatVecF16);
HWY_EXPORT(WidenBf16Impl);
HWY_EXPORT(WidenF16Impl);
HWY_EXPORT(DotRowsImpl);
HWY_EXPORT(WeightedSumRowsImpl);

void MatVecRows(const Tensor& w, const float* x, int64_t T, int64_t row_begin, int64_t row_end,
                float* y) {
  Traits(w.format).matvec(w.data, w.cols, w.rows, x, T, row_begin, row_end, y);
}

void MatVecF32Rows(const void* w, int64_t in, int64_t out, const float* x, int64_t T, int64_t r0,
                   int64_t r1, float* y) {
  HWY_DYNAMIC_DISPATCH(MatVecF32)(static_cast<const float*>(w), in, out, x, T, r0, r1, y);
}
void MatVecBf16Rows(const void* w, int64_t in, int64_t out, const float* x, int64_t T, int64_t r0,
                    int64_t r1, float* y) {
  HWY_DYNAMIC_DISPATCH(MatVecBf16)(static_cast<const uint16_t*>(w), in, out, x, T, r0, r1, y);
}
void MatVecF16Rows(const void* w, int64_t in, int64_t out, const float* x, int64_t T, int64_t r0,
                   int64_t r1, float* y) {
  HWY_DYNAMIC_DISPATCH(MatVecF16)(static_cast<const hwy::float16_t*>(w), in, out, x, T, r0, r1, y);
}

void WidenF16(const uint16_t* src, int64_t n, float* dst) {
  HWY_DYNAMIC_DISPATCH(WidenF16Impl)(reinterpret_cast<const hwy::float16_t*>(src), n, dst);
}

void DotRows(const float* a, int64_t lda, int64_t rows, const float* x, int64_t n, float alpha,
             float* out) {
  HWY_DYNAMIC_DISPATCH(DotRowsImpl)(a, lda, rows, x, n, alpha, out);
}

void WeightedSumRows(const float* p, const float* v, int64_t ldv, int64_t rows, int64_t n,
                     float* out) {
  HWY_DYNAMIC_DISPATCH(WeightedSumRowsImpl)(p, v, ldv, rows, n, out);
}

void WidenBf16(const uint16_t* src, int64_t n, float* dst) {
  HWY_DYNAMIC_DISPATCH(WidenBf16Impl)(src, n, dst);
}

}  // namespace tinylora
#endif  // HWY_ONCE
