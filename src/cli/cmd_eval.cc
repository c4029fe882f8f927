// tinylora eval: held-out loss and perplexity of a model on text or token ids.
// Every token after the first is predicted once: windows of --context tokens overlap by one,
// and each window runs through the model in pieces that extend its KV cache.
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "capacity/fact_bits.h"
#include "cli/commands.h"
#include "cli/common.h"
#include "data/sources.h"
#include "model/llama.h"
#include "model/tokenizer.h"
#include "util/error.h"
#include "util/file.h"

namespace tinylora {

namespace {

constexpr int kPiece = 256;  // tokens per forward call within a window

// -log softmax(logits)[target], in double.
double TokenLoss(const float* logits, int vocab, int target) {
  float mx = logits[0];
  for (int i = 1; i < vocab; ++i) mx = std::max(mx, logits[i]);
  double sum = 0;
  for (int i = 0; i < vocab; ++i) sum += std::exp(static_cast<double>(logits[i]) - mx);
  return std::log(sum) + mx - logits[target];
}

// The routing of the tokens the model has seen, when its adapter is a tree; else null.
nlohmann::json RoutingJson(const LlamaModel& model, const Adapter* adapter) {
  if (adapter == nullptr || adapter->depth() == 0) return nullptr;
  nlohmann::json usage = nlohmann::json::array();
  double entropy = 0, decided = 0;
  const std::vector<RoutingStats> stats = model.routing_stats();
  for (const RoutingStats& s : stats) {
    usage.push_back(s.usage);
    entropy += s.entropy / static_cast<double>(stats.size());
    decided += s.decided / static_cast<double>(stats.size());
  }
  return {{"entropy", entropy}, {"decided", decided}, {"leaf_usage", usage}};
}

// eval --facts: the bits the model (and adapter) store about the probes' people.
EvalResult RunFactsEval(const EvalOptions& o, ModelWeights& weights) {
  const std::vector<Probe> probes = ReadProbes(o.facts);
  Tokenizer tok(weights.TokenizerModel("--facts needs the model's tokenizer"),
                weights.tokenizer_name);
  if (o.bf16) weights.PrepareBf16(/*backward=*/false);
  std::unique_ptr<Adapter> adapter;
  if (!o.adapter.empty()) adapter = Adapter::Load(o.adapter, weights.config, /*with_grads=*/false);
  LlamaModel model(weights, adapter.get());
  const FactBits bits = MeasureFactBits(model, tok, probes);
  std::fprintf(stderr, "eval: %lld people in %.1f s, %.1f bits stored\n",
               static_cast<long long>(bits.people), bits.seconds, bits.bits);
  EvalResult r;
  r.seconds = bits.seconds;
  nlohmann::json attrs = nlohmann::json::object();
  for (int a = 0; a < kNumAttrs; ++a) {
    const AttrBits& x = bits.attr[static_cast<size_t>(a)];
    attrs[AttrName(static_cast<Attr>(a))] = {
        {"cross_entropy_bits", x.cross_entropy_bits},
        {"entropy_bits", AttrEntropyBits(static_cast<Attr>(a))},
        {"bits", x.bits},
        {"recall", x.recall}};
  }
  r.facts = {{"people", bits.people}, {"bits", bits.bits}, {"attributes", attrs}};
  r.routing = RoutingJson(model, adapter.get());
  return r;
}

}  // namespace

EvalResult RunEval(const EvalOptions& o) {
  SetThreads(o.threads);
  auto weights = ModelWeights::Load(o.model, o.quantize.Get(o.bf16));
  if (!o.facts.empty()) return RunFactsEval(o, *weights);
  const LlamaConfig& c = weights->config;
  std::vector<int> ids;
  std::string source;
  if (!o.token_ids.empty()) {
    source = o.token_ids;
    ids = ParseIds(ReadTextFile(o.token_ids), o.token_ids);
  } else {
    source = o.data;
    Tokenizer tok(weights->TokenizerModel("give --token-ids instead of --data"),
                  weights->tokenizer_name);
    const bool jsonl = o.data.size() > 6 && o.data.compare(o.data.size() - 6, 6, ".jsonl") == 0;
    if (!jsonl) {
      ids = tok.Encode(ReadTextFile(o.data), /*add_bos=*/true);
    } else {  // every document as BOS + text + EOS, one after the other (as training packs them)
      ReadDocuments(ListSources({o.data}), [&](Document& d) {
        const std::vector<int> piece = tok.Encode(d.prompt + d.text, /*add_bos=*/!d.continuation);
        if (!d.continuation && !ids.empty()) ids.push_back(tok.eos_id());
        ids.insert(ids.end(), piece.begin(), piece.end());
      });
      if (!ids.empty()) ids.push_back(tok.eos_id());
    }
  }
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] >= c.vocab) {
      Fail(source + ": token " + std::to_string(i + 1) + " has id " + std::to_string(ids[i]) +
           ", outside the vocabulary (size " + std::to_string(c.vocab) + ")");
    }
  }
  if (ids.size() < 2)
    Fail(source + ": needs at least 2 tokens to score, has " + std::to_string(ids.size()));
  const int context = o.context > 0 ? o.context : c.max_pos;
  if (context < 2) Fail("--context: must be at least 2");
  if (context > c.max_pos) {
    Fail("--context " + std::to_string(context) + " is longer than the model's " +
         std::to_string(c.max_pos));
  }

  if (o.bf16) weights->PrepareBf16(/*backward=*/false);
  std::unique_ptr<Adapter> adapter;
  if (!o.adapter.empty()) adapter = Adapter::Load(o.adapter, c, /*with_grads=*/false);
  LlamaModel model(*weights, adapter.get());
  model.SetBatchInvariant(false);  // fixed windows and pieces: the fast shape-dependent kernels
  KvCache cache(c, 1, context);
  Batch batch;
  std::vector<float> logits;
  double total_loss = 0;
  int64_t scored = 0;
  const bool progress = ::isatty(2);
  const double t0 = Seconds();
  const int64_t n = static_cast<int64_t>(ids.size());
  for (int64_t start = 0; start + 1 < n; start += context - 1) {
    const int64_t len = std::min<int64_t>(context, n - start);
    cache.length[0] = 0;
    for (int64_t p0 = 0; p0 < len; p0 += kPiece) {
      const int64_t m = std::min<int64_t>(kPiece, len - p0);
      batch.Clear();
      for (int64_t i = 0; i < m; ++i) {
        batch.Add(ids[static_cast<size_t>(start + p0 + i)], 0, static_cast<int>(p0 + i),
                  p0 + i + 1 < len);
      }
      model.Forward(batch, cache, &logits);
      const int64_t rows = static_cast<int64_t>(logits.size()) / c.vocab;
      for (int64_t r = 0; r < rows; ++r) {
        total_loss += TokenLoss(&logits[static_cast<size_t>(r * c.vocab)], c.vocab,
                                ids[static_cast<size_t>(start + p0 + r + 1)]);
        ++scored;
      }
    }
    if (progress) {
      std::fprintf(stderr, "\reval: %lld/%lld tokens", static_cast<long long>(scored),
                   static_cast<long long>(n - 1));
    }
  }
  const double seconds = Seconds() - t0;
  std::fprintf(stderr, "%seval: %lld tokens in %.1f s (%.1f tokens/s)\n", progress ? "\r" : "",
               static_cast<long long>(scored), seconds, scored / seconds);
  EvalResult r;
  r.tokens = scored;
  r.loss = total_loss / static_cast<double>(scored);
  r.ppl = std::exp(r.loss);
  r.seconds = seconds;
  r.routing = RoutingJson(model, adapter.get());  // how a tree routed these tokens, per block
  return r;
}

nlohmann::json EvalResult::ToJson() const {
  nlohmann::json out = facts.is_null()
                           ? nlohmann::json{{"tokens", tokens}, {"loss", loss}, {"ppl", ppl}}
                           : nlohmann::json{{"facts", facts}};
  if (!routing.is_null()) out["routing"] = routing;
  return out;
}

void AddEvalCommand(CLI::App& app) {
  auto o = std::make_shared<EvalOptions>();
  CLI::App* cmd = app.add_subcommand("eval", "held-out loss and perplexity");
  cmd->add_option("--model", o->model, "model directory, GGUF file or bitsandbytes 4-bit directory")
      ->required();
  cmd->add_option("--adapter", o->adapter, "a LoRA adapter directory to apply");
  auto* d = cmd->add_option(
      "--data", o->data,
      "a text file (one document, BOS added) or .jsonl (BOS + text + EOS per line)");
  auto* t = cmd->add_option("--token-ids", o->token_ids,
                            "a file of whitespace-separated token ids (no BOS added)");
  d->excludes(t);
  auto* f =
      cmd->add_option("--facts", o->facts,
                      "probe.jsonl of `data facts`: the bits of knowledge stored about its people "
                      "(Allen-Zhu & Li), instead of the loss");
  f->excludes(d);
  f->excludes(t);
  cmd->add_option("--context", o->context, "window length in tokens (default: the model's context)")
      ->check(kNonNegative);
  AddBf16Flag(cmd, &o->bf16, "the BF16 base's matrix products, as train --bf16 computes them,");
  AddQuantizeFlags(cmd, &o->quantize);
  AddThreadsOption(cmd, &o->threads);
  cmd->callback([o]() {
    if (o->data.empty() && o->token_ids.empty() && o->facts.empty())
      Fail("eval: give --data FILE, --token-ids FILE or --facts FILE");
    std::cout << RunEval(*o).ToJson().dump() << "\n";
  });
}

}  // namespace tinylora
