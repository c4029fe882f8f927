#include "ops/adamw.h"

#include <cmath>

namespace tinylora {

void AdamWUpdate(const AdamWHyper& h, float scale, const float* grad, float* p, float* m, float* v,
                 int64_t n) {
  for (int64_t k = 0; k < n; ++k) {
    const float g = scale == 1.0f ? grad[k] : grad[k] * scale;
    m[k] = h.b1 * m[k] + (1.0f - h.b1) * g;
    v[k] = h.b2 * v[k] + (1.0f - h.b2) * g * g;
    const float denom = std::sqrt(v[k]) * h.inv_sqrt_bc2 + h.eps;
    p[k] = p[k] * h.keep - h.step_size * m[k] / denom;
  }
}

double SumSquares(const float* x, int64_t n) {
  double s = 0;
  for (int64_t k = 0; k < n; ++k) s += static_cast<double>(x[k]) * x[k];
  return s;
}

void Scale(float* x, int64_t n, float s) {
  for (int64_t k = 0; k < n; ++k) x[k] *= s;
}

}  // namespace tinylora
