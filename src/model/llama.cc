#include "model/llama.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "util/error.h"

namespace tinylora {

KvCache::KvCache(const LlamaConfig& c, int n_seqs, int capacity, const Backend& backend)
    : length(static_cast<size_t>(n_seqs), 0),
      n_seqs_(n_seqs),
      capacity_(capacity),
      kv_dim_(c.kv_dim()) {
  const int64_t n = static_cast<int64_t>(c.n_layers) * n_seqs * capacity * kv_dim_;
  k_ = backend.Alloc(n);
  v_ = backend.Alloc(n);
}

LlamaModel::LlamaModel(const ModelWeights& w, std::vector<const Adapter*> adapters,
                       const Backend& backend)
    : w_(w),
      backend_(backend),
      ops_(backend.ops()),
      adapters_(std::move(adapters)),
      rope_(w.config.head_dim, w.config.max_pos, w.config.rope_theta),
      shape_(w.config) {
  if (adapters_.empty()) adapters_.push_back(nullptr);
  for (const Adapter* a : adapters_) gates_.push_back(a ? GateOf(a->config()) : GateKind::kPath);
}

void LlamaModel::SetAdapter(int slot, const Adapter* adapter) {
  if (slot < 0) Fail("adapter slot " + std::to_string(slot) + " is out of range");
  if (slot >= slots()) {
    adapters_.resize(static_cast<size_t>(slot) + 1, nullptr);
    gates_.resize(static_cast<size_t>(slot) + 1, GateKind::kPath);
  }
  adapters_[static_cast<size_t>(slot)] = adapter;
  gates_[static_cast<size_t>(slot)] = adapter ? GateOf(adapter->config()) : GateKind::kPath;
}

std::vector<RoutingStats> LlamaModel::Stats(const std::vector<RoutingTotals>& blocks) {
  std::vector<RoutingStats> out;
  for (const RoutingTotals& t : blocks) {
    RoutingStats s;
    s.usage = t.usage;
    s.entropy = t.decisions > 0 ? t.entropy / static_cast<double>(t.decisions) : 0;
    s.decided = t.decisions > 0 ? t.decided / static_cast<double>(t.decisions) : 0;
    out.push_back(s);
  }
  return out;
}

std::vector<RoutingStats> LlamaModel::routing_stats(int seq) const {
  if (seq < 0 || seq >= static_cast<int>(routing_.size())) return {};
  return Stats(routing_[static_cast<size_t>(seq)]);
}

void LlamaModel::ResetRoutingStats(int seq) {
  if (seq >= 0 && seq < static_cast<int>(routing_.size()))
    routing_[static_cast<size_t>(seq)].clear();
}

std::vector<RoutingStats> LlamaModel::routing_stats() const {
  std::vector<RoutingTotals> sum;
  for (const std::vector<RoutingTotals>& seq : routing_) {
    sum.resize(std::max(sum.size(), seq.size()));
    for (size_t l = 0; l < seq.size(); ++l) {
      RoutingTotals& s = sum[l];
      s.usage.resize(std::max(s.usage.size(), seq[l].usage.size()), 0);
      for (size_t j = 0; j < seq[l].usage.size(); ++j) s.usage[j] += seq[l].usage[j];
      s.entropy += seq[l].entropy;
      s.decided += seq[l].decided;
      s.decisions += seq[l].decisions;
    }
  }
  return Stats(sum);
}

void LlamaModel::Route(int l, const float* xn) {
  const Batch& batch = *batch_;
  const int64_t T = batch.size(), C = w_.config.hidden;
  leaf_.assign(static_cast<size_t>(T), 0);
  gate_.assign(static_cast<size_t>(T), 1.0f);
  if (static_cast<int64_t>(path_z_.size()) < T * kMaxTreeDepth)
    path_z_.resize(static_cast<size_t>(T * kMaxTreeDepth));
    // Each token descends on its own (a token's route depends on that token alone).
#pragma omp parallel for schedule(static) if (T > 16)
  for (int64_t t = 0; t < T; ++t) {
    const Adapter* a = adapters_[static_cast<size_t>(batch.adapter[t])];
    if (a == nullptr || a->depth() == 0) continue;
    const HardRoute h =
        RouteHardRow(*a->Router(l), xn + t * C, gates_[static_cast<size_t>(batch.adapter[t])],
                     &path_z_[t * kMaxTreeDepth]);
    leaf_[static_cast<size_t>(t)] = h.leaf;
    gate_[static_cast<size_t>(t)] = h.gate;
  }
  // Statistics per sequence, in token order.
  for (int64_t t = 0; t < T; ++t) {
    const Adapter* a = adapters_[static_cast<size_t>(batch.adapter[t])];
    if (a == nullptr || a->depth() == 0) continue;
    const size_t seq = static_cast<size_t>(batch.seq[t]);
    if (routing_.size() <= seq) routing_.resize(seq + 1);
    std::vector<RoutingTotals>& blocks = routing_[seq];
    if (blocks.empty()) {
      blocks.resize(static_cast<size_t>(w_.config.n_layers));
      for (RoutingTotals& b : blocks) b.usage.assign(static_cast<size_t>(1) << a->depth(), 0);
    }
    RoutingTotals& tot = blocks[static_cast<size_t>(l)];
    if (tot.usage.size() < (static_cast<size_t>(1) << a->depth()))
      tot.usage.resize(static_cast<size_t>(1) << a->depth(), 0);
    ++tot.usage[static_cast<size_t>(leaf_[static_cast<size_t>(t)])];
    for (int k = 0; k < a->depth(); ++k) {
      const float z = path_z_[static_cast<size_t>(t * kMaxTreeDepth + k)];
      tot.entropy += DecisionEntropy(z);
      tot.decided += DecisionDecided(z) ? 1 : 0;
    }
    tot.decisions += a->depth();
  }
}

void LlamaModel::Product(const Tensor& w, const float* x, int64_t T, float* y) const {
  if (batch_invariant_) {
    ops_.matmul_invariant(w, x, T, y);
  } else {
    ops_.matmul(w, x, T, y);
  }
}

void LlamaModel::Project(int l, Module m, const float* x, float* y) {
  const Batch& batch = *batch_;
  const Tensor& w = w_.layers[static_cast<size_t>(l)].weight(m);
  Product(w, x, batch.size(), y);
  // Each row's leaf of its own adapter (inference always routes hard), then one per-row pass.
  const int64_t T = batch.size();
  lora_rows_.assign(static_cast<size_t>(T), LoraRow{});
  bool any = false;
  for (int64_t t = 0; t < T; ++t) {
    const Adapter* a = adapters_[static_cast<size_t>(batch.adapter[t])];
    const LoraWeights* lw = a ? a->Get(l, m) : nullptr;
    if (lw == nullptr) continue;
    const int j = leaf_[static_cast<size_t>(t)];
    const float s = static_cast<float>(a->config().scale()) * gate_[static_cast<size_t>(t)];
    lora_rows_[static_cast<size_t>(t)] = {lw->LeafA(j), lw->LeafB(j), lw->r, s};
    any = true;
  }
  if (any) ops_.lora_rows(lora_rows_.data(), T, w.cols, w.rows, x, y);
}

void LlamaModel::Attend(int layer, const BlockActs& a) {
  const Batch& batch = *batch_;
  KvCache& cache = *cache_;
  const LlamaConfig& c = w_.config;
  const int64_t T = batch.size(), KV = c.kv_dim();
  for (int64_t t = 0; t < T; ++t) {
    const size_t p = static_cast<size_t>(batch.pos[t]) * KV;
    std::memcpy(cache.K(layer, batch.seq[t]) + p, &a.k[t * KV], sizeof(float) * KV);
    std::memcpy(cache.V(layer, batch.seq[t]) + p, &a.v[t * KV], sizeof(float) * KV);
  }
  for (size_t i = 0; i < runs_->size(); ++i) {
    const Run& r = (*runs_)[i];
    attention_runs_[i] = {r.begin, r.n, r.p0, cache.K(layer, r.seq), cache.V(layer, r.seq)};
  }
  const AttentionShape shape{c.n_heads, c.n_kv_heads, c.head_dim};
  const int64_t n_runs = static_cast<int64_t>(runs_->size());
  if (batch_invariant_) {
    ops_.attention_cached_invariant(shape, attention_runs_.data(), n_runs, a.q, a.att);
  } else {
    ops_.attention_cached(shape, attention_runs_.data(), n_runs, a.q, a.att);
  }
}

std::vector<LlamaModel::Run> LlamaModel::Validate(const Batch& b, const KvCache& cache) const {
  const int64_t T = b.size();
  if (T == 0) Fail("empty batch: nothing to run");
  if (static_cast<int64_t>(b.seq.size()) != T || static_cast<int64_t>(b.pos.size()) != T ||
      static_cast<int64_t>(b.want_logits.size()) != T ||
      static_cast<int64_t>(b.adapter.size()) != T) {
    Fail("batch arrays differ in length");
  }
  std::vector<Run> runs;
  std::vector<uint8_t> seen(static_cast<size_t>(cache.n_seqs()), 0);
  for (int64_t i = 0; i < T; ++i) {
    if (b.tokens[i] < 0 || b.tokens[i] >= w_.config.vocab) {
      Fail("token id " + std::to_string(b.tokens[i]) + " is outside the vocabulary (size " +
           std::to_string(w_.config.vocab) + ")");
    }
    const int s = b.seq[i];
    if (s < 0 || s >= cache.n_seqs()) Fail("sequence " + std::to_string(s) + " has no cache slot");
    if (b.adapter[i] < 0 || b.adapter[i] >= slots()) {
      Fail("adapter slot " + std::to_string(b.adapter[i]) + " is not loaded (the model has " +
           std::to_string(slots()) + ")");
    }
    const int64_t limit = std::min(cache.capacity(), w_.config.max_pos);
    if (b.pos[i] < 0 || b.pos[i] >= limit) {
      Fail("position " + std::to_string(b.pos[i]) + " is past the context length (" +
           std::to_string(limit) + ")");
    }
    if (!runs.empty() && runs.back().seq == s) {
      Run& r = runs.back();
      if (b.pos[i] != r.p0 + r.n)
        Fail("sequence " + std::to_string(s) + " has non-consecutive positions");
      if (b.adapter[i] != b.adapter[r.begin])
        Fail("sequence " + std::to_string(s) + " names two adapter slots in one batch");
      ++r.n;
      continue;
    }
    if (seen[static_cast<size_t>(s)])
      Fail("sequence " + std::to_string(s) + " is split in the batch");
    seen[static_cast<size_t>(s)] = 1;
    if (b.pos[i] > cache.length[static_cast<size_t>(s)]) {
      Fail("sequence " + std::to_string(s) + " starts at position " + std::to_string(b.pos[i]) +
           " but only " + std::to_string(cache.length[static_cast<size_t>(s)]) + " are cached");
    }
    runs.push_back({s, i, 1, b.pos[i]});
  }
  return runs;
}

void LlamaModel::Forward(const Batch& batch, KvCache& cache, std::vector<float>* logits) {
  const std::vector<Run> runs = Validate(batch, cache);
  const LlamaConfig& c = w_.config;
  const int64_t T = batch.size(), C = c.hidden, F = c.intermediate, Q = c.q_dim(), KV = c.kv_dim();
  // The activations, one backend buffer grown to the largest batch seen: x, xn (T, C); q, att
  // (T, Q); k, v (T, KV); h1, h2 (T, max(F, C)): gate and h, then up and the projections' output.
  const int64_t H = std::max(F, C), per_row = 2 * C + 2 * Q + 2 * KV + 2 * H;
  if (acts_.size() < T * per_row) acts_ = backend_.Alloc(T * per_row);
  float* x = acts_.data();
  float *xn = x + T * C, *q = xn + T * C, *att = q + T * Q, *k = att + T * Q, *v = k + T * KV;
  float *h1 = v + T * KV, *h2 = h1 + T * H;
  attention_runs_.resize(runs.size());

  ops_.gather_rows(w_.embed, batch.tokens.data(), T, x);  // x (T, C) = embedding rows

  // The block's activations alias: the residual stream is updated in place.
  const BlockActs a{x, xn, nullptr, q, k, v, att, x, xn, nullptr, h1, h2, h1, h2};
  batch_ = &batch;
  cache_ = &cache;
  runs_ = &runs;
  for (int layer = 0; layer < c.n_layers; ++layer) {
    BlockForward(ops_, shape_, w_.layers[static_cast<size_t>(layer)], layer, T, batch.pos.data(),
                 rope_, *this, a, x);
  }
  batch_ = nullptr, cache_ = nullptr, runs_ = nullptr;
  for (const Run& r : runs) cache.length[static_cast<size_t>(r.seq)] = static_cast<int>(r.p0 + r.n);

  // logits for the requested rows only
  int64_t n_out = 0;
  for (int64_t t = 0; t < T; ++t) {
    if (batch.want_logits[t]) std::memcpy(&xn[n_out++ * C], &x[t * C], sizeof(float) * C);
  }
  logits->resize(static_cast<size_t>(n_out * c.vocab));
  if (n_out == 0) return;
  ops_.rms_norm(xn, w_.final_norm.f32(), n_out, C, static_cast<float>(c.rms_eps), xn, nullptr);
  Product(w_.lm_head, xn, n_out, logits->data());
}

}  // namespace tinylora
