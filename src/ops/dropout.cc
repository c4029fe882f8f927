#include "ops/dropout.h"

namespace tinylora {

uint64_t Mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

namespace {
uint64_t Threshold(double p) { return static_cast<uint64_t>(p * 18446744073709551616.0); }
}  // namespace

void DropoutForward(uint64_t key, double p, const float* x, int64_t n, float* out, int64_t first) {
  const uint64_t threshold = Threshold(p);
  const float keep_scale = static_cast<float>(1.0 / (1.0 - p));
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    out[i] = Mix(key ^ static_cast<uint64_t>(first + i)) < threshold ? 0.0f : x[i] * keep_scale;
  }
}

void DropoutBackwardAdd(uint64_t key, double p, const float* dout, int64_t n, float* dx,
                        int64_t first) {
  const uint64_t threshold = Threshold(p);
  const float keep_scale = static_cast<float>(1.0 / (1.0 - p));
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    if (Mix(key ^ static_cast<uint64_t>(first + i)) >= threshold) dx[i] += dout[i] * keep_scale;
  }
}

void Add(const float* a, const float* b, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

}  // namespace tinylora
