// The one general F32 matrix product, and the only place that calls BLAS (OpenBLAS sgemm).
//   C (M, N) = alpha · op(A) · op(B) + beta · C, row-major; op(A) is (M, K), op(B) is (K, N);
//   op(X) = Xᵀ when its flag is set (A then stored (K, M) with row stride lda, B (N, K)).
// beta = 0 overwrites C (its old contents, even NaN, are ignored), as BLAS does.
#pragma once

#include <cstdint>

namespace tinylora {

void Gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
          int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

// Either of the two, as a backend's table holds it.
using GemmFn = void (*)(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                        const float* A, int64_t lda, const float* B, int64_t ldb, float beta,
                        float* C, int64_t ldc);
// Plain reference of the same: double sums, no blocking. For tests.
void GemmReference(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                   const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
                   int64_t ldc);

// Threads of the BLAS library's own parallel regions (calls made inside our OpenMP regions run
// single-threaded).
void SetGemmThreads(int n);

}  // namespace tinylora
