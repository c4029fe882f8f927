#include "train/train_model.h"

#include <omp.h>

#include <algorithm>
#include <cstring>

#include "ops/dropout.h"
#include "ops/loss.h"
#include "ops/matmul.h"
#include "util/error.h"

namespace tinylora {

namespace {

// Carves float buffers out of one allocation: first pass counts, second pass assigns.
class Carver {
 public:
  explicit Carver(std::vector<float>* arena) : arena_(arena) {}
  void Take(float** p, int64_t n) {
    if (p != nullptr) slots_.push_back({p, next_});
    next_ += (n + 15) / 16 * 16;  // 64-byte granules
  }
  void Finish() {
    arena_->assign(static_cast<size_t>(next_), 0.0f);
    for (auto& [p, off] : slots_) *p = arena_->data() + off;
  }

 private:
  std::vector<float>* arena_;
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
                       int T, bool checkpoint, bool soft_capable)
    : w_(w),
      grads_(grads),
      adapter_(adapter),
      c_(w.config),
      B_(B),
      T_(T),
      N_(static_cast<int64_t>(B) * T),
      checkpoint_(checkpoint),
      soft_capable_(soft_capable && adapter != nullptr && adapter->depth() > 0),
      rope_(w.config.head_dim, w.config.max_pos, w.config.rope_theta) {
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

  Carver carve(&arena_);
  acts_.assign(static_cast<size_t>(L), LayerActs{});
  for (int l = 0; l < L; ++l) {
    LayerActs& a = acts_[static_cast<size_t>(l)];
    carve.Take(&a.x_in, N * C);
    if (checkpoint_ && l > 0) continue;  // layers > 0 share layer 0's other buffers
    carve.Take(&a.xn1, N * C);
    carve.Take(&a.rstd1, N);
    carve.Take(&a.q, N * Q);
    carve.Take(&a.k, N * KV);
    carve.Take(&a.v, N * KV);
    carve.Take(&a.probs, static_cast<int64_t>(B) * c_.n_heads * T * T);
    carve.Take(&a.att, N * Q);
    carve.Take(&a.x_mid, N * C);
    carve.Take(&a.xn2, N * C);
    carve.Take(&a.rstd2, N);
    carve.Take(&a.gate, N * F);
    carve.Take(&a.up, N * F);
    carve.Take(&a.h, N * F);
    for (int m = 0; m < kNumModules; ++m) {
      a.u[static_cast<size_t>(m)] = nullptr;
      if (const LoraWeights* lw = adapter_ ? adapter_->Get(l, static_cast<Module>(m)) : nullptr) {
        carve.Take(&a.u[static_cast<size_t>(m)], N * (soft_capable_ ? lw->R() : r));
      }
    }
  }
  carve.Take(&x_final_, N * C);
  carve.Take(&xnf_, N * C);
  carve.Take(&rstdf_, N);
  carve.Take(&logits_, N * c_.vocab);
  carve.Take(&dx_a_, N * C);
  carve.Take(&dx_b_, N * C);
  carve.Take(&dxn_, N * C);
  carve.Take(&dh_, N * F);
  carve.Take(&dgate_, N * F);
  carve.Take(&dup_, N * F);
  carve.Take(&datt_, N * Q);
  carve.Take(&dq_, N * Q);
  carve.Take(&dk_, N * KV);
  carve.Take(&dv_, N * KV);
  carve.Take(&tmp_c_, N * C);
  carve.Take(&du_, N * std::max(r, 1));
  const bool dropout = adapter_ && adapter_->config().dropout > 0;
  carve.Take(&xdrop_, dropout ? N * max_in : 1);
  carve.Take(&dxdrop_, dropout ? N * max_in : 1);
  carve.Take(&scratch_, static_cast<int64_t>(omp_get_max_threads()) * T * T);
  carve.Finish();
  if (checkpoint_) {  // every layer computes into layer 0's buffers
    for (int l = 1; l < L; ++l) {
      float* x_in = acts_[static_cast<size_t>(l)].x_in;
      acts_[static_cast<size_t>(l)] = acts_[0];
      acts_[static_cast<size_t>(l)].x_in = x_in;
    }
  }
}

namespace {
// The weight and gradient of each Module, in Module's order (q, k, v, o, gate, up, down).
constexpr const Tensor LayerWeights::*kModuleWeight[kNumModules] = {
    &LayerWeights::wq,     &LayerWeights::wk,   &LayerWeights::wv,    &LayerWeights::wo,
    &LayerWeights::w_gate, &LayerWeights::w_up, &LayerWeights::w_down};
constexpr float* LayerGrads::*kModuleGrad[kNumModules] = {
    &LayerGrads::wq,     &LayerGrads::wk,   &LayerGrads::wv,    &LayerGrads::wo,
    &LayerGrads::w_gate, &LayerGrads::w_up, &LayerGrads::w_down};
}  // namespace

const Tensor& TrainModel::Weight(int l, Module m) const {
  return w_.layers[static_cast<size_t>(l)].*kModuleWeight[static_cast<int>(m)];
}

float* TrainModel::WeightGrad(int l, Module m) const {
  if (grads_ == nullptr) return nullptr;
  return grads_->layers[static_cast<size_t>(l)].*kModuleGrad[static_cast<int>(m)];
}

bool TrainModel::Dropout(int l, Module m, uint64_t seed, const float* x, int64_t in,
                         float* out) const {
  const double p = adapter_ ? adapter_->config().dropout : 0.0;
  if (p <= 0 || seed == 0) return false;
  DropoutForward(DropoutKey(l, m, seed), p, x, N_ * in, out);
  return true;
}

uint64_t TrainModel::DropoutKey(int l, Module m, uint64_t seed) {
  return Mix(seed ^ Mix(static_cast<uint64_t>(l) * kNumModules + static_cast<uint64_t>(m)));
}

void TrainModel::Linear(int l, Module m, const float* x, float* y, float* u, bool train,
                        uint64_t seed) {
  MatMul(Weight(l, m), x, N_, y);
  const LoraWeights* lw = adapter_ ? adapter_->Get(l, m) : nullptr;
  if (lw == nullptr) return;
  const float* x_in = (train && Dropout(l, m, seed, x, lw->in, xdrop_)) ? xdrop_ : x;
  const float s = static_cast<float>(adapter_->config().scale());
  if (adapter_->depth() == 0) {
    LoraForward(*lw, s, x_in, N_, u, y);
  } else if (soft_) {
    TreeLoraForwardSoft(*lw, s, x_in, N_, routing_[static_cast<size_t>(l)], u, y, tree_scratch_);
  } else {
    TreeLoraForwardHard(*lw, s, x_in, N_, routing_[static_cast<size_t>(l)], u, y, tree_scratch_);
  }
}

void TrainModel::LinearBackward(int l, Module m, const float* x, const float* u, const float* dy,
                                float* dx, bool accumulate, uint64_t seed) {
  const Tensor& w = Weight(l, m);
  MatMulBackwardX(w, dy, N_, dx, accumulate);
  if (float* dw = WeightGrad(l, m)) MatMulBackwardW(dy, x, N_, w.rows, w.cols, dw);
  const LoraWeights* lw = adapter_ ? adapter_->Get(l, m) : nullptr;
  if (lw == nullptr) return;
  const float s = static_cast<float>(adapter_->config().scale());
  const bool dropout = Dropout(l, m, seed, x, lw->in, xdrop_);
  const float* x_in = dropout ? xdrop_ : x;
  // The adapter's share of dx goes straight into dx, or through the dropout mask.
  const int64_t n = N_ * lw->in;
  float* dx_lora = dx;
  if (dropout) {
    std::fill(dxdrop_, dxdrop_ + n, 0.0f);
    dx_lora = dxdrop_;
  }
  if (adapter_->depth() == 0) {
    LoraBackward(*lw, s, x_in, u, dy, N_, du_);
    LoraBackwardX(*lw, du_, N_, dx_lora);
  } else if (soft_) {
    TreeLoraBackwardSoft(*lw, s, x_in, u, dy, N_, routing_[static_cast<size_t>(l)], dx_lora,
                         tree_scratch_);
  } else {
    TreeLoraBackwardHard(*lw, s, x_in, u, dy, N_, routing_[static_cast<size_t>(l)], dx_lora,
                         tree_scratch_);
  }
  if (dropout) {  // dx += mask/(1-p) ∘ dx_lora, the mask regenerated from the same key
    DropoutBackwardAdd(DropoutKey(l, m, seed), adapter_->config().dropout, dxdrop_, n, dx);
  }
}

void TrainModel::LayerForward(int l, LayerActs& a, float* x_out, bool train, uint64_t seed) {
  const LayerWeights& L = w_.layers[static_cast<size_t>(l)];
  const int64_t N = N_, C = c_.hidden, F = c_.intermediate, Q = c_.q_dim(), KV = c_.kv_dim();
  const float eps = static_cast<float>(c_.rms_eps);
  // attention block
  RmsNorm(a.x_in, L.attn_norm.f32(), N, C, eps, a.xn1, a.rstd1);
  if (const RouterWeights* router = adapter_ ? adapter_->Router(l) : nullptr) {
    Routing& rt = routing_[static_cast<size_t>(l)];
    if (soft_) {
      RouteSoft(*router, a.xn1, N, &rt);
    } else {
      RouteHard(*router, a.xn1, N, gate_, &rt);
    }
  }
  Linear(l, Module::kQ, a.xn1, a.q, a.u[0], train, seed);
  Linear(l, Module::kK, a.xn1, a.k, a.u[1], train, seed);
  Linear(l, Module::kV, a.xn1, a.v, a.u[2], train, seed);
  Rope(a.q, pos_.data(), N, c_.n_heads, rope_);
  Rope(a.k, pos_.data(), N, c_.n_kv_heads, rope_);
  const AttentionShape shape{c_.n_heads, c_.n_kv_heads, c_.head_dim};
  const int64_t T = T_, tasks = static_cast<int64_t>(B_) * c_.n_heads;
#pragma omp parallel for schedule(dynamic)
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t b = task / c_.n_heads;
    const int h = static_cast<int>(task % c_.n_heads);
    AttentionTrainHead(shape, h, a.q + b * T * Q, Q, a.k + b * T * KV, a.v + b * T * KV, KV, T,
                       a.probs + task * T * T, a.att + b * T * Q, Q);
  }
  Linear(l, Module::kO, a.att, tmp_c_, a.u[3], train, seed);
  Add(a.x_in, tmp_c_, N * C, a.x_mid);
  // MLP block
  RmsNorm(a.x_mid, L.mlp_norm.f32(), N, C, eps, a.xn2, a.rstd2);
  Linear(l, Module::kGate, a.xn2, a.gate, a.u[4], train, seed);
  Linear(l, Module::kUp, a.xn2, a.up, a.u[5], train, seed);
  SwiGlu(a.gate, a.up, N * F, a.h);
  Linear(l, Module::kDown, a.h, tmp_c_, a.u[6], train, seed);
  Add(a.x_mid, tmp_c_, N * C, x_out);
}

void TrainModel::LayerBackward(int l, LayerActs& a, const float* dx_out, float* dx_in,
                               uint64_t seed) {
  const LayerWeights& L = w_.layers[static_cast<size_t>(l)];
  const LayerGrads* g = grads_ ? &grads_->layers[static_cast<size_t>(l)] : nullptr;
  const int64_t N = N_, C = c_.hidden, F = c_.intermediate, Q = c_.q_dim(), KV = c_.kv_dim();
  // MLP block: x_out = x_mid + down(silu(gate(xn2)) · up(xn2))
  LinearBackward(l, Module::kDown, a.h, a.u[6], dx_out, dh_, false, seed);
  SwiGluBackward(dh_, a.gate, a.up, N * F, dgate_, dup_);
  LinearBackward(l, Module::kGate, a.xn2, a.u[4], dgate_, dxn_, false, seed);
  LinearBackward(l, Module::kUp, a.xn2, a.u[5], dup_, dxn_, true, seed);
  float* dx_mid = dx_in;  // reuse: dx_in becomes dx_mid, then gains the attention path
  std::memcpy(dx_mid, dx_out, sizeof(float) * N * C);
  RmsNormBackward(dxn_, a.x_mid, L.mlp_norm.f32(), a.rstd2, N, C, dx_mid,
                  g ? g->mlp_norm : nullptr);
  // attention block: x_mid = x_in + o(attention(rope(q(xn1)), rope(k(xn1)), v(xn1)))
  LinearBackward(l, Module::kO, a.att, a.u[3], dx_mid, datt_, false, seed);
  std::fill(dk_, dk_ + N * KV, 0.0f);
  std::fill(dv_, dv_ + N * KV, 0.0f);
  const AttentionShape shape{c_.n_heads, c_.n_kv_heads, c_.head_dim};
  const int64_t T = T_, group = c_.n_heads / c_.n_kv_heads;
  const int64_t tasks = static_cast<int64_t>(B_) * c_.n_kv_heads;
#pragma omp parallel for schedule(dynamic)
  for (int64_t task = 0; task < tasks; ++task) {  // one KV group per task: dk, dv race-free
    const int64_t b = task / c_.n_kv_heads;
    const int kvh = static_cast<int>(task % c_.n_kv_heads);
    float* scratch = scratch_ + static_cast<int64_t>(omp_get_thread_num()) * T * T;
    for (int64_t i = 0; i < group; ++i) {
      const int h = static_cast<int>(kvh * group + i);
      AttentionTrainHeadBackward(shape, h, a.q + b * T * Q, Q, a.k + b * T * KV, a.v + b * T * KV,
                                 KV, T, a.probs + (b * c_.n_heads + h) * T * T, datt_ + b * T * Q,
                                 Q, dq_ + b * T * Q, dk_ + b * T * KV, dv_ + b * T * KV, scratch);
    }
  }
  RopeBackward(dq_, pos_.data(), N, c_.n_heads, rope_);
  RopeBackward(dk_, pos_.data(), N, c_.n_kv_heads, rope_);
  LinearBackward(l, Module::kQ, a.xn1, a.u[0], dq_, dxn_, false, seed);
  LinearBackward(l, Module::kK, a.xn1, a.u[1], dk_, dxn_, true, seed);
  LinearBackward(l, Module::kV, a.xn1, a.u[2], dv_, dxn_, true, seed);
  if (const RouterWeights* router = adapter_ ? adapter_->Router(l) : nullptr) {
    // every adapted projection of the block has added its dgate / dprobs by now
    AuxLoss aux = aux_;
    aux.scale = aux_weight_ / c_.n_layers;
    aux_loss_ += RouterBackward(*router, a.xn1, routing_[static_cast<size_t>(l)], aux, dxn_);
  }
  RmsNormBackward(dxn_, a.x_in, L.attn_norm.f32(), a.rstd1, N, C, dx_in,
                  g ? g->attn_norm : nullptr);
}

void TrainModel::Forward(const int32_t* inputs, bool train, uint64_t seed) {
  const int64_t N = N_, C = c_.hidden;
  for (int64_t n = 0; n < N; ++n) {
    const int32_t id = inputs[n];
    if (id < 0 || id >= c_.vocab) {
      Fail("token id " + std::to_string(id) + " is outside the vocabulary (size " +
           std::to_string(c_.vocab) + ")");
    }
  }
  GatherRows(w_.embed, inputs, N, acts_[0].x_in);
  const int L = c_.n_layers;
  for (int l = 0; l < L; ++l) {
    float* x_out = l + 1 < L ? acts_[static_cast<size_t>(l + 1)].x_in : x_final_;
    LayerForward(l, acts_[static_cast<size_t>(l)], x_out, train, seed);
  }
  RmsNorm(x_final_, w_.final_norm.f32(), N, C, static_cast<float>(c_.rms_eps), xnf_, rstdf_);
  MatMul(w_.lm_head, xnf_, N, logits_);
}

double TrainModel::ForwardLoss(const int32_t* inputs, const int32_t* targets, const uint8_t* mask) {
  Forward(inputs, false, 0);
  aux_loss_ = 0;
  for (int l = 0; adapter_ != nullptr && adapter_->depth() > 0 && l < c_.n_layers; ++l) {
    AuxLoss aux = aux_;
    aux.scale = 1.0 / c_.n_layers;
    aux_loss_ += RouterAuxLoss(routing_[static_cast<size_t>(l)], aux);
  }
  return CrossEntropyLoss(logits_, targets, mask, N_, c_.vocab);
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
  Forward(inputs, true, seed);
  const int64_t N = N_, C = c_.hidden, V = c_.vocab;
  const double loss = CrossEntropyForwardBackward(logits_, targets, mask, N, V, grad_scale);
  // logits_ now holds dlogits (N, V)
  MatMulBackwardX(w_.lm_head, logits_, N, dxn_, false);
  if (grads_ != nullptr) MatMulBackwardW(logits_, xnf_, N, V, C, grads_->lm_head);
  std::fill(dx_a_, dx_a_ + N * C, 0.0f);
  RmsNormBackward(dxn_, x_final_, w_.final_norm.f32(), rstdf_, N, C, dx_a_,
                  grads_ ? grads_->final_norm : nullptr);
  float* dx_out = dx_a_;
  float* dx_in = dx_b_;
  for (int l = c_.n_layers - 1; l >= 0; --l) {
    LayerActs& a = acts_[static_cast<size_t>(l)];
    if (checkpoint_) LayerForward(l, a, tmp_c_, true, seed);  // recompute this layer's activations
    LayerBackward(l, a, dx_out, dx_in, seed);
    std::swap(dx_out, dx_in);
  }
  if (grads_ != nullptr) {  // embedding rows, in token order (repeated ids accumulate)
    const int32_t* ids = inputs;
    for (int64_t n = 0; n < N; ++n) {
      float* row = grads_->embed + static_cast<int64_t>(ids[n]) * C;
      for (int64_t i = 0; i < C; ++i) row[i] += dx_out[n * C + i];
    }
  }
  return loss;
}

}  // namespace tinylora
