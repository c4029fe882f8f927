#include "train/train_model.h"

#include <algorithm>
#include <cstring>

#include "ops/dropout.h"
#include "util/error.h"

namespace tinylora {

namespace {

// Carves float buffers out of one allocation: first pass counts, second pass assigns.
class Carver {
 public:
  Carver(const Backend& backend, Buffer* arena) : backend_(backend), arena_(arena) {}
  void Take(float** p, int64_t n) {
    if (p != nullptr) slots_.push_back({p, next_});
    next_ += (n + 15) / 16 * 16;  // 64-byte granules
  }
  void Finish() {
    *arena_ = backend_.Alloc(next_);
    for (auto& [p, off] : slots_) *p = arena_->data() + off;
  }

 private:
  const Backend& backend_;
  Buffer* arena_;
  std::vector<std::pair<float**, int64_t>> slots_;
  int64_t next_ = 0;
};

}  // namespace

void CheckSeqLen(int T, const LlamaConfig& c) {
  if (T > c.max_pos) {
    Fail("--seq-len " + std::to_string(T) + " is longer than the model's context (" +
         std::to_string(c.max_pos) + ")");
  }
}

TrainModel::TrainModel(const ModelWeights& w, const ModelGrads* grads, Adapter* adapter, int B,
                       int T, bool checkpoint, bool soft_capable, const Backend& backend)
    : w_(w),
      ops_(backend.ops()),
      grads_(grads),
      adapter_(adapter),
      c_(w.config),
      B_(B),
      T_(T),
      N_(static_cast<int64_t>(B) * T),
      checkpoint_(checkpoint),
      soft_capable_(soft_capable && adapter != nullptr && adapter->depth() > 0),
      rope_(w.config.head_dim, w.config.max_pos, w.config.rope_theta),
      shape_(w.config) {
  CheckSeqLen(T, c_);
  if (adapter_ != nullptr) {
    routing_.resize(static_cast<size_t>(c_.n_layers));
    gate_ = GateOf(adapter_->config());
  }
  pos_.resize(static_cast<size_t>(N_));
  for (int64_t n = 0; n < N_; ++n) pos_[static_cast<size_t>(n)] = static_cast<int32_t>(n % T);
  const int64_t N = N_, C = c_.hidden, F = c_.intermediate, Q = c_.q_dim(), KV = c_.kv_dim();
  const int L = c_.n_layers;
  const int r = adapter_ ? adapter_->config().r : 0;
  int64_t max_in = std::max(C, F);

  Carver carve(backend, &arena_);
  acts_.assign(static_cast<size_t>(L), LayerActs{});
  for (int l = 0; l < L; ++l) {
    LayerActs& la = acts_[static_cast<size_t>(l)];
    BlockActs& a = la.block;
    carve.Take(&a.x_in, N * C);
    if (checkpoint_ && l > 0) continue;  // layers > 0 share layer 0's other buffers
    carve.Take(&a.xn1, N * C);
    carve.Take(&a.rstd1, N);
    carve.Take(&a.q, N * Q);
    carve.Take(&a.k, N * KV);
    carve.Take(&a.v, N * KV);
    carve.Take(&la.probs, static_cast<int64_t>(B) * c_.n_heads * T * T);
    carve.Take(&a.att, N * Q);
    carve.Take(&a.x_mid, N * C);
    carve.Take(&a.xn2, N * C);
    carve.Take(&a.rstd2, N);
    carve.Take(&a.gate, N * F);
    carve.Take(&a.up, N * F);
    carve.Take(&a.h, N * F);
    for (int m = 0; m < kNumModules; ++m) {
      la.u[static_cast<size_t>(m)] = nullptr;
      if (const LoraWeights* lw = adapter_ ? adapter_->Get(l, static_cast<Module>(m)) : nullptr) {
        carve.Take(&la.u[static_cast<size_t>(m)], N * (soft_capable_ ? lw->R() : r));
      }
    }
  }
  carve.Take(&x_final_, N * C);
  carve.Take(&xnf_, N * C);
  carve.Take(&rstdf_, N);
  carve.Take(&logits_, N * c_.vocab);
  carve.Take(&dx_a_, N * C);
  carve.Take(&dx_b_, N * C);
  carve.Take(&d_.dxn, N * C);
  carve.Take(&d_.dh, N * F);
  carve.Take(&d_.dgate, N * F);
  carve.Take(&d_.dup, N * F);
  carve.Take(&d_.datt, N * Q);
  carve.Take(&d_.dq, N * Q);
  carve.Take(&d_.dk, N * KV);
  carve.Take(&d_.dv, N * KV);
  carve.Take(&tmp_c_, N * C);
  carve.Take(&du_, N * std::max(r, 1));
  const bool dropout = adapter_ && adapter_->config().dropout > 0;
  carve.Take(&xdrop_, dropout ? N * max_in : 1);
  carve.Take(&dxdrop_, dropout ? N * max_in : 1);
  carve.Finish();
  for (int l = 0; l < L; ++l) {
    LayerActs& la = acts_[static_cast<size_t>(l)];
    if (checkpoint_ && l > 0) {  // every layer computes into layer 0's buffers
      float* x_in = la.block.x_in;
      la = acts_[0];
      la.block.x_in = x_in;
    }
    la.block.proj = tmp_c_;
  }
}

float* TrainModel::WeightGrad(int l, Module m) const {
  static constexpr float* LayerGrads::*kGrad[kNumModules] = {
      &LayerGrads::wq,     &LayerGrads::wk,   &LayerGrads::wv,    &LayerGrads::wo,
      &LayerGrads::w_gate, &LayerGrads::w_up, &LayerGrads::w_down};
  if (grads_ == nullptr) return nullptr;
  return grads_->layers[static_cast<size_t>(l)].*kGrad[static_cast<int>(m)];
}

bool TrainModel::Dropout(int l, Module m, const float* x, int64_t in, float* out) const {
  const double p = adapter_ ? adapter_->config().dropout : 0.0;
  if (p <= 0 || seed_ == 0) return false;
  ops_.dropout(DropoutKey(l, m), p, x, N_ * in, out, first_row_ * T_ * in);
  return true;
}

uint64_t TrainModel::DropoutKey(int l, Module m) const {
  return Mix(seed_ ^ Mix(static_cast<uint64_t>(l) * kNumModules + static_cast<uint64_t>(m)));
}

void TrainModel::Project(int l, Module m, const float* x, float* y) {
  ops_.matmul(w_.layers[static_cast<size_t>(l)].weight(m), x, N_, y);
  const LoraWeights* lw = adapter_ ? adapter_->Get(l, m) : nullptr;
  if (lw == nullptr) return;
  float* u = cur_->u[static_cast<size_t>(m)];
  const float* x_in = Dropout(l, m, x, lw->in, xdrop_) ? xdrop_ : x;
  const float s = static_cast<float>(adapter_->config().scale());
  if (adapter_->depth() == 0) {
    LoraForward(ops_.gemm, *lw, s, x_in, N_, u, y);
  } else if (soft_) {
    TreeLoraForwardSoft(ops_.gemm, *lw, s, x_in, N_, routing_[static_cast<size_t>(l)], u, y,
                        tree_scratch_);
  } else {
    TreeLoraForwardHard(ops_.gemm, *lw, s, x_in, N_, routing_[static_cast<size_t>(l)], u, y,
                        tree_scratch_);
  }
}

void TrainModel::ProjectBackward(int l, Module m, const float* x, const float* dy, float* dx,
                                 bool accumulate) {
  const Tensor& w = w_.layers[static_cast<size_t>(l)].weight(m);
  ops_.matmul_backward_x(w, dy, N_, dx, accumulate);
  if (float* dw = WeightGrad(l, m)) ops_.matmul_backward_w(dy, x, N_, w.rows, w.cols, dw);
  const LoraWeights* lw = adapter_ ? adapter_->Get(l, m) : nullptr;
  if (lw == nullptr) return;
  const float s = static_cast<float>(adapter_->config().scale());
  const float* u = cur_->u[static_cast<size_t>(m)];
  const bool dropout = Dropout(l, m, x, lw->in, xdrop_);
  const float* x_in = dropout ? xdrop_ : x;
  // The adapter's share of dx goes straight into dx, or through the dropout mask.
  const int64_t n = N_ * lw->in;
  float* dx_lora = dx;
  if (dropout) {
    std::fill(dxdrop_, dxdrop_ + n, 0.0f);
    dx_lora = dxdrop_;
  }
  if (adapter_->depth() == 0) {
    LoraBackward(ops_.gemm, *lw, s, x_in, u, dy, N_, du_);
    LoraBackwardX(ops_.gemm, *lw, du_, N_, dx_lora);
  } else if (soft_) {
    TreeLoraBackwardSoft(ops_.gemm, *lw, s, x_in, u, dy, N_, routing_[static_cast<size_t>(l)],
                         dx_lora, tree_scratch_);
  } else {
    TreeLoraBackwardHard(ops_.gemm, *lw, s, x_in, u, dy, N_, routing_[static_cast<size_t>(l)],
                         dx_lora, tree_scratch_);
  }
  if (dropout) {  // dx += mask/(1-p) ∘ dx_lora, the mask regenerated from the same key
    ops_.dropout_backward_add(DropoutKey(l, m), adapter_->config().dropout, dxdrop_, n, dx,
                              first_row_ * T_ * lw->in);
  }
}

void TrainModel::Route(int l, const float* xn) {
  const RouterWeights* router = adapter_ ? adapter_->Router(l) : nullptr;
  if (router == nullptr) return;
  Routing& rt = routing_[static_cast<size_t>(l)];
  if (soft_) {
    RouteSoft(ops_.gemm, *router, xn, N_, &rt);
  } else {
    RouteHard(*router, xn, N_, gate_, &rt);
  }
}

void TrainModel::Attend(int, const BlockActs& a) {
  const AttentionShape shape{c_.n_heads, c_.n_kv_heads, c_.head_dim};
  ops_.attention_train(shape, B_, T_, a.q, a.k, a.v, cur_->probs, a.att);
}

void TrainModel::AttendBackward(int, const BlockActs& a, const float* datt, float* dq, float* dk,
                                float* dv) {
  const AttentionShape shape{c_.n_heads, c_.n_kv_heads, c_.head_dim};
  ops_.attention_train_backward(shape, B_, T_, a.q, a.k, a.v, cur_->probs, datt, dq, dk, dv);
}

void TrainModel::RouteBackward(int l, const float* xn, float* dxn) {
  const RouterWeights* router = adapter_ ? adapter_->Router(l) : nullptr;
  if (router == nullptr) return;
  // every adapted projection of the block has added its dgate / dprobs by now
  AuxLoss aux = aux_;
  aux.scale = aux_weight_ / c_.n_layers;
  if (stats_sum_) aux.sum = &stats_sum_;
  aux_loss_ += RouterBackward(ops_.gemm, *router, xn, routing_[static_cast<size_t>(l)], aux, dxn);
}

void TrainModel::LayerForward(int l, LayerActs& a, float* x_out) {
  cur_ = &a;
  BlockForward(ops_, shape_, w_.layers[static_cast<size_t>(l)], l, N_, pos_.data(), rope_, *this,
               a.block, x_out);
}

void TrainModel::Forward(const int32_t* inputs, uint64_t seed) {
  const int64_t N = N_, C = c_.hidden;
  for (int64_t n = 0; n < N; ++n) {
    const int32_t id = inputs[n];
    if (id < 0 || id >= c_.vocab) {
      Fail("token id " + std::to_string(id) + " is outside the vocabulary (size " +
           std::to_string(c_.vocab) + ")");
    }
  }
  ops_.gather_rows(w_.embed, inputs, N, acts_[0].block.x_in);
  seed_ = seed;
  const int L = c_.n_layers;
  for (int l = 0; l < L; ++l) {
    float* x_out = l + 1 < L ? acts_[static_cast<size_t>(l + 1)].block.x_in : x_final_;
    LayerForward(l, acts_[static_cast<size_t>(l)], x_out);
  }
  ops_.rms_norm(x_final_, w_.final_norm.f32(), N, C, static_cast<float>(c_.rms_eps), xnf_, rstdf_);
  ops_.matmul(w_.lm_head, xnf_, N, logits_);
}

double TrainModel::ForwardLoss(const int32_t* inputs, const int32_t* targets, const uint8_t* mask) {
  Forward(inputs, 0);
  aux_loss_ = 0;
  for (int l = 0; adapter_ != nullptr && adapter_->depth() > 0 && l < c_.n_layers; ++l) {
    AuxLoss aux = aux_;
    aux.scale = 1.0 / c_.n_layers;
    aux_loss_ += RouterAuxLoss(routing_[static_cast<size_t>(l)], aux);
  }
  return ops_.cross_entropy_loss(logits_, targets, mask, N_, c_.vocab);
}

void TrainModel::SetRouting(bool soft, const AuxLoss& aux) {
  if (soft && !soft_capable_) Fail("soft routing needs a TrainModel built soft-capable");
  soft_ = soft;
  aux_ = aux;
}

double TrainModel::ForwardBackward(const int32_t* inputs, const int32_t* targets,
                                   const uint8_t* mask, float grad_scale, uint64_t seed,
                                   double aux_weight) {
  aux_weight_ = aux_weight;
  aux_loss_ = 0;
  for (int64_t n = 0; n < N_; ++n) {
    if (targets[n] < 0 || targets[n] >= c_.vocab) {
      Fail("target id " + std::to_string(targets[n]) + " is outside the vocabulary");
    }
  }
  Forward(inputs, seed);
  const int64_t N = N_, C = c_.hidden, V = c_.vocab;
  const double loss = ops_.cross_entropy(logits_, targets, mask, N, V, grad_scale);
  // logits_ now holds dlogits (N, V)
  ops_.matmul_backward_x(w_.lm_head, logits_, N, d_.dxn, false);
  if (grads_ != nullptr) ops_.matmul_backward_w(logits_, xnf_, N, V, C, grads_->lm_head);
  std::fill(dx_a_, dx_a_ + N * C, 0.0f);
  ops_.rms_norm_backward(d_.dxn, x_final_, w_.final_norm.f32(), rstdf_, N, C, dx_a_,
                         grads_ ? grads_->final_norm : nullptr);
  float* dx_out = dx_a_;
  float* dx_in = dx_b_;
  for (int l = c_.n_layers - 1; l >= 0; --l) {
    LayerActs& a = acts_[static_cast<size_t>(l)];
    if (checkpoint_) LayerForward(l, a, tmp_c_);  // recompute this layer's activations
    const LayerGrads* g = grads_ ? &grads_->layers[static_cast<size_t>(l)] : nullptr;
    cur_ = &a;
    BlockBackward(ops_, shape_, w_.layers[static_cast<size_t>(l)], l, N, pos_.data(), rope_, *this,
                  a.block, d_, g ? g->attn_norm : nullptr, g ? g->mlp_norm : nullptr, dx_out,
                  dx_in);
    if (block_done_) block_done_(l);
    std::swap(dx_out, dx_in);
  }
  if (grads_ != nullptr) ops_.scatter_add_rows(dx_out, inputs, N, C, grads_->embed);
  return loss;
}

}  // namespace tinylora
