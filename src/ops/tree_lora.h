// LoRA leaf banks and their routers, the training-side kernels (DESIGN.md §2). A plain LoRA
// is a one-leaf bank. Tree-routed LoRA: a block's router sends each token down a binary tree
// of depth d to one of 2^d stacked leaves. Hard routing runs grouped — tokens counting-sorted
// by leaf, each leaf's rows gathered, two small GEMMs, scatter-add — so a token costs one leaf
// whatever 2^d; soft routing mixes every leaf by its path probability. Every GEMM goes through
// the `gemm` the caller passes (its backend's table entry).
// Legend: N = tokens, C = hidden (router input), L = 2^d leaves, M = L − 1 nodes, r = leaf
// rank, R = L·r, in / out = the projection's sizes.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "ops/gemm.h"
#include "ops/segment_grads.h"

namespace tinylora {

// One adapted projection's tensors, views into the adapter's parameters. A tree adapter
// stacks its 2^d leaves: leaf j owns rows [j·r, (j+1)·r) of A and, in memory, the j-th
// (out, r) block of B. Files hold B in PEFT's layout (out, leaves·r), where a leaf's columns
// stride every row; memory keeps each leaf contiguous, so a leaf is two contiguous blocks and
// the only unit of gradient and optimizer state.
struct LoraWeights {
  int64_t in = 0, out = 0;
  int r = 0;                      // rank of one leaf
  int leaves = 1;                 // 2^d
  float* A = nullptr;             // (leaves·r, in)
  float* B = nullptr;             // (leaves, out, r)
  SegmentGrads* grads = nullptr;  // the adapter's parameters when training, else null
  int a_index = -1, b_index = -1;
  int R() const { return leaves * r; }
  const float* LeafA(int j) const { return A + static_cast<int64_t>(j) * r * in; }
  const float* LeafB(int j) const { return B + static_cast<int64_t>(j) * out * r; }
  // Leaf j's gradients, (r, in) and (out, r), zeroed on first use in a step (with `fresh`: see
  // SegmentGrads). Not thread-safe.
  float* LeafGradA(int j, bool* fresh = nullptr) const {
    return grads->SegmentGrad(a_index, j, fresh);
  }
  float* LeafGradB(int j, bool* fresh = nullptr) const {
    return grads->SegmentGrad(b_index, j, fresh);
  }
};

// A block's router (tree_depth > 0): node logits z = W x̂ + b over the heap-ordered nodes.
// Each node's row of W is its own gradient segment, so hard routing's backward touches only
// the d nodes on each token's path.
struct RouterWeights {
  int depth = 0;
  int64_t hidden = 0;
  float* W = nullptr;             // (2^d − 1, hidden)
  float* b = nullptr;             // (2^d − 1)
  SegmentGrads* grads = nullptr;  // when training, else null
  int w_index = -1, b_index = -1;
  int nodes() const { return (1 << depth) - 1; }
  float* NodeGradW(int node) const { return grads->SegmentGrad(w_index, node); }
  float* GradB() const { return grads->TensorGrad(b_index); }
  bool training() const { return grads != nullptr && grads->with_grads(); }
};

constexpr int kMaxTreeDepth = 12;

enum class GateKind { kPath, kUnit };

// y (N, out) += s · u · Bᵀ with u (N, r) = x_in · Aᵀ written to `u`. x_in is the (dropped-out)
// input of the projection.
void LoraForward(GemmFn gemm, const LoraWeights& l, float s, const float* x_in, int64_t N, float* u,
                 float* y);
// Given dy (N, out): dB += s·dyᵀ·u; du = s·dy·B (N, r, into `du`); dA += duᵀ·x_in.
void LoraBackward(GemmFn gemm, const LoraWeights& l, float s, const float* x_in, const float* u,
                  const float* dy, int64_t N, float* du);
// dx (N, in) += du · A: the gradient reaching the projection's (dropped-out) input.
void LoraBackwardX(GemmFn gemm, const LoraWeights& l, const float* du, int64_t N, float* dx);
// W (out, in) += s · B · A of a plain LoRA (merge), each row summed over k in order.
void LoraMerge(const LoraWeights& l, float s, float* W);

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
void RouteSoft(GemmFn gemm, const RouterWeights& r, const float* x, int64_t N, Routing* out);

// Weights of the auxiliary losses; `scale` multiplies both (1 / blocks / grad-accum steps).
struct AuxLoss {
  double hardening = 0;  // h: mean binary entropy of the routing decisions
  double balance = 0;    // λ: Switch-style balance over each node's two children
  double scale = 1;
  // Data-parallel training: sums values (n) in place over the ranks, so that the losses'
  // means and each node's visit fractions are those of the global batch (null: one process).
  const std::function<void(double* values, int64_t n)>* sum = nullptr;
};
// The router's backward: turns the projections' dgate / dprobs and the auxiliary losses into
// dW, db (added) and dx (N, C) (added). Returns the auxiliary loss (already scaled).
double RouterBackward(GemmFn gemm, const RouterWeights& r, const float* x, const Routing& rt,
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
void TreeLoraForwardHard(GemmFn gemm, const LoraWeights& l, float s, const float* x, int64_t N,
                         const Routing& rt, float* u, float* y, TreeScratch& scratch);
// Its backward: dA, dB of the touched leaves, rt.dgate, dx (N, in) += .
void TreeLoraBackwardHard(GemmFn gemm, const LoraWeights& l, float s, const float* x,
                          const float* u, const float* dy, int64_t N, Routing& rt, float* dx,
                          TreeScratch& scratch);
// Soft: y += s · Σ_j p_j B_j (A_j x); u (N, R) saves A x (every leaf).
void TreeLoraForwardSoft(GemmFn gemm, const LoraWeights& l, float s, const float* x, int64_t N,
                         const Routing& rt, float* u, float* y, TreeScratch& scratch);
void TreeLoraBackwardSoft(GemmFn gemm, const LoraWeights& l, float s, const float* x,
                          const float* u, const float* dy, int64_t N, Routing& rt, float* dx,
                          TreeScratch& scratch);

// Plain per-token reference of the hard forward (no grouping). For tests.
void TreeLoraForwardHardReference(const LoraWeights& l, float s, const float* x, int64_t N,
                                  const Routing& rt, float* y);

}  // namespace tinylora
