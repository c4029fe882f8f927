// Causal grouped-query attention: the per-head kernels, the whole-batch ops the backends
// expose (a ragged batch over a KV cache; B training sequences saving the probabilities), and
// their plain references.
// Legend: NH / KVH = query / key-value heads, HD = head dim, Q = NH·HD, KV = KVH·HD.
#pragma once

#include <cstdint>

namespace tinylora {

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

// One run of a ragged batch: the batch's query rows [begin, begin + n), at positions
// p0..p0+n-1 of one sequence, over that sequence's cached k, v (p0 + n, KV).
struct AttentionRun {
  int64_t begin, n, p0;
  const float* k;
  const float* v;
};
// att (T, Q) for every run's rows of q (T, Q). Shape-dependent fast kernels: query blocks
// through sgemm; a one-token run takes its KV group's heads at once.
void AttentionCached(const AttentionShape& s, const AttentionRun* runs, int64_t n_runs,
                     const float* q, float* att);
// The same with every query and head on its own, summed in one fixed order (batch-invariant).
void AttentionCachedInvariant(const AttentionShape& s, const AttentionRun* runs, int64_t n_runs,
                              const float* q, float* att);
void AttentionCachedReference(const AttentionShape& s, const AttentionRun* runs, int64_t n_runs,
                              const float* q, float* att);

// Training: B sequences of T tokens at positions 0..T-1. q (B·T, Q), k, v (B·T, KV),
// att (B·T, Q); probs (B, NH, T, T) saved for the backward.
void AttentionTrain(const AttentionShape& s, int64_t B, int64_t T, const float* q, const float* k,
                    const float* v, float* probs, float* att);
// Given datt: dq (B·T, Q), dk, dv (B·T, KV), all overwritten.
void AttentionTrainBackward(const AttentionShape& s, int64_t B, int64_t T, const float* q,
                            const float* k, const float* v, const float* probs, const float* datt,
                            float* dq, float* dk, float* dv);
// Plain references of both (double sums; the backward recomputes the probabilities).
void AttentionTrainReference(const AttentionShape& s, int64_t B, int64_t T, const float* q,
                             const float* k, const float* v, float* probs, float* att);
void AttentionTrainBackwardReference(const AttentionShape& s, int64_t B, int64_t T, const float* q,
                                     const float* k, const float* v, const float* probs,
                                     const float* datt, float* dq, float* dk, float* dv);

}  // namespace tinylora
