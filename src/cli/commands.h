// The subcommands as functions: each command's body takes its options struct and returns its
// result, so the CLI callbacks (which print the result) and `quickstart` (which chains them)
// share one implementation. Progress goes to stderr; nothing here writes to stdout.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/sampler.h"
#include "model/weights.h"
#include "train/trainer.h"

namespace tinylora {

// --quantize FORMAT [--double-quant] [--quantize-head] of train, eval, generate and inspect.
// Get() is what ModelWeights::Load takes: Error (exit 2) for a name that is not a block
// format, for --double-quant or --quantize-head alone, and for --bf16 with --quantize.
struct QuantizeFlags {
  std::string format;
  bool double_quant = false, head = false;
  QuantizeOnLoad Get(bool bf16 = false) const;
  nlohmann::json ToJson() const;  // null when not quantising
};

// ---- tokenizer train ----------------------------------------------------------------------
struct TokenizerTrainOptions {
  std::vector<std::string> data;
  std::string out;
  int vocab_size = 8000;
  int threads = 0;
};
struct TokenizerTrainResult {
  std::string model_path;  // OUT/tokenizer.model
  int vocab = 0;
  size_t files = 0;
};
TokenizerTrainResult RunTokenizerTrain(const TokenizerTrainOptions& o);

// ---- train and pretrain ---------------------------------------------------------------------
struct CommonTrainOptions {
  std::vector<std::string> data, val_data;
  double val_fraction = 0.05;
  std::string out, cache_dir, schedule = "cosine";
  int64_t steps = 0;
  double epochs = 0;
  int batch_size = 4, seq_len = 256, grad_accum = 1;
  double lr = 1e-3, weight_decay = 0.0, grad_clip = 1.0, min_lr_ratio = 0.0;
  int64_t warmup = 0, eval_every = 0, save_every = 0, log_every = 1, eval_batches = 16;
  uint64_t seed = 0;
  bool resume = false, checkpoint_activations = false;
  int64_t stop_after = 0;
  int threads = 0;
};

struct LoraTrainOptions {
  CommonTrainOptions common;
  std::string model, targets = "q_proj,v_proj";
  int rank = 8;
  double alpha = 16, dropout = 0;
  bool bf16 = false;  // the BF16 base's products in BF16 (activations rounded; ops/gemm_bf16)
  QuantizeFlags quantize;
  // tree adapters
  int tree_depth = 0;
  std::string routing = "hard", gate = "path";
  int64_t hard_from = -1;  // soft-then-hard: first hard step (default: half the steps)
  double hardening = 0.0, balance = 0.01, router_lr = 0;
};

struct PretrainOptions {
  CommonTrainOptions common;
  std::string config_file, preset, init_model, tokenizer;
};

struct TrainResult {
  TrainSummary summary;
  std::string out;
  int64_t trainable_params = 0, activation_bytes = 0;
  double peak_rss_mb = 0;
  nlohmann::json ToJson() const;  // the line `train` and `pretrain` print
};
TrainResult RunTrain(const LoraTrainOptions& o);
TrainResult RunPretrain(const PretrainOptions& o);
// A pipeline's stage of training must finish: a run a signal stopped is a FailRuntime naming
// `what` (the stage is then not kept, and the next run builds it again).
void CheckFinished(const TrainResult& r, const std::string& what);

// ---- eval -------------------------------------------------------------------------------
struct EvalOptions {
  std::string model, adapter, data, token_ids;
  std::string facts;  // probe.jsonl of `data facts`: the bits stored instead of the loss
  int context = 0;
  int threads = 0;
  bool bf16 = false;  // the BF16 base's products in BF16 (ops/gemm_bf16)
  QuantizeFlags quantize;
};
struct EvalResult {
  int64_t tokens = 0;
  double loss = 0, ppl = 0, seconds = 0;
  nlohmann::json routing;  // null, or {entropy, decided, leaf_usage: per block tokens per leaf}
  nlohmann::json
      facts;  // --facts: {people, bits, per attribute {cross_entropy_bits, bits, recall}}
  nlohmann::json ToJson() const;  // the line `eval` prints
};
EvalResult RunEval(const EvalOptions& o);

// ---- generate ---------------------------------------------------------------------------
struct GenerateOptions {
  std::string model, adapter, prompt, prompt_ids;
  int max_new_tokens = 64;
  bool greedy = false, ignore_eos = false;
  SamplerOptions sampler{false, 0.8f, 40, 0.95f, 0};
  int threads = 0;
  bool bf16 = false;  // the prompt's products in BF16 (ops/gemm_bf16); decode reads BF16 anyway
  QuantizeFlags quantize;
  bool stream = true;  // print the new text to stdout as it comes (the CLI), or only return it
};
struct GenerateResult {
  std::string text;  // the new text (or ids, space-separated, without a tokenizer)
  int prompt_tokens = 0, generated = 0;
  double prefill_tokens_per_s = 0, decode_tokens_per_s = 0;
};
GenerateResult RunGenerate(const GenerateOptions& o);

// ---- inspect ------------------------------------------------------------------------------
// Parameters of an adapter directory: all, the routers', and those one token uses (one leaf
// of each adapted projection plus d router rows per block).
struct AdapterParams {
  int64_t params = 0, router = 0, active_per_token = 0;
};
AdapterParams CountAdapterParams(const std::string& dir, int tree_depth);

}  // namespace tinylora
