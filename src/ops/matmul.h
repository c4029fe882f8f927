// y = x · Wᵀ, the one product every projection uses.
//   x: (T, in) f32, row-major      W: (out, in) in any format of ops/format.h      y: (T, out)
// Few rows (decode) go to a Highway kernel that streams W once, parallel over output rows;
// many rows (prefill) go to OpenBLAS sgemm (BF16 panels are widened to F32 first), or, for a
// BF16 W prepared for --bf16 (Tensor::bf16_compute), to the BF16 GEMM (x rounded to BF16).
#pragma once

#include <cstdint>

#include "ops/tensor.h"

namespace tinylora {

// Up to this many rows of x use the streaming kernel; more use sgemm.
constexpr int kMatVecMaxRows = 8;

void MatMul(const Tensor& w, const float* x, int64_t T, float* y);
// The same product with every output element summed in one fixed order whatever T and the
// thread count (the streaming kernel for every T), so a row's result does not depend on the
// other rows: inference (generate, serve) uses it; training and eval keep the faster
// shape-dependent MatMul (sgemm, AMX).
void MatMulBatchInvariant(const Tensor& w, const float* x, int64_t T, float* y);

// Backward of y = x · Wᵀ with respect to x: dx (T, in) = dy (T, out) · W, added to dx when
// `accumulate`, else overwriting it. BF16 GEMM (dy rounded to BF16) when W was prepared for
// --bf16 with its backward.
void MatMulBackwardX(const Tensor& w, const float* dy, int64_t T, float* dx, bool accumulate);
// With respect to an F32 W: dw (out, in) += dyᵀ (out, T) · x (T, in).
void MatMulBackwardW(const float* dy, const float* x, int64_t T, int64_t out, int64_t in,
                     float* dw);

// Plain references of the three: double accumulation, no blocking (tests, reference backend).
void MatMulReference(const Tensor& w, const float* x, int64_t T, float* y);
void MatMulBackwardXReference(const Tensor& w, const float* dy, int64_t T, float* dx,
                              bool accumulate);
void MatMulBackwardWReference(const float* dy, const float* x, int64_t T, int64_t out, int64_t in,
                              float* dw);

// The streaming kernel on rows [row_begin, row_end) of W, any T (exposed for tests/bench).
void MatVecRows(const Tensor& w, const float* x, int64_t T, int64_t row_begin, int64_t row_end,
                float* y);

// out (n, cols) = rows ids[0..n) of `table` as F32 (the embedding lookup); ids must be in range.
void GatherRows(const Tensor& table, const int32_t* ids, int64_t n, float* out);
// Its gradient: row ids[t] of table (·, C) += src row t, in order (repeated ids accumulate).
void ScatterAddRows(const float* src, const int32_t* ids, int64_t n, int64_t C, float* table);

// Fixed-order row kernels of batch-invariant attention (Highway, the streaming kernel's order):
// out[j] = alpha · (a_j · x) for rows a_j = a + j·lda of n floats;
void DotRows(const float* a, int64_t lda, int64_t rows, const float* x, int64_t n, float alpha,
             float* out);
// out (n) = Σ_j p_j · v_j for rows v_j = v + j·ldv, summed in increasing j.
void WeightedSumRows(const float* p, const float* v, int64_t ldv, int64_t rows, int64_t n,
                     float* out);

// BF16 / F16 -> F32 widening of n values (Highway).
void WidenBf16(const uint16_t* src, int64_t n, float* dst);
void WidenF16(const uint16_t* src, int64_t n, float* dst);

// The streaming kernel per format, as the format table holds it (see FormatTraits::matvec).
void MatVecF32Rows(const void* w, int64_t in, int64_t out, const float* x, int64_t T, int64_t r0,
                   int64_t r1, float* y);
void MatVecBf16Rows(const void* w, int64_t in, int64_t out, const float* x, int64_t T, int64_t r0,
                    int64_t r1, float* y);
void MatVecF16Rows(const void* w, int64_t in, int64_t out, const float* x, int64_t T, int64_t r0,
                   int64_t r1, float* y);
// … and of the block formats (ops/matvec_quant.cc), with their fast dequantisers.
void MatVecQ8_0Rows(const void* w, int64_t in, int64_t out, const float* x, int64_t T, int64_t r0,
                    int64_t r1, float* y);
void MatVecQ4_0Rows(const void* w, int64_t in, int64_t out, const float* x, int64_t T, int64_t r0,
                    int64_t r1, float* y);
void MatVecNF4Rows(const void* w, int64_t in, int64_t out, const float* x, int64_t T, int64_t r0,
                   int64_t r1, float* y);
void DequantizeQ8_0Fast(const void* src, int64_t n, float* dst);
void DequantizeQ4_0Fast(const void* src, int64_t n, float* dst);
void DequantizeNF4Fast(const void* src, int64_t n, float* dst);

}  // namespace tinylora
