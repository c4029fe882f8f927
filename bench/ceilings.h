// This machine's own ceilings, measured in the same run as a benchmark (DESIGN.md §6):
// OpenBLAS sgemm GFLOP/s at given shapes and memory bandwidth with all threads reading.
#pragma once

#include <cstdint>
#include <vector>

#include "ops/gemm_bf16.h"
#include "ops/tensor.h"

namespace tinylora::bench {

struct GemmShape {
  int64_t m, n, k;  // (m, k) · (k, n), as y = x · Wᵀ with W (n, k)
};

// GFLOP/s of sgemm over the whole list of shapes (total flops / total time), best of `reps`.
double SgemmGflops(const std::vector<GemmShape>& shapes, int reps);

// GFLOP/s of a BF16 kernel (ops/gemm_bf16.h) over the same shapes, y = bf16(x) · Wᵀ with the
// weights prepared as --bf16 prepares them; 0 when the CPU lacks that kernel.
double Bf16GemmGflops(const std::vector<GemmShape>& shapes, int reps, Bf16Kernel kernel);

// GB/s of the streaming kernel of decode (ops/matmul.h MatVecRows, one row of x) over the first
// `rows` rows of w, each thread on its own copy of them, small enough to stay in its L2: the
// format's compute ceiling, which bounds decode where it is below the read bandwidth.
double StreamingKernelGBs(const Tensor& w, int64_t rows, int reps);

// GB/s of reading a buffer far larger than the caches, all threads, best of `reps`.
double ReadBandwidthGBs(int64_t bytes, int reps);
// GB/s of memcpy-style copy (bytes read + bytes written), all threads, best of `reps`.
double CopyBandwidthGBs(int64_t bytes, int reps);

}  // namespace tinylora::bench
