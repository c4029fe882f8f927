// Training forward and backward of the Llama model over B sequences of T tokens (positions
// 0..T-1 each, no KV cache), in llm.c's style: activations in one planned arena, each layer's
// forward and backward a readable sequence of op calls.
// Legend: B = sequences, T = tokens per sequence, N = B·T, C = hidden, F = intermediate,
//         V = vocab, NH / KVH = query / key-value heads, HD = head dim, Q = NH·HD, KV = KVH·HD.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <vector>

#include "adapters/lora.h"
#include "adapters/tree.h"
#include "model/block.h"
#include "model/weights.h"
#include "ops/ops.h"

namespace tinylora {

// Gradient buffers mirroring ModelWeights (pretraining); lm_head == embed when tied.
struct LayerGrads {
  float *attn_norm, *wq, *wk, *wv, *wo, *mlp_norm, *w_gate, *w_up, *w_down;
};
struct ModelGrads {
  float* embed = nullptr;
  std::vector<LayerGrads> layers;
  float* final_norm = nullptr;
  float* lm_head = nullptr;
};

// Error (exit 2) unless T tokens fit the model's context.
void CheckSeqLen(int T, const LlamaConfig& c);

class TrainModel : private BlockBackwardSteps {
 public:
  // `grads` null: the base is frozen (no weight gradients). `adapter` null: no LoRA.
  // `checkpoint`: keep only each layer's input and recompute the layer in backward.
  // `soft_capable`: a tree adapter may be trained with soft routing (its activations then
  // hold every leaf's A·x).
  // Every op runs on `backend` (its buffers hold the activations).
  TrainModel(const ModelWeights& w, const ModelGrads* grads, Adapter* adapter, int B, int T,
             bool checkpoint, bool soft_capable = false, const Backend& backend = CpuBackend());

  // Tree adapters: soft or hard routing from now on, and the auxiliary losses' weights.
  void SetRouting(bool soft, const AuxLoss& aux);
  // Data-parallel training: this model's B rows are rows [row, row + B) of the batch one
  // process would hold, so the dropout masks are that process's (0: one process).
  void SetFirstRow(int64_t row) { first_row_ = row; }
  // Called with each block's index once its backward is done (its gradients final for this
  // micro-batch), last block first; empty: nothing is called.
  void SetBlockDone(std::function<void(int layer)> fn) { block_done_ = std::move(fn); }
  // Data-parallel training: how the routers' statistics are summed over the ranks in backward
  // (AuxLoss::sum), so the auxiliary losses are the global batch's. Empty: one process.
  void SetStatsSum(std::function<void(double* values, int64_t n)> sum) { stats_sum_ = sum; }
  // The auxiliary routing loss of the last ForwardBackward (scaled as it entered the gradient).
  double last_aux_loss() const { return aux_loss_; }
  // The routing of block l in the last forward (tree adapters).
  const Routing& routing(int l) const { return routing_[static_cast<size_t>(l)]; }

  // Forward + backward of one micro-batch: inputs, targets (B, T) token ids, mask (B, T) 1 =
  // target carries loss. Gradients are added (scaled by grad_scale) to the existing ones.
  // Returns Σ mask·CE over the micro-batch. dropout_seed varies the LoRA dropout per step.
  // `aux_weight` multiplies the routing losses (1 / grad-accum steps).
  double ForwardBackward(const int32_t* inputs, const int32_t* targets, const uint8_t* mask,
                         float grad_scale, uint64_t dropout_seed, double aux_weight = 1.0);
  // Forward only (no dropout): Σ mask·CE. Rows with fewer than T real tokens pass mask 0.
  double ForwardLoss(const int32_t* inputs, const int32_t* targets, const uint8_t* mask);

  int64_t ActivationBytes() const { return arena_.size() * static_cast<int64_t>(sizeof(float)); }
  int B() const { return B_; }
  int T() const { return T_; }

 private:
  struct LayerActs {
    BlockActs block;                    // proj is the shared tmp_c_
    float* probs;                       // (B, NH, T, T) attention probabilities
    std::array<float*, kNumModules> u;  // (N, r) LoRA A·x per adapted module, else null
  };

  // dropout_seed 0: no dropout (evaluation); the backward reuses the forward's seed.
  void Forward(const int32_t* inputs, uint64_t dropout_seed);
  void LayerForward(int l, LayerActs& a, float* x_out);
  // The block's steps in training (see model/block.h); they act on cur_ under seed_.
  void Route(int l, const float* xn) override;
  // y (N, out) = x · Wᵀ (+ LoRA). Saves LoRA's u into the current layer's u when adapted.
  void Project(int l, Module m, const float* x, float* y) override;
  void Attend(int l, const BlockActs& a) override;
  // dx (N, in) (+)= gradient through the projection; weight/LoRA gradients added.
  void ProjectBackward(int l, Module m, const float* x, const float* dy, float* dx,
                       bool accumulate) override;
  void AttendBackward(int l, const BlockActs& a, const float* datt, float* dq, float* dk,
                      float* dv) override;
  void RouteBackward(int l, const float* xn, float* dxn) override;
  float* WeightGrad(int l, Module m) const;
  // x_d (N, in) = dropout(x) for (layer, module, seed_); false when dropout is off (p = 0 or
  // seed_ = 0).
  bool Dropout(int l, Module m, const float* x, int64_t in, float* out) const;
  uint64_t DropoutKey(int l, Module m) const;

  const ModelWeights& w_;
  const Ops& ops_;
  const ModelGrads* grads_;
  Adapter* adapter_;
  const LlamaConfig& c_;
  int B_, T_;
  int64_t N_;
  bool checkpoint_;
  bool soft_capable_;
  bool soft_ = false;
  GateKind gate_ = GateKind::kPath;
  AuxLoss aux_;
  std::function<void(double*, int64_t)> stats_sum_;
  int64_t first_row_ = 0;
  std::function<void(int)> block_done_;
  double aux_weight_ = 1.0, aux_loss_ = 0.0;
  std::vector<Routing> routing_;  // (L) when the adapter is a tree
  TreeScratch tree_scratch_;
  RopeTable rope_;
  BlockShape shape_;
  std::vector<int32_t> pos_;  // (N) position of each token: n % T
  LayerActs* cur_ = nullptr;  // the layer the block's steps act on
  uint64_t seed_ = 0;         // this micro-batch's dropout seed (0: none)

  Buffer arena_;
  std::vector<LayerActs> acts_;  // (L) or, when checkpointing, x_in per layer + one shared set
  float *x_final_, *xnf_, *rstdf_, *logits_;  // (N, C), (N, C), (N), (N, V)
  float *dx_a_, *dx_b_, *tmp_c_;              // (N, C) ×3
  BlockGradScratch d_;                        // the block backward's scratch
  float *du_, *xdrop_, *dxdrop_;              // (N, r), (N, max in) ×2
  float* scratch_;                            // (threads, T, T)
  const int32_t* targets_ = nullptr;
  const uint8_t* mask_ = nullptr;
};

}  // namespace tinylora
