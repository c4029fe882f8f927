// The BF16 products of `--bf16`, one numerical definition for every kernel: for a BF16 weight
// W (out, in),
//   y (T, out) = bf16(x) · Wᵀ      dx (T, in) (+)= bf16(dy) · W
// where bf16() rounds to nearest even (F32ToBf16) and every product is summed in f32 (in an
// order each kernel chooses). Three kernels, the best the CPU has chosen once per process:
//   amx         Intel AMX tiles, our own kernel (ops/gemm_amx), W packed twice in tile order;
//   avx512bf16  oneDNN's matmul with vdpbf16ps (ops/gemm_onednn; Zen 4/5, Cooper Lake),
//               W read where it lies;
//   fallback    every other CPU: W widened once to an F32 copy, sgemm on the rounded input —
//               the same numbers at the F32 path's speed (no BF16 dot product to be faster).
// TINYLORA_BF16_KERNEL=amx|avx512bf16|fallback forces one (asking for one the CPU lacks is an
// Error).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "ops/gemm_amx.h"
#include "ops/tensor.h"
#include "util/large_alloc.h"

namespace tinylora {

enum class Bf16Kernel : uint8_t { kAmx, kAvx512Bf16, kFallback };
constexpr Bf16Kernel kBf16Kernels[] = {Bf16Kernel::kAmx, Bf16Kernel::kAvx512Bf16,
                                       Bf16Kernel::kFallback};

const char* Bf16KernelName(Bf16Kernel k);  // "amx", "avx512bf16", "fallback"
// One line for the log and `help`: the kernel, what it computes with, what it costs.
const char* Bf16KernelSummary(Bf16Kernel k);
bool Bf16KernelAvailable(Bf16Kernel k);
// The best kernel this CPU has (amx, then avx512bf16, then fallback).
Bf16Kernel BestBf16Kernel();
// The kernel this process uses: TINYLORA_BF16_KERNEL when set, else BestBf16Kernel(). An
// unknown name or a kernel the CPU lacks: Error (exit 2).
Bf16Kernel Bf16KernelInUse();

// A BF16 weight prepared for one kernel, with whatever that kernel keeps beside the original.
class Bf16Weight {
 public:
  // `backward`: also prepare dx = dy · W (training).
  Bf16Weight(Bf16Kernel kernel, const Tensor& w, bool backward);
  Bf16Weight(Bf16Weight&&) = default;
  ~Bf16Weight();

  // Adds the preparation of dx when the constructor skipped it; returns the bytes it added.
  int64_t AddBackward();
  bool has_backward() const { return backward_; }
  Bf16Kernel kernel() const { return kernel_; }
  // Bytes held beside the original.
  int64_t bytes() const;
  // Whether the products read the original weight (else its pages may be released).
  bool reads_original() const { return kernel_ == Bf16Kernel::kAvx512Bf16; }

  void Forward(const float* x, int64_t T, float* y) const;
  // Needs has_backward().
  void BackwardX(const float* dy, int64_t T, float* dx, bool accumulate) const;

 private:
  Bf16Kernel kernel_;
  Tensor w_;  // the original (format, shape, data)
  bool backward_ = false;
  PackedBf16 forward_packed_, backward_packed_;  // amx
  LargeArray<float> widened_;                    // fallback: W as F32 (out, in)
};

// Plain references of the two products: x (dy) rounded to BF16, W widened, double sums.
void Bf16MatMulReference(const Tensor& w, const float* x, int64_t T, float* y);
void Bf16MatMulBackwardXReference(const Tensor& w, const float* dy, int64_t T, float* dx,
                                  bool accumulate);

}  // namespace tinylora
