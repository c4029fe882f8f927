#include "ops/gemm_bf16.h"

#include <cstdlib>
#include <string>
#include <vector>

#include "ops/gemm.h"
#include "ops/gemm_onednn.h"
#include "ops/matmul.h"
#include "util/error.h"
#include "util/half.h"
#include "util/large_alloc.h"

namespace tinylora {

namespace {

// dst (n) = bf16(src) as f32 values (the fallback; oneDNN takes the BF16 bits of the format
// table's encoder).
void RoundToBf16(const float* src, int64_t n, float* dst) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) dst[i] = Bf16ToF32(F32ToBf16(src[i]));
}

// Per-thread scratch for the rounded input (every projection of a step has one).
template <typename T>
T* Scratch(int64_t n) {
  thread_local std::vector<T> buf;
  buf.resize(static_cast<size_t>(n));
  return buf.data();
}

}  // namespace

const char* Bf16KernelName(Bf16Kernel k) {
  switch (k) {
    case Bf16Kernel::kAmx:
      return "amx";
    case Bf16Kernel::kAvx512Bf16:
      return "avx512bf16";
    case Bf16Kernel::kFallback:
      return "fallback";
  }
  return "?";
}

const char* Bf16KernelSummary(Bf16Kernel k) {
  switch (k) {
    case Bf16Kernel::kAmx:
      return "amx (AMX tiles, tinylora's kernel; the base packed twice in tile order): several "
             "times the F32 path";
    case Bf16Kernel::kAvx512Bf16:
      return "avx512bf16 (oneDNN's matmul on vdpbf16ps; the base read where it lies): about "
             "twice the F32 path on AMD Zen 4; slower on Intel, where AMX is chosen instead";
    case Bf16Kernel::kFallback:
      return "fallback (this CPU has no BF16 dot product: sgemm on an F32 copy of the base and "
             "the rounded input): the same numbers at the F32 path's speed, not faster";
  }
  return "?";
}

bool Bf16KernelAvailable(Bf16Kernel k) {
  switch (k) {
    case Bf16Kernel::kAmx:
      return AmxBf16Available();
    case Bf16Kernel::kAvx512Bf16:
      return OnednnBf16Available();
    case Bf16Kernel::kFallback:
      return true;
  }
  return false;
}

Bf16Kernel BestBf16Kernel() {
  for (Bf16Kernel k : kBf16Kernels)
    if (Bf16KernelAvailable(k)) return k;
  return Bf16Kernel::kFallback;
}

Bf16Kernel Bf16KernelInUse() {
  static const Bf16Kernel chosen = [] {
    const char* env = std::getenv("TINYLORA_BF16_KERNEL");
    if (env == nullptr || *env == '\0') return BestBf16Kernel();
    std::string here;
    for (Bf16Kernel k : kBf16Kernels) {
      if (Bf16KernelAvailable(k)) here += std::string(here.empty() ? "" : ", ") + Bf16KernelName(k);
    }
    for (Bf16Kernel k : kBf16Kernels) {
      if (std::string(env) != Bf16KernelName(k)) continue;
      if (!Bf16KernelAvailable(k)) {
        Fail(std::string("TINYLORA_BF16_KERNEL=") + env + ": this CPU (or kernel) lacks it (" +
             "this one has: " + here + ")");
      }
      return k;
    }
    Fail(std::string("TINYLORA_BF16_KERNEL=") + env +
         ": unknown kernel (amx, avx512bf16 or fallback)");
  }();
  return chosen;
}

Bf16Weight::Bf16Weight(Bf16Kernel kernel, const Tensor& w, bool backward) : kernel_(kernel), w_(w) {
  if (w.format != Format::kBF16) FailRuntime("BF16 products of a non-BF16 weight");
  if (!Bf16KernelAvailable(kernel)) {
    FailRuntime(std::string("BF16 kernel ") + Bf16KernelName(kernel) + " is not on this CPU");
  }
  w_.bf16_compute = nullptr;
  if (kernel == Bf16Kernel::kAmx) forward_packed_ = PackedBf16::Transposed(w);
  if (kernel == Bf16Kernel::kFallback) {
    widened_ = AllocateLargeArray<float>(w.numel());
    float* dst = widened_.get();
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < w.rows; ++r) WidenBf16(w.bf16() + r * w.cols, w.cols, dst + r * w.cols);
  }
  if (backward) AddBackward();
}

Bf16Weight::~Bf16Weight() = default;

int64_t Bf16Weight::AddBackward() {
  if (backward_) return 0;
  backward_ = true;
  if (kernel_ != Bf16Kernel::kAmx) return 0;  // the others' one preparation serves both
  backward_packed_ = PackedBf16::AsIs(w_);
  return backward_packed_.bytes();
}

int64_t Bf16Weight::bytes() const {
  switch (kernel_) {
    case Bf16Kernel::kAmx:
      return forward_packed_.bytes() + (backward_packed_.empty() ? 0 : backward_packed_.bytes());
    case Bf16Kernel::kAvx512Bf16:
      return 0;
    case Bf16Kernel::kFallback:
      return static_cast<int64_t>(sizeof(float)) * w_.numel();
  }
  return 0;
}

void Bf16Weight::Forward(const float* x, int64_t T, float* y) const {
  const int64_t out = w_.rows, in = w_.cols;
  switch (kernel_) {
    case Bf16Kernel::kAmx:
      GemmAmx(forward_packed_, x, T, y, /*accumulate=*/false);
      return;
    case Bf16Kernel::kAvx512Bf16: {
      uint16_t* xb = Scratch<uint16_t>(T * in);
      Traits(Format::kBF16).quantize(x, T * in, xb);
      OnednnMatMul(OnednnType::kBf16, xb, w_.data, /*w_transposed=*/true, T, out, in, y, false);
      return;
    }
    case Bf16Kernel::kFallback: {
      float* xr = Scratch<float>(T * in);
      RoundToBf16(x, T * in, xr);
      Gemm(false, true, T, out, in, 1.0f, xr, in, widened_.get(), in, 0.0f, y, out);
      return;
    }
  }
}

void Bf16Weight::BackwardX(const float* dy, int64_t T, float* dx, bool accumulate) const {
  if (!backward_) FailRuntime("BF16 dx of a weight prepared for the forward only");
  const int64_t out = w_.rows, in = w_.cols;
  switch (kernel_) {
    case Bf16Kernel::kAmx:
      GemmAmx(backward_packed_, dy, T, dx, accumulate);
      return;
    case Bf16Kernel::kAvx512Bf16: {
      uint16_t* db = Scratch<uint16_t>(T * out);
      Traits(Format::kBF16).quantize(dy, T * out, db);
      OnednnMatMul(OnednnType::kBf16, db, w_.data, /*w_transposed=*/false, T, in, out, dx,
                   accumulate);
      return;
    }
    case Bf16Kernel::kFallback: {
      float* dr = Scratch<float>(T * out);
      RoundToBf16(dy, T * out, dr);
      Gemm(false, false, T, in, out, 1.0f, dr, out, widened_.get(), in, accumulate ? 1.0f : 0.0f,
           dx, in);
      return;
    }
  }
}

void Bf16MatMulReference(const Tensor& w, const float* x, int64_t T, float* y) {
  std::vector<float> xr(static_cast<size_t>(T * w.cols));
  for (size_t i = 0; i < xr.size(); ++i) xr[i] = Bf16ToF32(F32ToBf16(x[i]));
  MatMulReference(w, xr.data(), T, y);
}

void Bf16MatMulBackwardXReference(const Tensor& w, const float* dy, int64_t T, float* dx,
                                  bool accumulate) {
  std::vector<float> dr(static_cast<size_t>(T * w.rows));
  for (size_t i = 0; i < dr.size(); ++i) dr[i] = Bf16ToF32(F32ToBf16(dy[i]));
  MatMulBackwardXReference(w, dr.data(), T, dx, accumulate);
}

}  // namespace tinylora
