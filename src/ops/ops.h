// Element-wise and per-row ops of the Llama forward. Legend:
//   T = tokens in the batch, C = hidden size, F = intermediate size,
//   NH / KVH = query / key-value heads, HD = head dim, P = positions in a sequence's cache.
#pragma once

#include <cstdint>
#include <vector>

namespace tinylora {

// out (T, C) = x / rms(x) * w, per row; out may alias x. rstd (T), if given, gets 1 / rms(x).
void RmsNorm(const float* x, const float* w, int64_t T, int64_t C, float eps, float* out,
             float* rstd = nullptr);
// Given dout (T, C): dx (T, C) += the gradient through the norm; dw (C) += Σ_t dout·x·rstd
// (dw may be null for a frozen norm). x and rstd as saved by the forward.
void RmsNormBackward(const float* dout, const float* x, const float* w, const float* rstd,
                     int64_t T, int64_t C, float* dx, float* dw);

// cos/sin of RoPE angles pos * theta^(-2i/HD), i < HD/2, for pos < max_pos; computed in double.
struct RopeTable {
  int head_dim = 0, max_pos = 0;
  std::vector<float> cos, sin;  // (max_pos, HD/2)
  RopeTable(int head_dim, int max_pos, double theta);
};

// Rotates each head of x (T, n_heads*HD) in HF's rotate-half layout: pairs (i, i + HD/2).
void Rope(float* x, const int32_t* pos, int64_t T, int n_heads, const RopeTable& table);
// The gradient through Rope: the inverse rotation applied to dx in place.
void RopeBackward(float* dx, const int32_t* pos, int64_t T, int n_heads, const RopeTable& table);

// out = silu(gate) * up, n values; out may alias gate. Highway (activations.cc).
void SwiGlu(const float* gate, const float* up, int64_t n, float* out);
void SwiGluReference(const float* gate, const float* up, int64_t n, float* out);
// Given dout (n): dgate = dout·up·silu'(gate), dup = dout·silu(gate) (overwritten, not added).
void SwiGluBackward(const float* dout, const float* gate, const float* up, int64_t n, float* dgate,
                    float* dup);
void SwiGluBackwardReference(const float* dout, const float* gate, const float* up, int64_t n,
                             float* dgate, float* dup);

// In-place softmax of n values; max subtracted first; returns log Σ exp(x). Highway.
float Softmax(float* x, int64_t n);
void SoftmaxReference(float* x, int64_t n);

// Causal attention of a run of n query tokens of one sequence at positions p0..p0+n-1, over
// that sequence's cached keys/values at positions 0..p0+n-1.
//   q   (n, NH*HD), row stride ldq           out (n, NH*HD), row stride ldo
//   k,v (p0+n, KVH*HD), row stride ldkv      query head h uses kv head h / (NH/KVH)
// `scratch` holds at least n * (p0+n) floats.
struct AttentionShape {
  int n_heads, n_kv_heads, head_dim;
};
void AttentionHead(const AttentionShape& s, int head, const float* q, int64_t ldq, const float* k,
                   const float* v, int64_t ldkv, int64_t n, int64_t p0, float* out, int64_t ldo,
                   float* scratch);

// Decode: one query token at position p0 (a run of n = 1), the NH/KVH query heads of KV group
// `kvh` at once — their rows of q are contiguous, so K_g and V_g are read once for the group,
// not once per head. q, out: the token's (NH·HD) rows; scratch holds (NH/KVH)·(p0+1) floats.
void AttentionGroupDecode(const AttentionShape& s, int kvh, const float* q, const float* k,
                          const float* v, int64_t ldkv, int64_t p0, float* out, float* scratch);

// Batch-invariant: the same attention for the NH/KVH query heads of KV group `kvh`, each query
// and head on its own — scores by a fixed-order dot over HD, softmax over the query's p+1
// keys, output summed over the keys in order — so a query's output does not depend on how its
// sequence was cut into chunks, nor on the batch. scratch holds p0+n floats.
void AttentionGroupInvariant(const AttentionShape& s, int kvh, const float* q, int64_t ldq,
                             const float* k, const float* v, int64_t ldkv, int64_t n, int64_t p0,
                             float* out, int64_t ldo, float* scratch);

// Training: causal self-attention of one sequence of T tokens (positions 0..T-1) for one
// query head, saving the probabilities. q (T, ·) ldq; k, v (T, ·) ldkv; probs (T, T).
void AttentionTrainHead(const AttentionShape& s, int head, const float* q, int64_t ldq,
                        const float* k, const float* v, int64_t ldkv, int64_t T, float* probs,
                        float* out, int64_t ldo);
// Its gradient: given dout_h, writes dq_h and adds into dk_g, dv_g (shared by the heads of a
// group: call the heads of one group from one thread). scratch holds T*T floats.
void AttentionTrainHeadBackward(const AttentionShape& s, int head, const float* q, int64_t ldq,
                                const float* k, const float* v, int64_t ldkv, int64_t T,
                                const float* probs, const float* dout, int64_t ldo, float* dq,
                                float* dk, float* dv, float* scratch);

// Plain reference of the same (per query, per key loops, double accumulation). For tests.
void AttentionReference(const AttentionShape& s, const float* q, int64_t ldq, const float* k,
                        const float* v, int64_t ldkv, int64_t n, int64_t p0, float* out,
                        int64_t ldo);

}  // namespace tinylora
