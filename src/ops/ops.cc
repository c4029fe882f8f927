#include "ops/ops.h"

#include <algorithm>
#include <cmath>

#include "ops/gemm.h"
#include "ops/matmul.h"

namespace tinylora {

void RmsNorm(const float* x, const float* w, int64_t T, int64_t C, float eps, float* out,
             float* rstd) {
#pragma omp parallel for schedule(static) if (T > 1)
  for (int64_t t = 0; t < T; ++t) {
    const float* xr = x + t * C;
    float* yr = out + t * C;
    double ss = 0;
    for (int64_t i = 0; i < C; ++i) ss += static_cast<double>(xr[i]) * xr[i];
    const float scale = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(C) + eps));
    for (int64_t i = 0; i < C; ++i) yr[i] = xr[i] * scale * w[i];
    if (rstd != nullptr) rstd[t] = scale;
  }
}

void RmsNormBackward(const float* dout, const float* x, const float* w, const float* rstd,
                     int64_t T, int64_t C, float* dx, float* dw) {
  // y = x·r·w with r = (mean(x²) + eps)^-1/2:  dx = r·(g − x·r²·mean(g·x)), g = dout·w
#pragma omp parallel for schedule(static) if (T > 1)
  for (int64_t t = 0; t < T; ++t) {
    const float* xr = x + t * C;
    const float* dy = dout + t * C;
    const double r = rstd[t];
    double dot = 0;
    for (int64_t i = 0; i < C; ++i) dot += static_cast<double>(dy[i]) * w[i] * xr[i];
    const float k = static_cast<float>(r * r * r * dot / static_cast<double>(C));
    float* dxr = dx + t * C;
    for (int64_t i = 0; i < C; ++i) dxr[i] += static_cast<float>(r) * dy[i] * w[i] - k * xr[i];
  }
  if (dw == nullptr) return;
#pragma omp parallel for schedule(static) if (C > 256)
  for (int64_t i = 0; i < C; ++i) {
    double acc = 0;
    for (int64_t t = 0; t < T; ++t)
      acc += static_cast<double>(dout[t * C + i]) * x[t * C + i] * rstd[t];
    dw[i] += static_cast<float>(acc);
  }
}

RopeTable::RopeTable(int hd, int mp, double theta) : head_dim(hd), max_pos(mp) {
  const int half = hd / 2;
  cos.resize(static_cast<size_t>(mp) * half);
  sin.resize(static_cast<size_t>(mp) * half);
  for (int p = 0; p < mp; ++p) {
    for (int i = 0; i < half; ++i) {
      const double inv_freq = std::pow(theta, -2.0 * i / hd);
      const double a = p * inv_freq;
      cos[static_cast<size_t>(p) * half + i] = static_cast<float>(std::cos(a));
      sin[static_cast<size_t>(p) * half + i] = static_cast<float>(std::sin(a));
    }
  }
}

void Rope(float* x, const int32_t* pos, int64_t T, int n_heads, const RopeTable& table) {
  const int hd = table.head_dim, half = hd / 2;
  for (int64_t t = 0; t < T; ++t) {
    const float* c = table.cos.data() + static_cast<size_t>(pos[t]) * half;
    const float* s = table.sin.data() + static_cast<size_t>(pos[t]) * half;
    for (int h = 0; h < n_heads; ++h) {
      float* v = x + (t * n_heads + h) * hd;
      for (int i = 0; i < half; ++i) {
        const float a = v[i], b = v[i + half];
        v[i] = a * c[i] - b * s[i];
        v[i + half] = b * c[i] + a * s[i];
      }
    }
  }
}

void RopeBackward(float* dx, const int32_t* pos, int64_t T, int n_heads, const RopeTable& table) {
  const int hd = table.head_dim, half = hd / 2;
  for (int64_t t = 0; t < T; ++t) {
    const float* c = table.cos.data() + static_cast<size_t>(pos[t]) * half;
    const float* s = table.sin.data() + static_cast<size_t>(pos[t]) * half;
    for (int h = 0; h < n_heads; ++h) {
      float* v = dx + (t * n_heads + h) * hd;
      for (int i = 0; i < half; ++i) {
        const float a = v[i], b = v[i + half];
        v[i] = a * c[i] + b * s[i];
        v[i + half] = b * c[i] - a * s[i];
      }
    }
  }
}

void SwiGluBackwardReference(const float* dout, const float* gate, const float* up, int64_t n,
                             float* dgate, float* dup) {
  for (int64_t i = 0; i < n; ++i) {
    const double g = gate[i];
    const double sig = 1.0 / (1.0 + std::exp(-g));
    dup[i] = static_cast<float>(dout[i] * g * sig);
    dgate[i] = static_cast<float>(dout[i] * up[i] * sig * (1.0 + g * (1.0 - sig)));
  }
}

void SwiGluReference(const float* gate, const float* up, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    const double g = gate[i];
    out[i] = static_cast<float>(g / (1.0 + std::exp(-g)) * up[i]);
  }
}

void SoftmaxReference(float* x, int64_t n) {
  double mx = x[0];
  for (int64_t i = 1; i < n; ++i) mx = std::max(mx, static_cast<double>(x[i]));
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += std::exp(x[i] - mx);
  for (int64_t i = 0; i < n; ++i) x[i] = static_cast<float>(std::exp(x[i] - mx) / sum);
}

}  // namespace tinylora
