#include "server/engine.h"

#include <algorithm>
#include <cstdio>

#include "cli/common.h"
#include "server/api_error.h"
#include "util/error.h"

namespace tinylora {
namespace {

// The length of the longest suffix of `text` that begins some stop string: text that must be
// held back until the next token says whether the stop string completes.
size_t HeldBack(const std::string& text, const std::vector<std::string>& stops) {
  size_t keep = 0;
  for (const std::string& s : stops) {
    for (size_t n = std::min(s.size() - 1, text.size()); n > keep; --n) {
      if (text.compare(text.size() - n, n, s, 0, n) == 0) {
        keep = n;
        break;
      }
    }
  }
  return keep;
}

}  // namespace

bool Generation::Wait(std::string* text, int timeout_ms) {
  std::unique_lock<std::mutex> lk(mu_);
  cv_.wait_for(lk, std::chrono::milliseconds(timeout_ms),
               [&] { return done_ || !pending_.empty(); });
  *text += pending_;
  pending_.clear();
  return done_;
}

void Generation::Push(const std::string& text) {
  if (text.empty()) return;
  std::lock_guard<std::mutex> lk(mu_);
  pending_ += text;
  cv_.notify_all();
}

void Generation::Finish(const std::string& reason, int completion) {
  std::lock_guard<std::mutex> lk(mu_);
  finish_reason = reason;
  completion_tokens = completion;
  done_ = true;
  cv_.notify_all();
}

Engine::Engine(std::unique_ptr<ModelWeights> weights, std::string base_name, const EngineOptions& o)
    : weights_(std::move(weights)), base_name_(std::move(base_name)) {
  const LlamaConfig& c = weights_->config;
  if (!weights_->tokenizer_model.empty()) {  // without one: prompts and answers as token ids
    tokenizer_ = std::make_unique<Tokenizer>(weights_->tokenizer_model, weights_->tokenizer_name);
  }
  if (o.ctx > c.max_pos) {
    Fail("--ctx: " + std::to_string(o.ctx) + " is over the model's context (" +
         std::to_string(c.max_pos) + ")");
  }
  ctx_ = o.ctx > 0 ? o.ctx : std::min(c.max_pos, 4096);
  max_sequences_ = o.max_sequences;
  max_batch_tokens_ = o.max_batch_tokens;
  max_queue_ = o.max_queue > 0 ? o.max_queue : 4 * o.max_sequences;
  kv_budget_ = o.kv_budget > 0 ? o.kv_budget : static_cast<int64_t>(max_sequences_) * ctx_;
  if (kv_budget_ < ctx_) {
    std::fprintf(stderr, "serve: --kv-budget %lld is under --ctx %d: longer requests get 400\n",
                 static_cast<long long>(kv_budget_), ctx_);
  }
  // A model's vocabulary may be padded past the tokenizer's: never sample ids it cannot decode.
  sample_vocab_ = tokenizer_ ? std::min(c.vocab, tokenizer_->vocab_size()) : c.vocab;
  if (o.bf16) weights_->PrepareBf16(/*backward=*/false);
  model_ = std::make_unique<LlamaModel>(*weights_, std::vector<const Adapter*>{nullptr});
  model_->SetBatchInvariant(!o.bf16);
  cache_ = std::make_unique<KvCache>(c, max_sequences_, ctx_);
  for (int s = max_sequences_ - 1; s >= 0; --s) free_cache_seqs_.push_back(s);
  slot_used_ = {true};
  thread_ = std::thread(&Engine::Loop, this);
}

Engine::~Engine() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    draining_ = stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void Engine::AddAdapter(const std::string& name, std::unique_ptr<Adapter> adapter) {
  std::lock_guard<std::mutex> lk(mu_);
  if (name == base_name_ || adapters_.count(name) != 0)
    throw ApiError(400, "model '" + name + "' is already loaded", "name");
  auto e = std::make_unique<AdapterEntry>();
  e->adapter = std::move(adapter);
  e->slot =
      static_cast<int>(std::find(slot_used_.begin(), slot_used_.end(), false) - slot_used_.begin());
  if (e->slot == static_cast<int>(slot_used_.size())) slot_used_.push_back(true);
  slot_used_[static_cast<size_t>(e->slot)] = true;
  adapters_[name] = std::move(e);
  cv_.notify_all();
}

void Engine::RemoveAdapter(const std::string& name) {
  std::lock_guard<std::mutex> lk(mu_);
  auto it = adapters_.find(name);
  if (it == adapters_.end() || it->second->deleting)
    throw ApiError(404, "adapter '" + name + "' is not loaded");
  it->second->deleting = true;
  cv_.notify_all();
}

std::vector<ModelInfo> Engine::Models() const {
  std::lock_guard<std::mutex> lk(mu_);
  std::vector<ModelInfo> out = {{base_name_, "base", 0, false}};
  for (const auto& [name, e] : adapters_) {
    const int depth = e->adapter->config().tree_depth;
    out.push_back({name, depth > 0 ? "tree" : "lora", depth, e->deleting});
  }
  return out;
}

std::shared_ptr<Generation> Engine::Submit(GenerationRequest r) {
  std::unique_lock<std::mutex> lk(mu_);
  auto refuse = [&](int status, const std::string& message, const std::string& param,
                    int retry = 0) {
    metrics_.Refused(status);
    throw ApiError(status, message, param, retry);
  };
  if (draining_) refuse(503, "the server is shutting down", "", 5);
  Pending p;
  if (!r.model.empty() && r.model != base_name_) {
    auto it = adapters_.find(r.model);
    if (it == adapters_.end() || it->second->deleting)
      refuse(400, "model '" + r.model + "' is not loaded (GET /v1/models lists them)", "model");
    p.adapter = it->second.get();
  }
  const int n = static_cast<int>(r.prompt.size());
  if (n == 0) refuse(400, "the prompt is empty", "prompt");
  for (int id : r.prompt) {
    if (id < 0 || id >= config().vocab) {
      refuse(400,
             "token id " + std::to_string(id) + " is outside the vocabulary (size " +
                 std::to_string(config().vocab) + ")",
             "prompt");
    }
  }
  if (n >= ctx_) {
    refuse(400,
           "the prompt has " + std::to_string(n) + " tokens; the context is " +
               std::to_string(ctx_) + " (--ctx)",
           "prompt");
  }
  r.max_tokens = std::min(r.max_tokens, ctx_ - n);
  p.reserve = n + r.max_tokens;
  if (p.reserve > kv_budget_) {
    refuse(400,
           "the request needs " + std::to_string(p.reserve) +
               " KV positions (prompt + max_tokens); the server's KV budget is " +
               std::to_string(kv_budget_) + " (--kv-budget)",
           "max_tokens");
  }
  if (static_cast<int>(waiting_.size()) >= max_queue_)
    refuse(429, "the queue is full (" + std::to_string(max_queue_) + " waiting)", "", 1);
  if (p.adapter) ++p.adapter->users;
  metrics_.Request(r.model.empty() ? base_name_ : r.model);
  p.out = std::make_shared<Generation>();
  p.out->prompt_tokens = n;
  p.queued_at = Seconds();
  p.r = std::move(r);
  std::shared_ptr<Generation> out = p.out;
  waiting_.push_back(std::move(p));
  cv_.notify_all();
  return out;
}

void Engine::Drain() {
  std::unique_lock<std::mutex> lk(mu_);
  draining_ = true;
  cv_.notify_all();
  idle_cv_.wait(lk, [&] { return waiting_.empty() && running_.empty(); });
}

void Engine::ApplyAdapterChanges() {
  for (auto it = adapters_.begin(); it != adapters_.end();) {
    AdapterEntry& e = *it->second;
    if (!e.installed) {
      model_->SetAdapter(e.slot, e.adapter.get());
      e.installed = true;
    }
    if (e.deleting && e.users == 0) {
      model_->SetAdapter(e.slot, nullptr);
      slot_used_[static_cast<size_t>(e.slot)] = false;
      it = adapters_.erase(it);
    } else {
      ++it;
    }
  }
}

void Engine::Admit() {
  while (!waiting_.empty()) {
    Pending& p = waiting_.front();
    if (p.out->cancelled()) {
      if (p.adapter) --p.adapter->users;
      p.out->Finish("cancelled", 0);
      waiting_.pop_front();
      continue;
    }
    // First come, first served: the head waits for room rather than being overtaken.
    if (free_cache_seqs_.empty() || kv_reserved_ + p.reserve > kv_budget_) break;
    auto s = std::make_unique<Sequence>();
    s->cache_seq = free_cache_seqs_.back();
    free_cache_seqs_.pop_back();
    kv_reserved_ += p.reserve;
    cache_->length[static_cast<size_t>(s->cache_seq)] = 0;
    model_->ResetRoutingStats(s->cache_seq);
    s->sampler = std::make_unique<Sampler>(p.r.sampler);
    if (tokenizer_) {
      s->streamer = std::make_unique<TextStreamer>(*tokenizer_);
      s->streamer->Prime(p.r.prompt);
    }
    s->p = std::move(p);
    waiting_.pop_front();
    running_.push_back(std::move(s));
  }
}

void Engine::Release(Sequence& s, const std::string& reason) {
  if (!s.held.empty()) s.p.out->Push(s.held);
  const int completion = s.generated - (s.eos ? 1 : 0);  // EOS is not part of the answer
  s.p.out->Finish(reason, completion);
  metrics_.Finished(s.p.adapter ? s.p.r.model : base_name_, s.p.out->prompt_tokens, completion);
  if (s.p.adapter) --s.p.adapter->users;
  kv_reserved_ -= s.p.reserve;
  free_cache_seqs_.push_back(s.cache_seq);
}

bool Engine::Advance(Sequence& s, const float* logits) {
  const int next = s.sampler->Sample(logits, sample_vocab_);
  const double now = Seconds();
  if (s.generated == 0) {
    metrics_.FirstToken(now - s.p.queued_at);
  } else {
    metrics_.NextToken(now - s.last_token_at);
  }
  s.last_token_at = now;
  ++s.generated;
  s.last_token = next;
  if (next == config().eos_id && !s.p.r.ignore_eos) {
    s.eos = true;
    s.end = "stop";
    return false;
  }
  // Without a tokenizer the text is the ids, space-separated (as `generate` prints them).
  s.held +=
      s.streamer ? s.streamer->Push(next) : (s.generated > 1 ? " " : "") + std::to_string(next);
  const std::vector<std::string>& stops = s.p.r.stop;
  size_t cut = std::string::npos;
  for (const std::string& stop : stops) cut = std::min(cut, s.held.find(stop));
  if (cut != std::string::npos) {
    s.held.resize(cut);
    s.end = "stop";
    return false;
  }
  if (s.generated >= s.p.r.max_tokens) {
    if (s.streamer) s.held += s.streamer->Finish();
    s.end = "length";
    return false;
  }
  const size_t keep = HeldBack(s.held, stops);
  s.p.out->Push(s.held.substr(0, s.held.size() - keep));
  s.held.erase(0, s.held.size() - keep);
  return true;
}

void Engine::Step(std::unique_lock<std::mutex>& lk) {
  // Decoding sequences first (one token each), then prompt chunks in admission order.
  batch_.Clear();
  std::vector<Sequence*> sampled;  // in the order of their logits rows
  int budget = max_batch_tokens_;
  for (auto& s : running_) {
    const int n = static_cast<int>(s->p.r.prompt.size());
    if (s->fed < n) continue;
    const int slot = s->p.adapter ? s->p.adapter->slot : 0;
    batch_.Add(s->last_token, s->cache_seq, n + s->generated - 1, true, slot);
    sampled.push_back(s.get());
    --budget;
  }
  budget = std::max(budget, 1);  // prompts always move
  for (auto& s : running_) {
    const int n = static_cast<int>(s->p.r.prompt.size());
    if (s->fed >= n || budget == 0) continue;
    const int slot = s->p.adapter ? s->p.adapter->slot : 0;
    const int chunk = std::min(n - s->fed, budget);
    for (int i = s->fed; i < s->fed + chunk; ++i)
      batch_.Add(s->p.r.prompt[static_cast<size_t>(i)], s->cache_seq, i, i + 1 == n, slot);
    s->fed += chunk;
    budget -= chunk;
    if (s->fed == n) sampled.push_back(s.get());
  }
  // Decoders were added first and prompts that end in this forward after them, each in
  // running order: `sampled` is already the order of the logits rows.
  const int64_t tokens = batch_.size();
  lk.unlock();
  std::string failure;
  std::vector<Sequence*> ended;
  try {
    model_->Forward(batch_, *cache_, &logits_);
    const size_t V = static_cast<size_t>(config().vocab);
    for (size_t k = 0; k < sampled.size(); ++k) {
      if (!Advance(*sampled[k], logits_.data() + k * V)) ended.push_back(sampled[k]);
    }
  } catch (const std::exception& e) {
    failure = e.what();
    std::fprintf(stderr, "error: serve: a forward failed: %s\n", e.what());
  }
  metrics_.Step(tokens, static_cast<int64_t>(running_.size()));
  lk.lock();
  for (auto& s : running_) {
    const bool end =
        !failure.empty() || std::find(ended.begin(), ended.end(), s.get()) != ended.end();
    if (!end) continue;
    Release(*s, failure.empty() ? s->end : "error");
    s.reset();
  }
  running_.erase(std::remove(running_.begin(), running_.end(), nullptr), running_.end());
}

void Engine::Loop() {
  std::unique_lock<std::mutex> lk(mu_);
  for (;;) {
    ApplyAdapterChanges();
    for (auto& s : running_) {
      if (!s->p.out->cancelled()) continue;
      Release(*s, "cancelled");
      s.reset();
    }
    running_.erase(std::remove(running_.begin(), running_.end(), nullptr), running_.end());
    Admit();
    int64_t used = 0;
    for (const auto& s : running_) used += cache_->length[static_cast<size_t>(s->cache_seq)];
    metrics_.SetState(static_cast<int64_t>(waiting_.size()), static_cast<int64_t>(running_.size()),
                      kv_reserved_, used);
    if (running_.empty()) {
      idle_cv_.notify_all();
      if (stop_ && waiting_.empty()) break;
      cv_.wait(lk);
      continue;
    }
    Step(lk);
  }
  ApplyAdapterChanges();
}

}  // namespace tinylora
