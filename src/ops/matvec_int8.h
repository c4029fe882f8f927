// The opt-in approximate product of q8_0 and q4_0 weights (bench_forward --int8-activations;
// no CLI flag yet: on the machines measured it is not faster than the exact kernel), llama.cpp's
// definition rather than ours: each row of x is rounded to blocks of 32 int8 codes with an F32
// scale (dx = amax / 127, codes round(x / dx)), and each output is
//   Σ over blocks b of (Σ_j qw_j · qx_j) · (dw_b · dx_b)
// with the integer sums exact, the blocks summed in F32. On a CPU with AVX512-VNNI the integer
// sums are `vpdpbusd`, 32 products per instruction (DECISIONS.md "int8 activations").
#pragma once

#include <cstdint>

namespace tinylora {

// Plain references: rows [r0, r1) of W (out, in) against T rows of x, y[t·out + r].
void MatVecQ8_0Int8Reference(const void* w, int64_t in, int64_t out, const float* x, int64_t T,
                             int64_t r0, int64_t r1, float* y);
void MatVecQ4_0Int8Reference(const void* w, int64_t in, int64_t out, const float* x, int64_t T,
                             int64_t r0, int64_t r1, float* y);
// The same, fast: VNNI where the CPU has it, else the references.
void MatVecQ8_0Int8Rows(const void* w, int64_t in, int64_t out, const float* x, int64_t T,
                        int64_t r0, int64_t r1, float* y);
void MatVecQ4_0Int8Rows(const void* w, int64_t in, int64_t out, const float* x, int64_t T,
                        int64_t r0, int64_t r1, float* y);
bool Int8ActivationsUseVnni();  // whether the fast ones run VNNI here

}  // namespace tinylora
