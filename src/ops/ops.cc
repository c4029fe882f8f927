#include "ops/ops.h"

#include <algorithm>
#include <cmath>

#include "ops/gemm.h"
#include "ops/matmul.h"

namespace tinylora {

// Attention runs over blocks of this many queries, each skipping the keys none of them sees.
constexpr int64_t kQueryBlock = 64;

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

namespace {

// One block of nq queries of head `head`, the first at position `pos0`; keys [0, nk) with
// nk = pos0 + nq (the last query's). probs (nq, ldp ≥ nk) gets each query's softmax over the
// keys it sees and zeros up to ldp; out (nq, HD) row stride ldo = probs · v_g.
void AttendQueryBlock(const AttentionShape& s, int head, const float* q, int64_t ldq,
                      const float* k, const float* v, int64_t ldkv, int64_t nq, int64_t pos0,
                      float* probs, int64_t ldp, float* out, int64_t ldo) {
  const int hd = s.head_dim;
  const int kvh = head / (s.n_heads / s.n_kv_heads);
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const int64_t nk = pos0 + nq;
  // scores (nq, nk) = scale · q_h (nq, HD) · k_g (nk, HD)ᵀ
  Gemm(false, true, static_cast<int>(nq), static_cast<int>(nk), hd, scale, q + head * hd,
       static_cast<int>(ldq), k + kvh * hd, static_cast<int>(ldkv), 0.0f, probs,
       static_cast<int>(ldp));
  // causal: query i (position pos0 + i) sees keys 0..pos0 + i
  for (int64_t i = 0; i < nq; ++i) {
    float* row = probs + i * ldp;
    const int64_t visible = pos0 + i + 1;
    Softmax(row, visible);
    for (int64_t j = visible; j < ldp; ++j) row[j] = 0.0f;
  }
  // out_h (nq, HD) = probs (nq, nk) · v_g (nk, HD)
  Gemm(false, false, static_cast<int>(nq), hd, static_cast<int>(nk), 1.0f, probs,
       static_cast<int>(ldp), v + kvh * hd, static_cast<int>(ldkv), 0.0f, out + head * hd,
       static_cast<int>(ldo));
}

}  // namespace

void AttentionHead(const AttentionShape& s, int head, const float* q, int64_t ldq, const float* k,
                   const float* v, int64_t ldkv, int64_t n, int64_t p0, float* out, int64_t ldo,
                   float* scratch) {
  for (int64_t i0 = 0; i0 < n; i0 += kQueryBlock) {
    const int64_t nb = std::min(kQueryBlock, n - i0);
    // probabilities in the scratch, rows as long as the block's last query sees
    AttendQueryBlock(s, head, q + i0 * ldq, ldq, k, v, ldkv, nb, p0 + i0, scratch, p0 + i0 + nb,
                     out + i0 * ldo, ldo);
  }
}

void AttentionGroupDecode(const AttentionShape& s, int kvh, const float* q, const float* k,
                          const float* v, int64_t ldkv, int64_t p0, float* out, float* scratch) {
  const int hd = s.head_dim, group = s.n_heads / s.n_kv_heads;
  const int len = static_cast<int>(p0 + 1);
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const float* qg = q + static_cast<int64_t>(kvh) * group * hd;  // (group, HD), rows contiguous
  // scores (group, len) = scale · q_g · k_gᵀ ; every key up to p0 is visible
  Gemm(false, true, group, len, hd, scale, qg, hd, k + kvh * hd, static_cast<int>(ldkv), 0.0f,
       scratch, len);
  for (int h = 0; h < group; ++h) Softmax(scratch + static_cast<int64_t>(h) * len, len);
  // out_g (group, HD) = probs · v_g
  Gemm(false, false, group, hd, len, 1.0f, scratch, len, v + kvh * hd, static_cast<int>(ldkv), 0.0f,
       out + static_cast<int64_t>(kvh) * group * hd, hd);
}

void AttentionGroupInvariant(const AttentionShape& s, int kvh, const float* q, int64_t ldq,
                             const float* k, const float* v, int64_t ldkv, int64_t n, int64_t p0,
                             float* out, int64_t ldo, float* scratch) {
  const int hd = s.head_dim, group = s.n_heads / s.n_kv_heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const float* kg = k + static_cast<int64_t>(kvh) * hd;
  const float* vg = v + static_cast<int64_t>(kvh) * hd;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t visible = p0 + i + 1;
    for (int g = 0; g < group; ++g) {
      const int64_t h = static_cast<int64_t>(kvh) * group + g;
      DotRows(kg, ldkv, visible, q + i * ldq + h * hd, hd, scale, scratch);
      Softmax(scratch, visible);
      WeightedSumRows(scratch, vg, ldkv, visible, hd, out + i * ldo + h * hd);
    }
  }
}

void AttentionTrainHead(const AttentionShape& s, int head, const float* q, int64_t ldq,
                        const float* k, const float* v, int64_t ldkv, int64_t T, float* probs,
                        float* out, int64_t ldo) {
  for (int64_t i0 = 0; i0 < T; i0 += kQueryBlock) {
    AttendQueryBlock(s, head, q + i0 * ldq, ldq, k, v, ldkv, std::min(kQueryBlock, T - i0), i0,
                     probs + i0 * T, T, out + i0 * ldo, ldo);
  }
}

void AttentionTrainHeadBackward(const AttentionShape& s, int head, const float* q, int64_t ldq,
                                const float* k, const float* v, int64_t ldkv, int64_t T,
                                const float* probs, const float* dout, int64_t ldo, float* dq,
                                float* dk, float* dv, float* scratch) {
  const int hd = s.head_dim;
  const int kvh = head / (s.n_heads / s.n_kv_heads);
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const int t = static_cast<int>(T), lq = static_cast<int>(ldq), lkv = static_cast<int>(ldkv);
  const int lo = static_cast<int>(ldo);
  // Per block of queries [i0, i0 + nq), only keys [0, nk) (nk = i0 + nq) can be nonzero.
  for (int64_t i0 = 0; i0 < T; i0 += kQueryBlock) {
    const int nq = static_cast<int>(std::min(kQueryBlock, T - i0)), nk = static_cast<int>(i0) + nq;
    const float* p = probs + i0 * T;
    const float* dout_b = dout + i0 * ldo + head * hd;
    float* dp = scratch + i0 * T;
    // dv_g[:nk] += Pᵀ (nk, nq) · dout_h[i0:] (nq, HD)
    Gemm(true, false, nk, hd, nq, 1.0f, p, t, dout_b, lo, 1.0f, dv + kvh * hd, lkv);
    // dP (nq, nk) = dout_h[i0:] · v_g[:nk]ᵀ, then dS = P ∘ (dP − rowsum(P ∘ dP))  (j ≤ i only)
    Gemm(false, true, nq, nk, hd, 1.0f, dout_b, lo, v + kvh * hd, lkv, 0.0f, dp, t);
    for (int64_t r = 0; r < nq; ++r) {
      const int64_t i = i0 + r;
      const float* pr = p + r * T;
      float* d = dp + r * T;
      double dot = 0;
      for (int64_t j = 0; j <= i; ++j) dot += static_cast<double>(pr[j]) * d[j];
      for (int64_t j = 0; j <= i; ++j) d[j] = pr[j] * (d[j] - static_cast<float>(dot));
      for (int64_t j = i + 1; j < nk; ++j) d[j] = 0.0f;
    }
    // dq_h[i0:] (nq, HD) = scale · dS · k_g[:nk] ;  dk_g[:nk] += scale · dSᵀ · q_h[i0:]
    Gemm(false, false, nq, hd, nk, scale, dp, t, k + kvh * hd, lkv, 0.0f, dq + i0 * ldq + head * hd,
         lq);
    Gemm(true, false, nk, hd, nq, scale, dp, t, q + i0 * ldq + head * hd, lq, 1.0f, dk + kvh * hd,
         lkv);
  }
}

void AttentionReference(const AttentionShape& s, const float* q, int64_t ldq, const float* k,
                        const float* v, int64_t ldkv, int64_t n, int64_t p0, float* out,
                        int64_t ldo) {
  const int hd = s.head_dim, group = s.n_heads / s.n_kv_heads;
  std::vector<double> p(static_cast<size_t>(p0 + n));
  for (int64_t i = 0; i < n; ++i) {
    for (int h = 0; h < s.n_heads; ++h) {
      const int g = h / group;
      const float* qi = q + i * ldq + h * hd;
      const int64_t visible = p0 + i + 1;
      double mx = -INFINITY;
      for (int64_t j = 0; j < visible; ++j) {
        double dot = 0;
        for (int d = 0; d < hd; ++d) dot += static_cast<double>(qi[d]) * k[j * ldkv + g * hd + d];
        p[j] = dot / std::sqrt(static_cast<double>(hd));
        mx = std::max(mx, p[j]);
      }
      double sum = 0;
      for (int64_t j = 0; j < visible; ++j) sum += (p[j] = std::exp(p[j] - mx));
      for (int d = 0; d < hd; ++d) {
        double acc = 0;
        for (int64_t j = 0; j < visible; ++j) acc += p[j] * v[j * ldkv + g * hd + d];
        out[i * ldo + h * hd + d] = static_cast<float>(acc / sum);
      }
    }
  }
}

}  // namespace tinylora
