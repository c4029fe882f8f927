#include "ops/tree_lora.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>

namespace tinylora {

namespace {

double Sigmoid(double z) { return 1.0 / (1.0 + std::exp(-z)); }

void Grow(std::vector<float>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
}

// Counting sort of the tokens by leaf (stable): rt.order, rt.offsets.
void Group(Routing* rt) {
  const int L = 1 << rt->depth;
  rt->offsets.assign(static_cast<size_t>(L) + 1, 0);
  for (int64_t n = 0; n < rt->N; ++n) ++rt->offsets[static_cast<size_t>(rt->leaf[n]) + 1];
  for (int j = 0; j < L; ++j)
    rt->offsets[static_cast<size_t>(j) + 1] += rt->offsets[static_cast<size_t>(j)];
  std::vector<int64_t> next(rt->offsets.begin(), rt->offsets.end() - 1);
  rt->order.resize(static_cast<size_t>(rt->N));
  for (int64_t n = 0; n < rt->N; ++n) {
    rt->order[static_cast<size_t>(next[static_cast<size_t>(rt->leaf[n])]++)] =
        static_cast<int32_t>(n);
  }
}

void Reset(Routing* rt, int depth, int64_t N, bool soft) {
  rt->depth = depth;
  rt->N = N;
  rt->soft = soft;
  rt->leaf.assign(static_cast<size_t>(N), 0);
  rt->path_z.assign(static_cast<size_t>(N * depth), 0.0f);
  rt->gate.assign(static_cast<size_t>(N), 1.0f);
  rt->dgate.assign(static_cast<size_t>(N), 0.0f);
  const int L = 1 << depth;
  if (soft) {
    rt->probs.assign(static_cast<size_t>(N * L), 0.0f);
    rt->dprobs.assign(static_cast<size_t>(N * L), 0.0f);
  } else {
    rt->probs.clear();
    rt->dprobs.clear();
  }
}

}  // namespace

HardRoute RouteHardRow(const RouterWeights& r, const float* x, GateKind gate, float* path_z) {
  const int d = r.depth;
  const int64_t C = r.hidden;
  int node = 0;
  double p = 1.0;
  for (int k = 0; k < d; ++k) {
    const float* w = r.W + static_cast<int64_t>(node) * C;
    float z = r.b[node];
    for (int64_t i = 0; i < C; ++i) z += w[i] * x[i];
    const int bit = z >= 0.0f ? 1 : 0;
    path_z[k] = z;
    const double s = Sigmoid(z);
    p *= bit ? s : 1.0 - s;
    node = 2 * node + 1 + bit;
  }
  return {node - ((1 << d) - 1), gate == GateKind::kPath ? static_cast<float>(p) : 1.0f};
}

void RouteHard(const RouterWeights& r, const float* x, int64_t N, GateKind gate, Routing* rt) {
  const int d = r.depth;
  Reset(rt, d, N, false);
  rt->gate_kind = gate;
#pragma omp parallel for schedule(static) if (N > 16)
  for (int64_t n = 0; n < N; ++n) {
    const HardRoute h =
        RouteHardRow(r, x + n * r.hidden, gate, &rt->path_z[static_cast<size_t>(n * d)]);
    rt->leaf[static_cast<size_t>(n)] = h.leaf;
    rt->gate[static_cast<size_t>(n)] = h.gate;
  }
  Group(rt);
}

void RouteSoft(GemmFn gemm, const RouterWeights& r, const float* x, int64_t N, Routing* rt) {
  const int d = r.depth, L = 1 << d, M = L - 1;
  Reset(rt, d, N, true);
  rt->gate_kind = GateKind::kPath;
  rt->z.assign(static_cast<size_t>(N * M), 0.0f);
  for (int64_t n = 0; n < N; ++n)
    std::memcpy(&rt->z[static_cast<size_t>(n * M)], r.b, sizeof(float) * M);
  // z (N, M) = x (N, C) · Wᵀ + b
  gemm(false, true, static_cast<int>(N), M, static_cast<int>(r.hidden), 1.0f, x,
       static_cast<int>(r.hidden), r.W, static_cast<int>(r.hidden), 1.0f, rt->z.data(), M);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* z = &rt->z[static_cast<size_t>(n * M)];
    for (int j = 0; j < L; ++j) {  // p_j = Π σ(±z) along j's path
      double p = 1.0;
      int node = 0;
      for (int k = 0; k < d; ++k) {
        const int bit = (j >> (d - 1 - k)) & 1;
        const double s = Sigmoid(z[node]);
        p *= bit ? s : 1.0 - s;
        node = 2 * node + 1 + bit;
      }
      rt->probs[static_cast<size_t>(n * L + j)] = static_cast<float>(p);
    }
    int node = 0;  // the hard path
    double p = 1.0;
    for (int k = 0; k < d; ++k) {
      const int bit = z[node] >= 0.0f ? 1 : 0;
      rt->path_z[static_cast<size_t>(n * d + k)] = z[node];
      const double s = Sigmoid(z[node]);
      p *= bit ? s : 1.0 - s;
      node = 2 * node + 1 + bit;
    }
    rt->leaf[static_cast<size_t>(n)] = node - M;
    rt->gate[static_cast<size_t>(n)] = static_cast<float>(p);
  }
  Group(rt);
}

namespace {

double Entropy(double z) {
  const double s = Sigmoid(z);
  const double a = s > 0 ? -s * std::log(s) : 0.0, b = s < 1 ? -(1 - s) * std::log(1 - s) : 0.0;
  return a + b;
}

}  // namespace

double DecisionEntropy(float z) { return Entropy(z); }
bool DecisionDecided(float z) {
  const double s = Sigmoid(z);
  return s < 0.05 || s > 0.95;
}

RoutingStats ComputeRoutingStats(const Routing& rt) {
  RoutingStats st;
  st.usage.assign(static_cast<size_t>(1) << rt.depth, 0);
  for (int32_t j : rt.leaf) ++st.usage[static_cast<size_t>(j)];
  double h = 0, decided = 0;
  for (float z : rt.path_z) {
    h += Entropy(z);
    decided += DecisionDecided(z) ? 1 : 0;
  }
  const double n = static_cast<double>(rt.path_z.size());
  st.entropy = n > 0 ? h / n : 0;
  st.decided = n > 0 ? decided / n : 0;
  return st;
}

namespace {

// What the auxiliary losses are means of, in one array so that data-parallel training sums it
// over the ranks in one call (aux.sum; then it is the global batch's): per node along the hard
// paths its visits, right turns and Σσ, then the decisions on those paths (Σ visits = N·d), their
// Σ entropy (soft routing: every node's; 0 without a hardening loss) and the tokens.
class RoutingTotals {
 public:
  RoutingTotals(const Routing& rt, const AuxLoss& aux)
      : M_((1 << rt.depth) - 1), v_(3 * static_cast<size_t>(M_) + 3, 0.0) {
    const int d = rt.depth;
    for (int64_t n = 0; n < rt.N; ++n) {
      int node = 0;
      for (int k = 0; k < d; ++k) {
        const float z = rt.path_z[static_cast<size_t>(n * d + k)];
        const int bit = z >= 0.0f ? 1 : 0;
        v_[static_cast<size_t>(node)] += 1;
        v_[static_cast<size_t>(M_ + node)] += bit;
        v_[static_cast<size_t>(2 * M_ + node)] += Sigmoid(z);
        node = 2 * node + 1 + bit;
      }
    }
    double entropy = 0;  // only the hardening loss needs it
    if (aux.hardening > 0)
      for (float z : rt.soft ? rt.z : rt.path_z) entropy += Entropy(z);
    v_[3 * static_cast<size_t>(M_)] = static_cast<double>(rt.N) * d;
    v_[3 * static_cast<size_t>(M_) + 1] = entropy;
    v_[3 * static_cast<size_t>(M_) + 2] = static_cast<double>(rt.N);
    if (aux.sum != nullptr && (aux.balance > 0 || aux.hardening > 0)) {
      (*aux.sum)(v_.data(), static_cast<int64_t>(v_.size()));
    }
  }
  double count(int m) const { return v_[static_cast<size_t>(m)]; }
  double right(int m) const { return v_[static_cast<size_t>(M_ + m)]; }
  double sig(int m) const { return v_[static_cast<size_t>(2 * M_ + m)]; }
  double visits() const { return v_[3 * static_cast<size_t>(M_)]; }
  double entropy() const { return v_[3 * static_cast<size_t>(M_) + 1]; }
  double tokens() const { return v_[3 * static_cast<size_t>(M_) + 2]; }

 private:
  int M_;
  std::vector<double> v_;
};

double AuxLossOf(const Routing& rt, const AuxLoss& aux, const RoutingTotals& t) {
  const int d = rt.depth, M = (1 << d) - 1;
  if (t.visits() == 0) return 0.0;
  double loss = 0;
  if (aux.hardening > 0) {
    loss += aux.hardening * t.entropy() / (rt.soft ? t.tokens() * M : t.visits());
  }
  if (aux.balance > 0) {
    double b = 0;
    for (int m = 0; m < M; ++m) {
      const double c = t.count(m);
      if (c == 0) continue;
      const double fr = t.right(m) / c, pr = t.sig(m) / c;
      b += c / t.visits() * 2.0 * (fr * pr + (1 - fr) * (1 - pr));
    }
    loss += aux.balance * b;
  }
  return aux.scale * loss;
}

}  // namespace

double RouterAuxLoss(const Routing& rt, const AuxLoss& aux) {
  if (rt.N == 0 || rt.depth == 0) return 0.0;
  return AuxLossOf(rt, aux, RoutingTotals(rt, aux));
}

double RouterBackward(GemmFn gemm, const RouterWeights& r, const float* x, const Routing& rt,
                      const AuxLoss& aux, float* dx) {
  const int d = rt.depth, L = 1 << d, M = L - 1;
  const int64_t N = rt.N, C = r.hidden;
  // dz of the nodes on each token's hard path, (N, d), and which nodes those are.
  std::vector<float> dzp(static_cast<size_t>(N * d), 0.0f);
  std::vector<int32_t> path(static_cast<size_t>(N * d));
  // balance: each visit of node m moves σ by λ·2·(f_R − f_L) / visits
  const RoutingTotals totals(rt, aux);
  const double visits = totals.visits();
  for (int64_t n = 0; n < N; ++n) {
    int node = 0;
    for (int k = 0; k < d; ++k) {
      const size_t v = static_cast<size_t>(n * d + k);
      const double z = rt.path_z[v];
      const int bit = z >= 0 ? 1 : 0;
      const double s = Sigmoid(z);
      double g = 0;
      if (!rt.soft) {  // the gate: path g = p (dg/dz = g·(b − σ)), unit: d log p / dz = b − σ
        const double dgate = rt.dgate[static_cast<size_t>(n)];
        g += dgate * (rt.gate_kind == GateKind::kPath ? rt.gate[static_cast<size_t>(n)] : 1.0) *
             (bit - s);
        if (aux.hardening > 0) g += aux.scale * aux.hardening / visits * (-z * s * (1 - s));
      }
      if (aux.balance > 0) {
        const double fr = totals.right(node) / totals.count(node);
        g += aux.scale * aux.balance * 2.0 * (fr - (1 - fr)) / visits * s * (1 - s);
      }
      dzp[v] = static_cast<float>(g);
      path[v] = node;
      node = 2 * node + 1 + bit;
    }
  }
  const int c = static_cast<int>(C);
  if (rt.soft) {
    // Every node has a gradient: dz (N, M) = path terms + mixture + hardening, then GEMMs.
    std::vector<float> dz(static_cast<size_t>(N * M), 0.0f);
    for (int64_t n = 0; n < N; ++n) {
      float* dzn = &dz[static_cast<size_t>(n * M)];
      for (int k = 0; k < d; ++k) dzn[path[static_cast<size_t>(n * d + k)]] += dzp[n * d + k];
      const float* z = &rt.z[static_cast<size_t>(n * M)];
      for (int j = 0; j < L; ++j) {  // dp_j/dz_node = p_j·(b − σ(z_node)) on j's path
        const double dp =
            rt.dprobs[static_cast<size_t>(n * L + j)] * rt.probs[static_cast<size_t>(n * L + j)];
        int nd = 0;
        for (int k = 0; k < d; ++k) {
          const int bit = (j >> (d - 1 - k)) & 1;
          dzn[nd] += static_cast<float>(dp * (bit - Sigmoid(z[nd])));
          nd = 2 * nd + 1 + bit;
        }
      }
      if (aux.hardening > 0) {
        const double k = aux.scale * aux.hardening / (totals.tokens() * M);
        for (int m = 0; m < M; ++m) {
          const double s = Sigmoid(z[m]);
          dzn[m] += static_cast<float>(k * (-z[m] * s * (1 - s)));
        }
      }
    }
    // dW (M, C) += dzᵀ · x ;  db += Σ_n dz ;  dx (N, C) += dz · W
    const int n = static_cast<int>(N);
    if (r.training()) {
      std::vector<float> dW(static_cast<size_t>(M * C));
      gemm(true, false, M, c, n, 1.0f, dz.data(), M, x, c, 0.0f, dW.data(), c);
      float* db = r.GradB();
      for (int m = 0; m < M; ++m) {
        float* g = r.NodeGradW(m);
        for (int64_t i = 0; i < C; ++i) g[i] += dW[static_cast<size_t>(m * C + i)];
        for (int64_t t = 0; t < N; ++t) db[m] += dz[static_cast<size_t>(t * M + m)];
      }
    }
    gemm(false, false, n, c, M, 1.0f, dz.data(), M, r.W, c, 1.0f, dx, c);
    return AuxLossOf(rt, aux, totals);
  }
  // Hard: only the visited nodes have a gradient. Group the N·d visits by node (counting
  // sort), then each visited node's row of dW sums its visits' dz·x in token order.
  if (r.training()) {
    std::vector<int64_t> start(static_cast<size_t>(M) + 1, 0);
    for (int32_t node : path) ++start[static_cast<size_t>(node) + 1];
    for (int m = 0; m < M; ++m) start[static_cast<size_t>(m) + 1] += start[static_cast<size_t>(m)];
    std::vector<int64_t> next(start.begin(), start.end() - 1), by_node(path.size());
    for (size_t v = 0; v < path.size(); ++v) by_node[static_cast<size_t>(next[path[v]]++)] = v;
    std::vector<int> nodes;
    std::vector<float*> grads;
    for (int m = 0; m < M; ++m) {
      if (start[static_cast<size_t>(m) + 1] == start[static_cast<size_t>(m)]) continue;
      nodes.push_back(m);
      grads.push_back(r.NodeGradW(m));
    }
    float* db = r.GradB();
#pragma omp parallel for schedule(dynamic, 1) if (N * d >= 64)
    for (size_t i = 0; i < nodes.size(); ++i) {
      const int m = nodes[i];
      float* g = grads[i];
      double bsum = 0;
      for (int64_t e = start[static_cast<size_t>(m)]; e < start[static_cast<size_t>(m) + 1]; ++e) {
        const int64_t v = by_node[static_cast<size_t>(e)];
        const float w = dzp[static_cast<size_t>(v)];
        const float* xn = x + v / d * C;
        for (int64_t k = 0; k < C; ++k) g[k] += w * xn[k];
        bsum += w;
      }
      db[m] += static_cast<float>(bsum);
    }
  }
#pragma omp parallel for schedule(static) if (N >= 16)
  for (int64_t n = 0; n < N; ++n) {
    float* dxn = dx + n * C;
    for (int k = 0; k < d; ++k) {
      const float w = dzp[static_cast<size_t>(n * d + k)];
      const float* wr = r.W + static_cast<int64_t>(path[static_cast<size_t>(n * d + k)]) * C;
      for (int64_t i = 0; i < C; ++i) dxn[i] += w * wr[i];
    }
  }
  return AuxLossOf(rt, aux, totals);
}

void TreeLoraForwardHard(GemmFn gemm, const LoraWeights& l, float s, const float* x, int64_t /*N*/,
                         const Routing& rt, float* u, float* y, TreeScratch& scratch) {
  const int r = l.r, in = static_cast<int>(l.in), out = static_cast<int>(l.out);
  scratch.threads.resize(static_cast<size_t>(omp_get_max_threads()));
  // Leaves in parallel: a token belongs to one leaf, so every write below is to rows (or leaf
  // tensors) that no other leaf touches.
#pragma omp parallel for schedule(dynamic, 1) if (l.leaves > 1 && rt.N >= 32)
  for (int j = 0; j < l.leaves; ++j) {
    const int64_t begin = rt.offsets[static_cast<size_t>(j)];
    const int64_t nj = rt.offsets[static_cast<size_t>(j) + 1] - begin;
    if (nj == 0) continue;
    TreeScratch::Buffers& sc = scratch.threads[static_cast<size_t>(omp_get_thread_num())];
    Grow(sc.xg, nj * in);
    Grow(sc.yg, nj * out);
    Grow(sc.ug, nj * r);
    const int32_t* rows = &rt.order[static_cast<size_t>(begin)];
    for (int64_t t = 0; t < nj; ++t) {
      std::memcpy(&sc.xg[static_cast<size_t>(t * in)], x + rows[t] * l.in, sizeof(float) * in);
    }
    // U_j (nj, r) = X_j · A_jᵀ
    gemm(false, true, static_cast<int>(nj), r, in, 1.0f, sc.xg.data(), in, l.LeafA(j), in, 0.0f,
         sc.ug.data(), r);
    for (int64_t t = 0; t < nj; ++t) {
      float* ut = &sc.ug[static_cast<size_t>(t * r)];
      std::memcpy(u + rows[t] * r, ut, sizeof(float) * r);
      const float g = rt.gate[static_cast<size_t>(rows[t])];
      for (int k = 0; k < r; ++k) ut[k] *= g;
    }
    // Y_j (nj, out) = s · (g ∘ U_j) · B_jᵀ
    gemm(false, true, static_cast<int>(nj), out, r, s, sc.ug.data(), r, l.LeafB(j), r, 0.0f,
         sc.yg.data(), out);
    for (int64_t t = 0; t < nj; ++t) {
      float* yr = y + rows[t] * l.out;
      const float* src = &sc.yg[static_cast<size_t>(t * out)];
      for (int i = 0; i < out; ++i) yr[i] += src[i];
    }
  }
}

void TreeLoraBackwardHard(GemmFn gemm, const LoraWeights& l, float s, const float* x,
                          const float* u, const float* dy, int64_t /*N: rt.N*/, Routing& rt,
                          float* dx, TreeScratch& scratch) {
  const int r = l.r, in = static_cast<int>(l.in), out = static_cast<int>(l.out);
  scratch.threads.resize(static_cast<size_t>(omp_get_max_threads()));
  // The touched leaves and their gradients (allocated here, serially): the work list.
  // A leaf's first gradient of the step is written (GEMM β = 0), later ones added.
  std::vector<int> used;
  std::vector<float*> dAs, dBs;
  std::vector<float> betaA, betaB;
  for (int j = 0; j < l.leaves; ++j) {
    if (rt.offsets[static_cast<size_t>(j) + 1] == rt.offsets[static_cast<size_t>(j)]) continue;
    used.push_back(j);
    bool fresh_a = false, fresh_b = false;
    dAs.push_back(l.LeafGradA(j, &fresh_a));
    dBs.push_back(l.LeafGradB(j, &fresh_b));
    betaA.push_back(fresh_a ? 0.0f : 1.0f);
    betaB.push_back(fresh_b ? 0.0f : 1.0f);
  }
  const int n_used = static_cast<int>(used.size());
#pragma omp parallel for schedule(dynamic, 1) if (n_used > 1 && rt.N >= 32)
  for (int u_i = 0; u_i < n_used; ++u_i) {
    const int j = used[static_cast<size_t>(u_i)];
    const int64_t begin = rt.offsets[static_cast<size_t>(j)];
    const int64_t nj = rt.offsets[static_cast<size_t>(j) + 1] - begin;
    TreeScratch::Buffers& sc = scratch.threads[static_cast<size_t>(omp_get_thread_num())];
    Grow(sc.xg, nj * in);
    Grow(sc.yg, nj * out);
    Grow(sc.ug, nj * r);
    Grow(sc.vg, nj * r);
    const int32_t* rows = &rt.order[static_cast<size_t>(begin)];
    const int n = static_cast<int>(nj);
    for (int64_t t = 0; t < nj; ++t) {
      std::memcpy(&sc.yg[static_cast<size_t>(t * out)], dy + rows[t] * l.out, sizeof(float) * out);
      const float g = rt.gate[static_cast<size_t>(rows[t])];
      for (int k = 0; k < r; ++k) sc.ug[static_cast<size_t>(t * r + k)] = g * u[rows[t] * r + k];
    }
    float* dA = dAs[static_cast<size_t>(u_i)];
    float* dB = dBs[static_cast<size_t>(u_i)];
    // dB_j (out, r) += s · dY_jᵀ · (g ∘ U_j)
    gemm(true, false, out, r, n, s, sc.yg.data(), out, sc.ug.data(), r,
         betaB[static_cast<size_t>(u_i)], dB, r);
    // dU'_j (nj, r) = s · dY_j · B_j
    gemm(false, false, n, r, out, s, sc.yg.data(), out, l.LeafB(j), r, 0.0f, sc.vg.data(), r);
    for (int64_t t = 0; t < nj; ++t) {  // dgate += dU'·U; dU = g ∘ dU'
      const float g = rt.gate[static_cast<size_t>(rows[t])];
      float* v = &sc.vg[static_cast<size_t>(t * r)];
      double dg = 0;
      for (int k = 0; k < r; ++k) {
        dg += static_cast<double>(v[k]) * u[rows[t] * r + k];
        v[k] *= g;
      }
      rt.dgate[static_cast<size_t>(rows[t])] += static_cast<float>(dg);
      std::memcpy(&sc.xg[static_cast<size_t>(t * in)], x + rows[t] * l.in, sizeof(float) * in);
    }
    // dA_j (r, in) += dU_jᵀ · X_j
    gemm(true, false, r, in, n, 1.0f, sc.vg.data(), r, sc.xg.data(), in,
         betaA[static_cast<size_t>(u_i)], dA, in);
    // dX_j (nj, in) = dU_j · A_j, scattered into dx
    gemm(false, false, n, in, r, 1.0f, sc.vg.data(), r, l.LeafA(j), in, 0.0f, sc.xg.data(), in);
    for (int64_t t = 0; t < nj; ++t) {
      float* d = dx + rows[t] * l.in;
      const float* src = &sc.xg[static_cast<size_t>(t * in)];
      for (int i = 0; i < in; ++i) d[i] += src[i];
    }
  }
}

namespace {

// U' (N, R) = U with each token's leaf-j chunk of r columns scaled by its path probability p_j.
void ScaleByPathProbs(const Routing& rt, const float* u, int64_t N, int L, int r, float* scaled) {
  const int64_t R = static_cast<int64_t>(L) * r;
  for (int64_t t = 0; t < N; ++t)
    for (int j = 0; j < L; ++j) {
      const float p = rt.probs[static_cast<size_t>(t * L + j)];
      for (int k = 0; k < r; ++k) scaled[t * R + j * r + k] = p * u[t * R + j * r + k];
    }
}

}  // namespace

void TreeLoraForwardSoft(GemmFn gemm, const LoraWeights& l, float s, const float* x, int64_t N,
                         const Routing& rt, float* u, float* y, TreeScratch& sc) {
  const int r = l.r, R = l.R(), L = l.leaves, in = static_cast<int>(l.in),
            out = static_cast<int>(l.out);
  const int n = static_cast<int>(N);
  // U (N, R) = x · Aᵀ (every leaf), saved; U' = U with chunk j scaled by p_j
  gemm(false, true, n, R, in, 1.0f, x, in, l.A, in, 0.0f, u, R);
  Grow(sc.ug, N * R);
  ScaleByPathProbs(rt, u, N, L, r, sc.ug.data());
  for (int j = 0; j < L; ++j) {  // y += s · U'_j · B_jᵀ
    gemm(false, true, n, out, r, s, sc.ug.data() + j * r, R, l.LeafB(j), r, 1.0f, y, out);
  }
}

void TreeLoraBackwardSoft(GemmFn gemm, const LoraWeights& l, float s, const float* x,
                          const float* u, const float* dy, int64_t N, Routing& rt, float* dx,
                          TreeScratch& sc) {
  const int r = l.r, R = l.R(), L = l.leaves, in = static_cast<int>(l.in),
            out = static_cast<int>(l.out);
  const int n = static_cast<int>(N);
  Grow(sc.ug, N * R);
  Grow(sc.vg, N * R);
  ScaleByPathProbs(rt, u, N, L, r, sc.ug.data());
  for (int j = 0; j < L; ++j) {  // dB_j (out, r) += s · dyᵀ · U'_j ;  dU'_j (N, r) = s · dy · B_j
    gemm(true, false, out, r, n, s, dy, out, sc.ug.data() + j * r, R, 1.0f, l.LeafGradB(j), r);
    gemm(false, false, n, r, out, s, dy, out, l.LeafB(j), r, 0.0f, sc.vg.data() + j * r, R);
  }
  for (int64_t t = 0; t < N; ++t)
    for (int j = 0; j < L; ++j) {  // dp_j += dU'_j · U_j ; dU_j = p_j · dU'_j
      const float p = rt.probs[static_cast<size_t>(t * L + j)];
      double dp = 0;
      for (int k = 0; k < r; ++k) {
        float& v = sc.vg[static_cast<size_t>(t * R + j * r + k)];
        dp += static_cast<double>(v) * u[t * R + j * r + k];
        v *= p;
      }
      rt.dprobs[static_cast<size_t>(t * L + j)] += static_cast<float>(dp);
    }
  for (int j = 0; j < L; ++j) {  // dA_j (r, in) += dU_jᵀ · x
    gemm(true, false, r, in, n, 1.0f, sc.vg.data() + j * r, R, x, in, 1.0f, l.LeafGradA(j), in);
  }
  // dx (N, in) += dU · A
  gemm(false, false, n, in, R, 1.0f, sc.vg.data(), R, l.A, in, 1.0f, dx, in);
}

void TreeLoraForwardHardReference(const LoraWeights& l, float s, const float* x, int64_t N,
                                  const Routing& rt, float* y) {
  for (int64_t t = 0; t < N; ++t) {
    const int j = rt.leaf[static_cast<size_t>(t)];
    const double g = rt.gate[static_cast<size_t>(t)];
    std::vector<double> u(static_cast<size_t>(l.r), 0.0);
    for (int k = 0; k < l.r; ++k)
      for (int64_t i = 0; i < l.in; ++i)
        u[static_cast<size_t>(k)] +=
            static_cast<double>(l.A[(j * l.r + k) * l.in + i]) * x[t * l.in + i];
    for (int64_t o = 0; o < l.out; ++o) {
      double acc = 0;
      for (int k = 0; k < l.r; ++k)
        acc += static_cast<double>(l.LeafB(j)[o * l.r + k]) * u[static_cast<size_t>(k)];
      y[t * l.out + o] += static_cast<float>(s * g * acc);
    }
  }
}

void LoraForward(GemmFn gemm, const LoraWeights& l, float s, const float* x_in, int64_t N, float* u,
                 float* y) {
  const int n = static_cast<int>(N), in = static_cast<int>(l.in), out = static_cast<int>(l.out);
  // u (N, r) = x · Aᵀ ;  y (N, out) += s · u · Bᵀ
  gemm(false, true, n, l.r, in, 1.0f, x_in, in, l.A, in, 0.0f, u, l.r);
  gemm(false, true, n, out, l.r, s, u, l.r, l.B, l.r, 1.0f, y, out);
}

void LoraBackward(GemmFn gemm, const LoraWeights& l, float s, const float* x_in, const float* u,
                  const float* dy, int64_t N, float* du) {
  const int n = static_cast<int>(N), in = static_cast<int>(l.in), out = static_cast<int>(l.out);
  // dB (out, r) += s · dyᵀ · u
  gemm(true, false, out, l.r, n, s, dy, out, u, l.r, 1.0f, l.LeafGradB(0), l.r);
  // du (N, r) = s · dy · B
  gemm(false, false, n, l.r, out, s, dy, out, l.B, l.r, 0.0f, du, l.r);
  // dA (r, in) += duᵀ · x
  gemm(true, false, l.r, in, n, 1.0f, du, l.r, x_in, in, 1.0f, l.LeafGradA(0), in);
}

void LoraBackwardX(GemmFn gemm, const LoraWeights& l, const float* du, int64_t N, float* dx) {
  const int n = static_cast<int>(N), in = static_cast<int>(l.in);
  gemm(false, false, n, in, l.r, 1.0f, du, l.r, l.A, in, 1.0f, dx, in);
}

void LoraMerge(const LoraWeights& l, float s, float* W) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < l.out; ++i) {
    for (int k = 0; k < l.r; ++k) {
      const float b = s * l.B[i * l.r + k];
      const float* a = l.A + k * l.in;
      for (int64_t j = 0; j < l.in; ++j) W[i * l.in + j] += b * a[j];
    }
  }
}

}  // namespace tinylora
