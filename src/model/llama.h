// The Llama forward pass over a ragged batch of several sequences, with a KV cache.
// Legend: T = tokens in the batch, C = hidden, F = intermediate, V = vocab,
//         NH / KVH = query / key-value heads, HD = head dim, S = sequences, P = cache capacity.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "adapters/lora.h"
#include "adapters/tree.h"
#include "model/block.h"
#include "model/weights.h"
#include "ops/lora_rows.h"
#include "ops/ops.h"

namespace tinylora {

// The tokens of one forward call, as llama.cpp's llama_batch: token i of sequence seq[i] at
// position pos[i], through the adapter in the model's slot adapter[i]. A sequence's tokens are
// consecutive in the batch with consecutive positions and one adapter slot, the first at most
// its cached length (earlier cache entries are kept, later ones replaced).
struct Batch {
  std::vector<int32_t> tokens, seq, pos, adapter;
  std::vector<uint8_t> want_logits;  // 1: return this token's logits
  void Add(int32_t token, int32_t seq_id, int32_t position, bool logits, int32_t slot = 0) {
    tokens.push_back(token);
    seq.push_back(seq_id);
    pos.push_back(position);
    adapter.push_back(slot);
    want_logits.push_back(logits ? 1 : 0);
  }
  int64_t size() const { return static_cast<int64_t>(tokens.size()); }
  void Clear() { tokens.clear(), seq.clear(), pos.clear(), adapter.clear(), want_logits.clear(); }
};

// Keys and values of every layer for S sequences of up to P positions, f32.
class KvCache {
 public:
  // In `backend`'s memory (the model that uses it must run on the same backend).
  KvCache(const LlamaConfig& c, int n_seqs, int capacity, const Backend& backend = CpuBackend());
  float* K(int layer, int seq) { return k_.data() + Offset(layer, seq); }  // (P, KVH*HD)
  float* V(int layer, int seq) { return v_.data() + Offset(layer, seq); }  // (P, KVH*HD)
  int n_seqs() const { return n_seqs_; }
  int capacity() const { return capacity_; }
  std::vector<int> length;  // (S) positions cached per sequence

 private:
  size_t Offset(int layer, int seq) const {
    return (static_cast<size_t>(layer) * n_seqs_ + seq) * capacity_ * kv_dim_;
  }
  int n_seqs_, capacity_, kv_dim_;
  Buffer k_, v_;  // (L, S, P, KVH*HD)
};

class LlamaModel : private BlockSteps {
 public:
  // `adapters` is the forest (DESIGN.md §8): slot i holds adapters[i], applied on top of the
  // frozen weights to the tokens whose batch slot is i; a null slot is the base alone. Every
  // adapter must fit `w` (Adapter::Load checks it) and outlive the model. Every op runs on
  // `backend`.
  LlamaModel(const ModelWeights& w, std::vector<const Adapter*> adapters,
             const Backend& backend = CpuBackend());
  // One adapter (or none) in slot 0.
  explicit LlamaModel(const ModelWeights& w, const Adapter* adapter = nullptr)
      : LlamaModel(w, std::vector<const Adapter*>{adapter}) {}
  const LlamaConfig& config() const { return w_.config; }
  const ModelWeights& weights() const { return w_; }
  int slots() const { return static_cast<int>(adapters_.size()); }
  // Puts `adapter` (or null: the base) in `slot`, growing the forest (with base slots) to reach
  // it.
  // Between forwards only: serve's hot load and unload.
  void SetAdapter(int slot, const Adapter* adapter);

  // Per block, the routing of the tokens of sequence `seq` run through a tree adapter since
  // the sequence's last ResetRoutingStats: leaf usage, mean decision entropy, share of decided
  // decisions. Empty when none of its tokens met a tree.
  std::vector<RoutingStats> routing_stats(int seq) const;
  void ResetRoutingStats(int seq);
  // The same over every sequence (for a model whose trees share one depth: eval).
  std::vector<RoutingStats> routing_stats() const;

  // Batch-invariant (the default, for generate and serve): a sequence's logits are bit-identical
  // whatever else is in the batch, the batch's size, and however its prompt is cut into chunks
  // (every product and attention score summed in one fixed order). Off: the faster
  // shape-dependent kernels (sgemm, AMX --bf16), for eval.
  void SetBatchInvariant(bool on) { batch_invariant_ = on; }

  // Runs the batch through the model, updating the cache. logits: (n, V) for the tokens with
  // want_logits, in batch order. Bad token ids, sequences, positions or adapter slots: Error
  // (exit 2).
  void Forward(const Batch& batch, KvCache& cache, std::vector<float>* logits);

 private:
  struct Run {  // consecutive batch tokens [begin, begin+n) of one sequence
    int seq;
    int64_t begin, n, p0;
  };
  struct RoutingTotals {         // one sequence's routing in one block
    std::vector<int64_t> usage;  // (2^d)
    double entropy = 0, decided = 0;
    int64_t decisions = 0;
  };
  static std::vector<RoutingStats> Stats(const std::vector<RoutingTotals>& blocks);
  std::vector<Run> Validate(const Batch& batch, const KvCache& cache) const;
  // The block's steps at inference (see model/block.h), on batch_, cache_ and runs_.
  // Every token of a tree slot descends block l's router: leaf_, gate_ and its sequence's totals.
  void Route(int l, const float* xn) override;
  // y (T, out) = x · Wᵀ of projection m in layer l, plus each row's adapter leaf.
  void Project(int l, Module m, const float* x, float* y) override;
  // k, v into the cache, then each run's queries over its sequence's cache.
  void Attend(int l, const BlockActs& a) override;
  void Product(const Tensor& w, const float* x, int64_t T, float* y) const;  // y = x · Wᵀ

  const ModelWeights& w_;
  const Backend& backend_;
  const Ops& ops_;
  std::vector<const Adapter*> adapters_;  // the forest, by slot
  std::vector<GateKind> gates_;           // each slot's gate
  RopeTable rope_;
  BlockShape shape_;
  bool batch_invariant_ = true;
  const Batch* batch_ = nullptr;  // the forward in progress
  KvCache* cache_ = nullptr;
  const std::vector<Run>* runs_ = nullptr;
  std::vector<AttentionRun> attention_runs_;         // the runs over one layer's cache
  std::vector<std::vector<RoutingTotals>> routing_;  // (sequence id, L), grown on first use
  Buffer acts_;                                      // the forward's activations (see Forward)
  std::vector<float> path_z_;                        // (T, kMaxTreeDepth) the routers' path logits
  std::vector<int32_t> leaf_;       // (T) the current block's leaf per row (0 for a LoRA)
  std::vector<float> gate_;         // (T) its gate
  std::vector<LoraRow> lora_rows_;  // (T) the current projection's leaf per row
};

}  // namespace tinylora
