// Highway kernels of the block formats (ops/quantize.h): the streaming product of decode and
// batch-invariant inference reading the blocks directly (each weight decoded to exactly its
// dequantised F32 value, then one fused multiply-add), and the fast dequantiser that the GEMM
// path widens panels with. Each output element is summed as ops/matvec.cc sums one: two vector
// accumulators over the row's even and odd vectors in increasing position, added, then its
// lanes, so the result does not depend on the batch.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "ops/matvec_quant.cc"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include "ops/matmul.h"
#include "ops/quantize.h"
#include "util/half.h"

HWY_BEFORE_NAMESPACE();
namespace tinylora {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using DF = hn::ScalableTag<float>;
using DI = hn::RebindToSigned<DF>;
using VF = hn::Vec<DF>;

// The 4-bit codes of weights [k, k + N) of a block whose byte j holds weight j in its low nibble
// and weight j + H in its high nibble (q4_0: H = 16; nf4: H = 32); k + N ≤ H or k ≥ H. With
// kLowBits the low nibble keeps its byte's high bits: a 16-lane permute reads only the low four.
template <int H, bool kLowBits = false>
HWY_INLINE hn::Vec<DI> Nibbles(const uint8_t* q, int k) {
  const DI di;
  const hn::Rebind<uint8_t, DF> d8;
  if (k >= H) return hn::ShiftRight<4>(hn::PromoteTo(di, hn::LoadU(d8, q + k - H)));
  const auto bytes = hn::PromoteTo(di, hn::LoadU(d8, q + k));
  return kLowBits ? bytes : hn::And(bytes, hn::Set(di, 15));
}

// table[code & 15] per lane, for the 16 entries of table (here: the block's dequantised levels).
HWY_INLINE VF Lookup16(const float* table, hn::Vec<DI> code) {
  const DF df;
#if HWY_TARGET == HWY_AVX2
  const DI di;
  const auto low = hn::IndicesFromVec(df, hn::And(code, hn::Set(di, 7)));
  const VF lo = hn::TableLookupLanes(hn::LoadU(df, table), low);
  const VF hi = hn::TableLookupLanes(hn::LoadU(df, table + 8), low);
  return hn::IfThenElse(hn::RebindMask(df, hn::Gt(code, hn::Set(di, 7))), hi, lo);
#else
  return hn::GatherIndex(df, table, hn::And(code, hn::Set(DI(), 15)));
#endif
}

// A block's scale as F32 (F16 through the F16C instruction where the target has it).
HWY_INLINE float HalfToF32(uint16_t h) {
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX2
  return _cvtsh_ss(h);
#else
  return F16ToF32(h);
#endif
}
HWY_INLINE float BlockScale(const BlockQ8_0& b) { return HalfToF32(b.d); }
HWY_INLINE float BlockScale(const BlockQ4_0& b) { return HalfToF32(b.d); }
HWY_INLINE float BlockScale(const BlockNF4& b) { return b.absmax; }

// Per format: weights per block; Prepare(block), what Load needs of a block; and Load(block, k,
// prepared), weights [k, k + N) of the block as their dequantised values.
struct Q8_0 {
  using Block = BlockQ8_0;
  static constexpr int kWeights = 32;
  static HWY_INLINE VF Prepare(const Block& b) { return hn::Set(DF(), BlockScale(b)); }
  static HWY_INLINE VF Load(const Block& b, int k, VF scale) {
    const DF df;
    const hn::Rebind<int8_t, DF> d8;
    return hn::Mul(hn::ConvertTo(df, hn::PromoteTo(DI(), hn::LoadU(d8, b.q + k))), scale);
  }
};

// The 4-bit formats, code c of a block meaning kLevels[c] · scale. With 16 lanes the prepared
// block is its 16 dequantised values (one multiply per block), each weight one permute;
// otherwise the scale, each weight a lookup and a multiply. Both give kLevels[c] · scale.
template <class B, int kW, int H, const float* kLevels>
struct FourBit {
  using Block = B;
  static constexpr int kWeights = kW;
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX3
  static HWY_INLINE VF Prepare(const Block& b) {
    return hn::Mul(hn::LoadU(DF(), kLevels), hn::Set(DF(), BlockScale(b)));
  }
  static HWY_INLINE VF Load(const Block& b, int k, VF table) {
    return VF{_mm512_permutexvar_ps(Nibbles<H, true>(b.q, k).raw, table.raw)};
  }
#else
  static HWY_INLINE VF Prepare(const Block& b) { return hn::Set(DF(), BlockScale(b)); }
  static HWY_INLINE VF Load(const Block& b, int k, VF scale) {
    return hn::Mul(Lookup16(kLevels, Nibbles<H>(b.q, k)), scale);
  }
#endif
};
constexpr float kQ4_0Levels[16] = {-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7};
using Q4_0 = FourBit<BlockQ4_0, 32, 16, kQ4_0Levels>;
using NF4 = FourBit<BlockNF4, 64, 32, kNF4Levels>;

// acc[t][o] += weights [k, k + N) of block b of W_o · x_t at the same positions.
template <int RT, int RO, class F>
HWY_INLINE void BlockStep(const typename F::Block* w, int64_t ldw, const float* xb, int64_t ldx,
                          int64_t b, int k, const VF (&prep)[RO], VF (&acc)[RT][RO]) {
  const DF df;
  VF wv[RO];
#pragma GCC unroll 4
  for (int o = 0; o < RO; ++o) wv[o] = F::Load(w[o * ldw + b], k, prep[o]);
#pragma GCC unroll 4
  for (int t = 0; t < RT; ++t) {
    const VF xv = hn::LoadU(df, xb + t * ldx + k);
#pragma GCC unroll 4
    for (int o = 0; o < RO; ++o) acc[t][o] = hn::MulAdd(wv[o], xv, acc[t][o]);
  }
}

// y[t·ldy + o] for RT rows of x (stride ldx floats) and RO rows of W (stride ldw blocks), rows
// of nb blocks; `next` (or null) the RO rows the following tile reads, prefetched block by
// block. A block holds an even number of vectors, so its vectors alternate between the two
// accumulators as the row's vectors do in ops/matvec.cc.
template <int RT, int RO, class F>
HWY_INLINE void Tile(const typename F::Block* w, int64_t ldw, const float* x, int64_t ldx,
                     int64_t nb, float* y, int64_t ldy, const typename F::Block* next = nullptr) {
  const DF df;
  const int N = static_cast<int>(hn::Lanes(df));
  HWY_DASSERT(F::kWeights % (2 * N) == 0);
  VF even[RT][RO], odd[RT][RO];
#pragma GCC unroll 16
  for (int k = 0; k < RT * RO; ++k) even[k / RO][k % RO] = odd[k / RO][k % RO] = hn::Zero(df);
  for (int64_t b = 0; b < nb; ++b) {
    if (next != nullptr) {
#pragma GCC unroll 4
      for (int o = 0; o < RO; ++o) __builtin_prefetch(next + o * ldw + b);
    }
    VF prep[RO];
#pragma GCC unroll 4
    for (int o = 0; o < RO; ++o) prep[o] = F::Prepare(w[o * ldw + b]);
    const float* xb = x + b * F::kWeights;
#pragma GCC unroll 4
    for (int k = 0; k < F::kWeights; k += 2 * N) {
      BlockStep<RT, RO, F>(w, ldw, xb, ldx, b, k, prep, even);
      BlockStep<RT, RO, F>(w, ldw, xb, ldx, b, k + N, prep, odd);
    }
  }
#pragma GCC unroll 16
  for (int k = 0; k < RT * RO; ++k)
    y[(k / RO) * ldy + k % RO] =
        hn::GetLane(hn::SumOfLanes(df, hn::Add(even[k / RO][k % RO], odd[k / RO][k % RO])));
}

// Rows [r0, r1) of W against all T rows of x, tiled and prefetched as ops/matvec.cc does.
template <class F>
void MatVecRowsT(const void* wv, int64_t in, int64_t out, const float* x, int64_t T, int64_t r0,
                 int64_t r1, float* y) {
  const auto* w = static_cast<const typename F::Block*>(wv);
  const int64_t nb = in / F::kWeights;
  int64_t t = 0;
  for (; t + 4 <= T; t += 4) {
    int64_t r = r0;
    for (; r + 2 <= r1; r += 2)
      Tile<4, 2, F>(w + r * nb, nb, x + t * in, in, nb, y + t * out + r, out,
                    t == 0 && r + 4 <= out ? w + (r + 2) * nb : nullptr);
    for (; r < r1; ++r) Tile<4, 1, F>(w + r * nb, nb, x + t * in, in, nb, y + t * out + r, out);
  }
  for (; t < T; ++t) {
    for (int64_t r = r0; r < r1; ++r)
      Tile<1, 1, F>(w + r * nb, nb, x + t * in, in, nb, y + t * out + r, out,
                    r + 1 < out ? w + (r + 1) * nb : nullptr);
  }
}

template <class F>
void DequantizeT(const void* src, int64_t n, float* dst) {
  const DF df;
  const int N = static_cast<int>(hn::Lanes(df));
  const auto* blocks = static_cast<const typename F::Block*>(src);
  for (int64_t b = 0; b < n / F::kWeights; ++b) {
    const VF prep = F::Prepare(blocks[b]);
    for (int k = 0; k < F::kWeights; k += N)
      hn::StoreU(F::Load(blocks[b], k, prep), df, dst + b * F::kWeights + k);
  }
}

void MatVecQ8_0(const void* w, int64_t in, int64_t out, const float* x, int64_t T, int64_t r0,
                int64_t r1, float* y) {
  MatVecRowsT<Q8_0>(w, in, out, x, T, r0, r1, y);
}
void MatVecQ4_0(const void* w, int64_t in, int64_t out, const float* x, int64_t T, int64_t r0,
                int64_t r1, float* y) {
  MatVecRowsT<Q4_0>(w, in, out, x, T, r0, r1, y);
}
void MatVecNF4(const void* w, int64_t in, int64_t out, const float* x, int64_t T, int64_t r0,
               int64_t r1, float* y) {
  MatVecRowsT<NF4>(w, in, out, x, T, r0, r1, y);
}
void DequantizeQ8_0(const void* src, int64_t n, float* dst) { DequantizeT<Q8_0>(src, n, dst); }
void DequantizeQ4_0(const void* src, int64_t n, float* dst) { DequantizeT<Q4_0>(src, n, dst); }
void DequantizeNF4(const void* src, int64_t n, float* dst) { DequantizeT<NF4>(src, n, dst); }

}  // namespace HWY_NAMESPACE
}  // namespace tinylora
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace tinylora {

HWY_EXPORT(MatVecQ8_0);
HWY_EXPORT(MatVecQ4_0);
HWY_EXPORT(MatVecNF4);
HWY_EXPORT(DequantizeQ8_0);
HWY_EXPORT(DequantizeQ4_0);
HWY_EXPORT(DequantizeNF4);

void MatVecQ8_0Rows(const void* w, int64_t in, int64_t out, const float* x, int64_t T, int64_t r0,
                    int64_t r1, float* y) {
  HWY_DYNAMIC_DISPATCH(MatVecQ8_0)(w, in, out, x, T, r0, r1, y);
}
void MatVecQ4_0Rows(const void* w, int64_t in, int64_t out, const float* x, int64_t T, int64_t r0,
                    int64_t r1, float* y) {
  HWY_DYNAMIC_DISPATCH(MatVecQ4_0)(w, in, out, x, T, r0, r1, y);
}
void MatVecNF4Rows(const void* w, int64_t in, int64_t out, const float* x, int64_t T, int64_t r0,
                   int64_t r1, float* y) {
  HWY_DYNAMIC_DISPATCH(MatVecNF4)(w, in, out, x, T, r0, r1, y);
}
void DequantizeQ8_0Fast(const void* src, int64_t n, float* dst) {
  HWY_DYNAMIC_DISPATCH(DequantizeQ8_0)(src, n, dst);
}
void DequantizeQ4_0Fast(const void* src, int64_t n, float* dst) {
  HWY_DYNAMIC_DISPATCH(DequantizeQ4_0)(src, n, dst);
}
void DequantizeNF4Fast(const void* src, int64_t n, float* dst) {
  HWY_DYNAMIC_DISPATCH(DequantizeNF4)(src, n, dst);
}

}  // namespace tinylora
#endif  // HWY_ONCE
