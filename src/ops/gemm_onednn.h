// Matrix products through oneDNN (Debian's libdnnl 2.6): the BF16 kernel of CPUs with
// AVX512_BF16 but no AMX (Zen 4/5, Cooper Lake), chosen by ops/gemm_bf16.
//   C (M, N) (+)= A (M, K) · op(W), row-major, f32 sums;
//   W row-major (N, K) with op(W) = Wᵀ when `w_transposed` (y = x · Wᵀ), else (K, N) (dx = dy · W).
// A and W are both `type`; W is used where it lies (no packed copy). The F32 variant exists
// so that this wrapper (layouts, accumulation, the primitive cache) is tested on every CPU,
// also those without a BF16 kernel in oneDNN.
#pragma once

#include <cstdint>

namespace tinylora {

enum class OnednnType { kF32, kBf16 };

// True when oneDNN has a BF16 matmul for this CPU that uses its BF16 dot product. oneDNN is
// capped at AVX512_BF16: AMX is ops/gemm_amx's, so an AMX machine tests this path too.
bool OnednnBf16Available();

void OnednnMatMul(OnednnType type, const void* a, const void* w, bool w_transposed, int64_t M,
                  int64_t N, int64_t K, float* c, bool accumulate);

}  // namespace tinylora
