// One Llama block, forward and backward (DESIGN.md §1), written once for inference and training:
//   x_mid = x + o(attention(rope(q(n1(x))), rope(k(n1(x))), v(n1(x))))
//   x_out = x_mid + down(silu(gate(n2(x_mid))) · up(n2(x_mid)))
// What the two paths do differently sits behind BlockSteps: how a projection applies its
// adapter (a forest's per-row leaves at inference; one adapter with saved activations,
// dropout and gradients in training), how rows are routed, and how attention reads its keys
// (a ragged batch over a KV cache, or B sequences of T tokens saving the probabilities).
// Legend: N = rows, C = hidden, F = intermediate, Q = NH·HD, KV = KVH·HD.
#pragma once

#include <cstdint>

#include "backend/backend.h"
#include "model/weights.h"

namespace tinylora {

// A block's activations. Inference aliases them (x_in = x_mid = x_out, xn1 = xn2, h = gate)
// and needs no rstd; training keeps each one for backward.
struct BlockActs {
  float* x_in;           // (N, C) residual stream entering the block
  float *xn1, *rstd1;    // (N, C), (N) or null
  float *q, *k, *v;      // (N, Q), (N, KV), (N, KV), after RoPE
  float* att;            // (N, Q) attention output, heads concatenated
  float* x_mid;          // (N, C) residual after attention
  float *xn2, *rstd2;    // (N, C), (N) or null
  float *gate, *up, *h;  // (N, F) each; h = silu(gate)·up
  float* proj;           // (N, C) o's and down's output before each residual add
};

// Gradients of a block's backward (overwritten scratch; dx_in gets the block input's gradient).
struct BlockGradScratch {
  float *dxn, *datt, *dq, *dk, *dv;  // (N, C), (N, Q), (N, Q), (N, KV), (N, KV)
  float *dh, *dgate, *dup;           // (N, F) each
};

class BlockSteps {
 public:
  virtual ~BlockSteps() = default;
  // Routes every row of block l from its normed input xn1 (rows without a tree: nothing).
  virtual void Route(int l, const float* xn) = 0;
  // y (N, out) = x · Wᵀ of projection m in block l, plus the adapter.
  virtual void Project(int l, Module m, const float* x, float* y) = 0;
  // a.att from a.q, a.k, a.v (RoPE applied): causal grouped-query attention.
  virtual void Attend(int l, const BlockActs& a) = 0;
};

class BlockBackwardSteps : public BlockSteps {
 public:
  // dx (N, in) = dy · W (added when `accumulate`) plus the adapter's share; the adapter's (and
  // a trainable W's) gradients added. x: the projection's saved input.
  virtual void ProjectBackward(int l, Module m, const float* x, const float* dy, float* dx,
                               bool accumulate) = 0;
  // dq overwritten, dk and dv set, from datt and a's saved attention.
  virtual void AttendBackward(int l, const BlockActs& a, const float* datt, float* dq, float* dk,
                              float* dv) = 0;
  // The routers' share of dxn (gates, probabilities, auxiliary losses), after every projection.
  virtual void RouteBackward(int l, const float* xn, float* dxn) = 0;
};

struct BlockShape {
  int64_t hidden, intermediate;
  int n_heads, n_kv_heads;
  float eps;
  explicit BlockShape(const LlamaConfig& c)
      : hidden(c.hidden),
        intermediate(c.intermediate),
        n_heads(c.n_heads),
        n_kv_heads(c.n_kv_heads),
        eps(static_cast<float>(c.rms_eps)) {}
};

// x_out (N, C) = block l of the model applied to a.x_in, rows at positions pos (N); the
// block's own ops (norms, RoPE, SwiGLU, residual adds) from `ops`, the rest by `steps`.
void BlockForward(const Ops& ops, const BlockShape& s, const LayerWeights& w, int l, int64_t N,
                  const int32_t* pos, const RopeTable& rope, BlockSteps& steps, const BlockActs& a,
                  float* x_out);

// dx_in (N, C) = the gradient at the block's input given dx_out at its output; the norms'
// weight gradients added to dnorm1/dnorm2 when not null. a as saved by BlockForward.
void BlockBackward(const Ops& ops, const BlockShape& s, const LayerWeights& w, int l, int64_t N,
                   const int32_t* pos, const RopeTable& rope, BlockBackwardSteps& steps,
                   const BlockActs& a, const BlockGradScratch& g, float* dnorm1, float* dnorm2,
                   const float* dx_out, float* dx_in);

}  // namespace tinylora
