// The serving engine: one model, its adapters by name, and a scheduler thread that runs
// continuous batching over a KV cache of --max-sequences slots. Between forwards it admits
// waiting requests that fit the KV budget, and every forward carries each running sequence's
// next token plus chunks of the prompts being read, whatever adapter each request names (the
// model applies adapters per row, batch-invariantly: DESIGN.md §8).
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "adapters/lora.h"
#include "model/llama.h"
#include "model/sampler.h"
#include "model/tokenizer.h"
#include "model/weights.h"
#include "server/metrics.h"

namespace tinylora {

struct EngineOptions {
  int max_sequences = 16;      // KV cache slots: sequences in the running batch at once
  int ctx = 0;                 // positions of one sequence (0: the model's context, at most 4096)
  int64_t kv_budget = 0;       // positions over all sequences (0: max_sequences × ctx)
  int max_batch_tokens = 512;  // tokens per forward (decode tokens first, then prompt chunks)
  int max_queue = 0;           // waiting requests before 429 (0: 4 × max_sequences)
  // --bf16: the shape-dependent BF16 GEMM (packed once) for every product, trading batch
  // invariance for speed; off, every product runs the batch-invariant kernels.
  bool bf16 = false;
};

struct GenerationRequest {
  std::string model;        // the base's name or an adapter's
  std::vector<int> prompt;  // ids, BOS included
  int max_tokens = 16;      // clamped to the context left after the prompt
  SamplerOptions sampler;
  std::vector<std::string> stop;  // text that ends the generation (not returned)
  bool ignore_eos = false;        // run to max_tokens (llama-server's field: measurements)
};

// One request's output, from the engine thread to the HTTP thread that waits on it.
class Generation {
 public:
  // HTTP side. Waits up to `timeout_ms` for new text or the end; appends the new text to
  // *text and returns true once finished (then finish_reason and the counts are final).
  bool Wait(std::string* text, int timeout_ms);
  // The client is gone or no longer wants it: the engine frees its sequence at the next step.
  void Cancel() { cancelled_ = true; }
  bool cancelled() const { return cancelled_; }
  std::string finish_reason;  // "stop" or "length" ("cancelled" when cancelled)
  int prompt_tokens = 0, completion_tokens = 0;

  // Engine side.
  void Push(const std::string& text);
  void Finish(const std::string& reason, int completion);

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::string pending_;
  bool done_ = false;
  std::atomic<bool> cancelled_{false};
};

struct ModelInfo {
  std::string name, kind;  // kind: "base", "lora" or "tree"
  int tree_depth = 0;
  bool deleting = false;
};

class Engine {
 public:
  Engine(std::unique_ptr<ModelWeights> weights, std::string base_name, const EngineOptions& o);
  ~Engine();  // finishes every request, then stops the scheduler

  // Adapters by name. Add loads nothing itself: the adapter is installed between forwards.
  // A name in use: ApiError 400. Remove: new requests for it are refused at once; it is freed
  // when its last running request ends. An unknown name: ApiError 404.
  void AddAdapter(const std::string& name, std::unique_ptr<Adapter> adapter);
  void RemoveAdapter(const std::string& name);
  std::vector<ModelInfo> Models() const;

  // Queues a request; ApiError for an unknown model (400), a prompt over the context (400), a
  // request larger than the KV budget (400), a full queue (429) or a draining server (503).
  std::shared_ptr<Generation> Submit(GenerationRequest r);
  // Refuses new requests from now on (503) and returns when every queued and running one has
  // finished.
  void Drain();

  const LlamaConfig& config() const { return weights_->config; }
  const ModelWeights& weights() const { return *weights_; }
  const Tokenizer* tokenizer() const { return tokenizer_.get(); }  // null: the model has none
  const std::string& base_name() const { return base_name_; }
  int ctx() const { return ctx_; }
  int max_requests() const { return max_sequences_ + max_queue_; }  // running + queued
  std::string MetricsText() const { return metrics_.Text(kv_budget_); }
  ServerMetrics& metrics() { return metrics_; }

 private:
  struct AdapterEntry {
    std::unique_ptr<Adapter> adapter;
    int slot = 0;
    int users = 0;  // requests waiting or running on it
    bool deleting = false, installed = false;
  };
  struct Pending {  // a queued request
    GenerationRequest r;
    std::shared_ptr<Generation> out;
    AdapterEntry* adapter = nullptr;  // null: the base
    int reserve = 0;                  // KV positions: prompt + max_tokens
    double queued_at = 0;
  };
  struct Sequence {  // a running request in cache slot `cache_seq`
    Pending p;
    int cache_seq = 0;
    int fed = 0;  // prompt tokens already in the cache
    int generated = 0;
    int last_token = -1;
    double last_token_at = 0;
    std::unique_ptr<Sampler> sampler;
    std::unique_ptr<TextStreamer> streamer;
    std::string held;  // decoded text not yet sent: it may start a stop string
    std::string end;   // why it ended: "stop" (EOS or a stop string) or "length"
    bool eos = false;  // it ended on EOS
  };

  void Loop();
  void ApplyAdapterChanges();  // under mu_
  void Admit();                // under mu_
  void Step(std::unique_lock<std::mutex>& lk);
  // Samples one token for `s` from its logits; false when the sequence has ended (s.end says
  // why).
  bool Advance(Sequence& s, const float* logits);
  void Release(Sequence& s, const std::string& reason);  // under mu_

  std::unique_ptr<ModelWeights> weights_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::string base_name_;
  int ctx_ = 0, max_sequences_ = 0, max_batch_tokens_ = 0, max_queue_ = 0, sample_vocab_ = 0;
  int64_t kv_budget_ = 0;
  std::unique_ptr<LlamaModel> model_;
  std::unique_ptr<KvCache> cache_;
  ServerMetrics metrics_;

  mutable std::mutex mu_;
  std::condition_variable cv_;       // wakes the scheduler
  std::condition_variable idle_cv_;  // wakes Drain
  std::map<std::string, std::unique_ptr<AdapterEntry>> adapters_;
  std::vector<bool> slot_used_;  // model adapter slots (0: the base)
  std::deque<Pending> waiting_;
  std::vector<std::unique_ptr<Sequence>> running_;
  std::vector<int> free_cache_seqs_;
  int64_t kv_reserved_ = 0;
  bool draining_ = false, stop_ = false;
  std::thread thread_;

  Batch batch_;  // scheduler thread only
  std::vector<float> logits_;
};

}  // namespace tinylora
