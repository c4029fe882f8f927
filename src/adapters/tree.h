// Tree-routed LoRA (DESIGN.md §2): a block's router sends each token down a binary tree of
// depth d to one of 2^d stacked LoRA leaves. Hard routing runs grouped — tokens counting-
// sorted by leaf, each leaf's rows gathered, two small GEMMs, scatter-add — so a token costs
// one leaf whatever 2^d; soft routing mixes every leaf by its path probability.
// Legend: N = tokens, C = hidden (router input), L = 2^d leaves, M = L − 1 nodes, r = leaf
// rank, R = L·r, in / out = the projection's sizes.
#pragma once

#include <cstdint>
#include <vector>

#include "adapters/lora.h"

namespace tinylora {

enum class GateKind { kPath, kUnit };
// The gate an adapter config names ("path" or "unit", checked when the adapter is made).
inline GateKind GateOf(const AdapterConfig& c) {
  return c.gate == "unit" ? GateKind::kUnit : GateKind::kPath;
}

// One block's routing of N tokens.
struct Routing {
  int depth = 0;
  int64_t N = 0;
  bool soft = false;
  GateKind gate_kind = GateKind::kPath;
  std::vector<int32_t> leaf;     // (N) the hard leaf: right where z >= 0
  std::vector<float> path_z;     // (N, d) logits of the nodes on the hard path
  std::vector<float> gate;       // (N) hard gate value: p_leaf (path) or 1 (unit)
  std::vector<float> z;          // soft: (N, M) every node's logit
  std::vector<float> probs;      // soft: (N, L) path probabilities
  std::vector<int32_t> order;    // (N) token indices grouped by leaf (stable)
  std::vector<int64_t> offsets;  // (L + 1) group boundaries in `order`
  std::vector<float> dgate;      // (N) dLoss/dgate, accumulated by the projections (hard)
  std::vector<float> dprobs;     // (N, L) dLoss/dp, accumulated by the projections (soft)
};

// One token's hard route: its leaf and gate (p_leaf for the path gate, 1 for unit); the
// logits of the d nodes on its path go to path_z (d).
struct HardRoute {
  int leaf;
  float gate;
};
HardRoute RouteHardRow(const RouterWeights& r, const float* x, GateKind gate, float* path_z);
// Hard routing by conditional descent: d dot products per token (FFF), never all 2^d − 1.
void RouteHard(const RouterWeights& r, const float* x, int64_t N, GateKind gate, Routing* out);
// Soft routing: every node's logit (one GEMM), every leaf's path probability; the hard leaf
// and path are filled too (balance loss, statistics).
void RouteSoft(const Ops& ops, const RouterWeights& r, const float* x, int64_t N, Routing* out);

// Weights of the auxiliary losses; `scale` multiplies both (1 / blocks / grad-accum steps).
struct AuxLoss {
  double hardening = 0;  // h: mean binary entropy of the routing decisions
  double balance = 0;    // λ: Switch-style balance over each node's two children
  double scale = 1;
};
// The router's backward: turns the projections' dgate / dprobs and the auxiliary losses into
// dW, db (added) and dx (N, C) (added). Returns the auxiliary loss (already scaled).
double RouterBackward(const Ops& ops, const RouterWeights& r, const float* x, const Routing& rt,
                      const AuxLoss& aux, float* dx);
// The auxiliary loss alone (forward only), scaled.
double RouterAuxLoss(const Routing& rt, const AuxLoss& aux);

// What a block's routing looks like: leaf usage, mean binary entropy of the decisions on the
// tokens' paths, and the fraction of those decisions with σ within 0.05 of 0 or 1.
struct RoutingStats {
  std::vector<int64_t> usage;  // (L) tokens per leaf
  double entropy = 0;          // mean H(σ(z)) in nats over path decisions
  double decided = 0;          // fraction of path decisions with σ < 0.05 or σ > 0.95
};
RoutingStats ComputeRoutingStats(const Routing& rt);
// One decision's share of those statistics: H(σ(z)) in nats, and whether σ is within 0.05 of
// 0 or 1.
double DecisionEntropy(float z);
bool DecisionDecided(float z);

// Growable gather/scatter buffers of the grouped kernels, one set per thread (leaves run in
// parallel, each with single-threaded GEMMs).
struct TreeScratch {
  struct Buffers {
    std::vector<float> xg, yg, ug, vg;
  };
  std::vector<Buffers> threads;
  std::vector<float> ug, vg;  // soft mode: (N, R)
};

// Hard: y (N, out) += s · g_n · B_{leaf n} (A_{leaf n} x_n); u (N, r) saves A_leaf x.
void TreeLoraForwardHard(const Ops& ops, const LoraWeights& l, float s, const float* x, int64_t N,
                         const Routing& rt, float* u, float* y, TreeScratch& scratch);
// Its backward: dA, dB of the touched leaves, rt.dgate, dx (N, in) += .
void TreeLoraBackwardHard(const Ops& ops, const LoraWeights& l, float s, const float* x,
                          const float* u, const float* dy, int64_t N, Routing& rt, float* dx,
                          TreeScratch& scratch);
// Soft: y += s · Σ_j p_j B_j (A_j x); u (N, R) saves A x (every leaf).
void TreeLoraForwardSoft(const Ops& ops, const LoraWeights& l, float s, const float* x, int64_t N,
                         const Routing& rt, float* u, float* y, TreeScratch& scratch);
void TreeLoraBackwardSoft(const Ops& ops, const LoraWeights& l, float s, const float* x,
                          const float* u, const float* dy, int64_t N, Routing& rt, float* dx,
                          TreeScratch& scratch);

// Plain per-token reference of the hard forward (no grouping). For tests.
void TreeLoraForwardHardReference(const LoraWeights& l, float s, const float* x, int64_t N,
                                  const Routing& rt, float* y);

}  // namespace tinylora
