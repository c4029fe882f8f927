#include "ops/attention.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "ops/gemm.h"
#include "ops/matmul.h"
#include "ops/ops.h"

namespace tinylora {

// Attention runs over blocks of this many queries, each skipping the keys none of them sees.
constexpr int64_t kQueryBlock = 64;

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

namespace {
// This thread's scratch of at least n floats (the ops below parallelise internally).
float* ThreadScratch(int64_t n) {
  thread_local std::vector<float> scratch;
  if (static_cast<int64_t>(scratch.size()) < n) scratch.resize(static_cast<size_t>(n));
  return scratch.data();
}
}  // namespace

void AttentionCached(const AttentionShape& s, const AttentionRun* runs, int64_t n_runs,
                     const float* q, float* att) {
  const int64_t Q = int64_t{s.n_heads} * s.head_dim, KV = int64_t{s.n_kv_heads} * s.head_dim;
  const int group = s.n_heads / s.n_kv_heads;
  const int64_t tasks = n_runs * s.n_heads;
#pragma omp parallel for schedule(dynamic)
  for (int64_t task = 0; task < tasks; ++task) {
    const AttentionRun& r = runs[task / s.n_heads];
    const int head = static_cast<int>(task % s.n_heads);
    if (r.n == 1) {
      if (head % group != 0) continue;  // the group's first head does the whole group
      AttentionGroupDecode(s, head / group, q + r.begin * Q, r.k, r.v, KV, r.p0, att + r.begin * Q,
                           ThreadScratch(int64_t{group} * (r.p0 + 1)));
    } else {
      AttentionHead(s, head, q + r.begin * Q, Q, r.k, r.v, KV, r.n, r.p0, att + r.begin * Q, Q,
                    ThreadScratch(std::min(r.n, kQueryBlock) * (r.p0 + r.n)));
    }
  }
}

void AttentionCachedInvariant(const AttentionShape& s, const AttentionRun* runs, int64_t n_runs,
                              const float* q, float* att) {
  const int64_t Q = int64_t{s.n_heads} * s.head_dim, KV = int64_t{s.n_kv_heads} * s.head_dim;
  const int64_t tasks = n_runs * s.n_kv_heads;  // per (run, KV group)
#pragma omp parallel for schedule(dynamic)
  for (int64_t task = 0; task < tasks; ++task) {
    const AttentionRun& r = runs[task / s.n_kv_heads];
    AttentionGroupInvariant(s, static_cast<int>(task % s.n_kv_heads), q + r.begin * Q, Q, r.k, r.v,
                            KV, r.n, r.p0, att + r.begin * Q, Q, ThreadScratch(r.p0 + r.n));
  }
}

void AttentionCachedReference(const AttentionShape& s, const AttentionRun* runs, int64_t n_runs,
                              const float* q, float* att) {
  const int64_t Q = int64_t{s.n_heads} * s.head_dim, KV = int64_t{s.n_kv_heads} * s.head_dim;
  for (int64_t i = 0; i < n_runs; ++i) {
    const AttentionRun& r = runs[i];
    AttentionReference(s, q + r.begin * Q, Q, r.k, r.v, KV, r.n, r.p0, att + r.begin * Q, Q);
  }
}

void AttentionTrain(const AttentionShape& s, int64_t B, int64_t T, const float* q, const float* k,
                    const float* v, float* probs, float* att) {
  const int64_t Q = int64_t{s.n_heads} * s.head_dim, KV = int64_t{s.n_kv_heads} * s.head_dim;
  const int64_t tasks = B * s.n_heads;
#pragma omp parallel for schedule(dynamic)
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t b = task / s.n_heads;
    const int h = static_cast<int>(task % s.n_heads);
    AttentionTrainHead(s, h, q + b * T * Q, Q, k + b * T * KV, v + b * T * KV, KV, T,
                       probs + task * T * T, att + b * T * Q, Q);
  }
}

void AttentionTrainBackward(const AttentionShape& s, int64_t B, int64_t T, const float* q,
                            const float* k, const float* v, const float* probs, const float* datt,
                            float* dq, float* dk, float* dv) {
  const int64_t Q = int64_t{s.n_heads} * s.head_dim, KV = int64_t{s.n_kv_heads} * s.head_dim;
  const int64_t group = s.n_heads / s.n_kv_heads, tasks = B * s.n_kv_heads;
  std::fill(dk, dk + B * T * KV, 0.0f);
  std::fill(dv, dv + B * T * KV, 0.0f);
#pragma omp parallel for schedule(dynamic)
  for (int64_t task = 0; task < tasks; ++task) {  // one KV group per task: dk, dv race-free
    const int64_t b = task / s.n_kv_heads;
    const int kvh = static_cast<int>(task % s.n_kv_heads);
    float* scratch = ThreadScratch(T * T);
    for (int64_t i = 0; i < group; ++i) {
      const int h = static_cast<int>(kvh * group + i);
      AttentionTrainHeadBackward(s, h, q + b * T * Q, Q, k + b * T * KV, v + b * T * KV, KV, T,
                                 probs + (b * s.n_heads + h) * T * T, datt + b * T * Q, Q,
                                 dq + b * T * Q, dk + b * T * KV, dv + b * T * KV, scratch);
    }
  }
}

namespace {
// One (sequence, head)'s causal probabilities (T, T) in double: row i over keys 0..i.
void ReferenceProbs(const AttentionShape& s, int h, int64_t T, const float* q, const float* k,
                    std::vector<double>& p) {
  const int hd = s.head_dim, g = h / (s.n_heads / s.n_kv_heads);
  const int64_t Q = int64_t{s.n_heads} * hd, KV = int64_t{s.n_kv_heads} * hd;
  p.assign(static_cast<size_t>(T * T), 0.0);
  for (int64_t i = 0; i < T; ++i) {
    double mx = -INFINITY, sum = 0;
    for (int64_t j = 0; j <= i; ++j) {
      double dot = 0;
      for (int d = 0; d < hd; ++d) dot += double{q[i * Q + h * hd + d]} * k[j * KV + g * hd + d];
      p[i * T + j] = dot / std::sqrt(static_cast<double>(hd));
      mx = std::max(mx, p[i * T + j]);
    }
    for (int64_t j = 0; j <= i; ++j) sum += (p[i * T + j] = std::exp(p[i * T + j] - mx));
    for (int64_t j = 0; j <= i; ++j) p[i * T + j] /= sum;
  }
}
}  // namespace

void AttentionTrainReference(const AttentionShape& s, int64_t B, int64_t T, const float* q,
                             const float* k, const float* v, float* probs, float* att) {
  const int hd = s.head_dim, group = s.n_heads / s.n_kv_heads;
  const int64_t Q = int64_t{s.n_heads} * hd, KV = int64_t{s.n_kv_heads} * hd;
  std::vector<double> p;
  for (int64_t b = 0; b < B; ++b) {
    for (int h = 0; h < s.n_heads; ++h) {
      const int g = h / group;
      ReferenceProbs(s, h, T, q + b * T * Q, k + b * T * KV, p);
      float* pr = probs + (b * s.n_heads + h) * T * T;
      for (int64_t i = 0; i < T * T; ++i) pr[i] = static_cast<float>(p[i]);
      for (int64_t i = 0; i < T; ++i) {
        for (int d = 0; d < hd; ++d) {
          double acc = 0;
          for (int64_t j = 0; j <= i; ++j) acc += p[i * T + j] * v[(b * T + j) * KV + g * hd + d];
          att[(b * T + i) * Q + h * hd + d] = static_cast<float>(acc);
        }
      }
    }
  }
}

void AttentionTrainBackwardReference(const AttentionShape& s, int64_t B, int64_t T, const float* q,
                                     const float* k, const float* v, const float*,
                                     const float* datt, float* dq, float* dk, float* dv) {
  const int hd = s.head_dim, group = s.n_heads / s.n_kv_heads;
  const int64_t Q = int64_t{s.n_heads} * hd, KV = int64_t{s.n_kv_heads} * hd;
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  std::vector<double> p, ds(static_cast<size_t>(T * T));
  std::vector<double> gk(static_cast<size_t>(B * T * KV), 0.0), gv(gk.size(), 0.0);
  for (int64_t b = 0; b < B; ++b) {
    for (int h = 0; h < s.n_heads; ++h) {
      const int g = h / group;
      ReferenceProbs(s, h, T, q + b * T * Q, k + b * T * KV, p);
      for (int64_t i = 0; i < T; ++i) {
        const float* dout = datt + (b * T + i) * Q + h * hd;
        double rowsum = 0;
        for (int64_t j = 0; j <= i; ++j) {
          double dp = 0;  // dP_ij = dout_i · v_j;  dV_j += P_ij dout_i
          for (int d = 0; d < hd; ++d) {
            dp += double{dout[d]} * v[(b * T + j) * KV + g * hd + d];
            gv[static_cast<size_t>((b * T + j) * KV + g * hd + d)] += p[i * T + j] * dout[d];
          }
          ds[i * T + j] = dp;
          rowsum += p[i * T + j] * dp;
        }
        for (int64_t j = 0; j <= i; ++j) ds[i * T + j] = p[i * T + j] * (ds[i * T + j] - rowsum);
      }
      for (int64_t i = 0; i < T; ++i) {  // dQ_i = scale Σ_j dS_ij k_j;  dK_j += scale dS_ij q_i
        for (int d = 0; d < hd; ++d) {
          double acc = 0;
          for (int64_t j = 0; j <= i; ++j) {
            acc += ds[i * T + j] * k[(b * T + j) * KV + g * hd + d];
            gk[static_cast<size_t>((b * T + j) * KV + g * hd + d)] +=
                scale * ds[i * T + j] * q[(b * T + i) * Q + h * hd + d];
          }
          dq[(b * T + i) * Q + h * hd + d] = static_cast<float>(scale * acc);
        }
      }
    }
  }
  for (size_t i = 0; i < gk.size(); ++i) {
    dk[i] = static_cast<float>(gk[i]);
    dv[i] = static_cast<float>(gv[i]);
  }
}

}  // namespace tinylora
