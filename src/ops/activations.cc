// Highway kernels for the exp-heavy element-wise ops: SwiGLU and softmax. Compiled for each
// SIMD target and dispatched at run time; ops.cc holds their plain references.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "ops/activations.cc"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>
// after highway.h: compiled once per target
#include <hwy/contrib/math/math-inl.h>

#include <cmath>

#include "ops/ops.h"

HWY_BEFORE_NAMESPACE();
namespace tinylora {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

void SwiGluImpl(const float* gate, const float* up, int64_t n, float* out) {
  const hn::ScalableTag<float> df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  const auto one = hn::Set(df, 1.0f);
  const auto limit = hn::Set(df, 88.0f);  // exp(88) is finite in f32; silu(g < -88) ≈ 0 either way
  int64_t i = 0;
  for (; i + N <= n; i += N) {
    const auto g = hn::LoadU(df, gate + i);
    const auto e = hn::Exp(df, hn::Min(hn::Neg(g), limit));
    hn::StoreU(hn::Mul(hn::Div(g, hn::Add(one, e)), hn::LoadU(df, up + i)), df, out + i);
  }
  for (; i < n; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

void SwiGluBackwardImpl(const float* dout, const float* gate, const float* up, int64_t n,
                        float* dgate, float* dup) {
  const hn::ScalableTag<float> df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  const auto one = hn::Set(df, 1.0f);
  const auto limit = hn::Set(df, 88.0f);
  int64_t i = 0;
  for (; i + N <= n; i += N) {
    const auto g = hn::LoadU(df, gate + i);
    const auto d = hn::LoadU(df, dout + i);
    const auto sig = hn::Div(one, hn::Add(one, hn::Exp(df, hn::Min(hn::Neg(g), limit))));
    hn::StoreU(hn::Mul(d, hn::Mul(g, sig)), df, dup + i);
    // d · up · σ · (1 + g·(1 − σ))
    const auto dsilu = hn::Mul(sig, hn::MulAdd(g, hn::Sub(one, sig), one));
    hn::StoreU(hn::Mul(hn::Mul(d, hn::LoadU(df, up + i)), dsilu), df, dgate + i);
  }
  for (; i < n; ++i) {
    const float g = gate[i], sig = 1.0f / (1.0f + std::exp(-g));
    dup[i] = dout[i] * g * sig;
    dgate[i] = dout[i] * up[i] * sig * (1.0f + g * (1.0f - sig));
  }
}

float SoftmaxImpl(float* x, int64_t n) {
  const hn::ScalableTag<float> df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  float mx = x[0];
  int64_t i = 0;
  if (n >= N) {
    auto m = hn::LoadU(df, x);
    for (i = N; i + N <= n; i += N) m = hn::Max(m, hn::LoadU(df, x + i));
    mx = hn::GetLane(hn::MaxOfLanes(df, m));
  }
  for (; i < n; ++i) mx = std::max(mx, x[i]);
  const auto vmx = hn::Set(df, mx);
  auto sum = hn::Zero(df);
  for (i = 0; i + N <= n; i += N) {
    const auto e = hn::Exp(df, hn::Sub(hn::LoadU(df, x + i), vmx));
    hn::StoreU(e, df, x + i);
    sum = hn::Add(sum, e);
  }
  float total = hn::GetLane(hn::SumOfLanes(df, sum));
  for (; i < n; ++i) total += (x[i] = std::exp(x[i] - mx));
  const auto inv = hn::Set(df, 1.0f / total);
  for (i = 0; i + N <= n; i += N) hn::StoreU(hn::Mul(hn::LoadU(df, x + i), inv), df, x + i);
  for (; i < n; ++i) x[i] *= 1.0f / total;
  return mx + std::log(total);
}

}  // namespace HWY_NAMESPACE
}  // namespace tinylora
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace tinylora {

HWY_EXPORT(SwiGluImpl);
HWY_EXPORT(SoftmaxImpl);
HWY_EXPORT(SwiGluBackwardImpl);

void SwiGluBackward(const float* dout, const float* gate, const float* up, int64_t n, float* dgate,
                    float* dup) {
  constexpr int64_t kChunk = 16384;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t begin = c * kChunk, len = std::min(kChunk, n - begin);
    HWY_DYNAMIC_DISPATCH(SwiGluBackwardImpl)
    (dout + begin, gate + begin, up + begin, len, dgate + begin, dup + begin);
  }
}

void SwiGlu(const float* gate, const float* up, int64_t n, float* out) {
  constexpr int64_t kChunk = 16384;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t begin = c * kChunk, len = std::min(kChunk, n - begin);
    HWY_DYNAMIC_DISPATCH(SwiGluImpl)(gate + begin, up + begin, len, out + begin);
  }
}

float Softmax(float* x, int64_t n) { return HWY_DYNAMIC_DISPATCH(SoftmaxImpl)(x, n); }

}  // namespace tinylora
#endif  // HWY_ONCE
