// tinylora generate: prefill a prompt, then decode token by token with the KV cache,
// streaming text (or ids) to stdout and speeds to stderr.
#include <cstdio>
#include <iostream>
#include <memory>

#include "cli/commands.h"
#include "cli/common.h"
#include "model/llama.h"
#include "model/sampler.h"
#include "model/tokenizer.h"
#include "util/error.h"
#include "util/file.h"

namespace tinylora {

GenerateResult RunGenerate(const GenerateOptions& o) {
  SetThreads(o.threads);
  auto weights = ModelWeights::Load(o.model, o.quantize.Get(o.bf16));
  const LlamaConfig& c = weights->config;
  std::unique_ptr<Tokenizer> tok;
  std::vector<int> prompt;
  if (!o.prompt_ids.empty()) {
    prompt = ParseIds(o.prompt_ids, "--prompt-ids");
  } else {
    tok = std::make_unique<Tokenizer>(weights->TokenizerModel("give the prompt as --prompt-ids"),
                                      weights->tokenizer_name);
    if (o.prompt.empty()) Fail("--prompt: the prompt is empty");
    prompt = tok->Encode(o.prompt, /*add_bos=*/true);
  }
  if (prompt.empty()) Fail("--prompt-ids: the prompt is empty");
  for (int id : prompt) {
    if (id >= c.vocab) {
      Fail("--prompt-ids: token id " + std::to_string(id) + " is outside the vocabulary (size " +
           std::to_string(c.vocab) + ")");
    }
  }
  const int context = c.max_pos;
  if (static_cast<int>(prompt.size()) >= context) {
    Fail("the prompt has " + std::to_string(prompt.size()) + " tokens; the model's context is " +
         std::to_string(context));
  }
  const int capacity = static_cast<int>(
      std::min<int64_t>(context, static_cast<int64_t>(prompt.size()) + o.max_new_tokens));

  std::unique_ptr<Adapter> adapter;
  if (!o.adapter.empty()) adapter = Adapter::Load(o.adapter, c, /*with_grads=*/false);
  if (o.bf16) weights->PrepareBf16(/*backward=*/false);
  LlamaModel model(*weights, adapter.get());
  // --bf16 trades the batch invariance of one sequence's prefill (nothing else is in its
  // batch) for the BF16 GEMM's speed.
  if (o.bf16) model.SetBatchInvariant(false);
  KvCache cache(c, 1, capacity);
  SamplerOptions so = o.sampler;
  so.greedy = o.greedy;
  Sampler sampler(so);
  // A model's vocabulary may be padded past the tokenizer's: never sample ids it cannot decode.
  const int sample_vocab = tok ? std::min(c.vocab, tok->vocab_size()) : c.vocab;
  std::unique_ptr<TextStreamer> streamer;
  if (tok) {
    streamer = std::make_unique<TextStreamer>(*tok);
    streamer->Prime(prompt);
  }

  GenerateResult r;
  r.prompt_tokens = static_cast<int>(prompt.size());
  auto emit = [&](const std::string& piece) {
    r.text += piece;
    if (o.stream) {
      std::cout << piece;
      std::cout.flush();
    }
  };
  Batch batch;
  for (size_t i = 0; i < prompt.size(); ++i)
    batch.Add(prompt[i], 0, static_cast<int>(i), i + 1 == prompt.size());
  std::vector<float> logits;
  const double t0 = Seconds();
  model.Forward(batch, cache, &logits);
  const double t1 = Seconds();
  int pos = static_cast<int>(prompt.size());  // where the next token goes
  int generated = 0;
  while (generated < o.max_new_tokens) {
    const int next = sampler.Sample(logits.data(), sample_vocab);
    ++generated;
    if (next == c.eos_id && !o.ignore_eos) break;
    emit(streamer ? streamer->Push(next) : (generated > 1 ? " " : "") + std::to_string(next));
    if (generated == o.max_new_tokens || pos >= capacity) break;
    batch.Clear();
    batch.Add(next, 0, pos++, true);
    model.Forward(batch, cache, &logits);
  }
  const double t2 = Seconds();
  if (streamer) emit(streamer->Finish());
  if (o.stream) std::cout << "\n";
  r.generated = generated;
  r.prefill_tokens_per_s = prompt.size() / (t1 - t0);
  r.decode_tokens_per_s = generated > 1 ? (generated - 1) / (t2 - t1) : 0.0;
  std::fprintf(stderr, "prompt %zu tokens, %.1f tokens/s; generated %d tokens, %.2f tokens/s\n",
               prompt.size(), r.prefill_tokens_per_s, generated, r.decode_tokens_per_s);
  return r;
}

void AddGenerateCommand(CLI::App& app) {
  auto o = std::make_shared<GenerateOptions>();
  CLI::App* cmd = app.add_subcommand("generate", "generate text from a prompt, streaming");
  cmd->add_option("--model", o->model, "model directory, GGUF file or bitsandbytes 4-bit directory")
      ->required();
  cmd->add_option("--adapter", o->adapter, "a LoRA adapter directory to apply");
  auto* p = cmd->add_option("--prompt", o->prompt, "prompt text (tokenised, BOS added)");
  auto* pi = cmd->add_option("--prompt-ids", o->prompt_ids, "prompt as token ids, e.g. \"1 2 3\"");
  p->excludes(pi);
  cmd->add_option("--max-new-tokens", o->max_new_tokens, "tokens to generate")->check(kNonNegative);
  auto* g = cmd->add_flag("--greedy", o->greedy, "always take the most likely token");
  cmd->add_flag("--ignore-eos", o->ignore_eos,
                "keep generating past the end-of-text token (speed measurements)");
  cmd->add_option("--temperature", o->sampler.temperature, "sampling temperature")
      ->check(kPositive)
      ->excludes(g);
  cmd->add_option("--top-p", o->sampler.top_p, "nucleus sampling mass (1 = off)")
      ->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--top-k", o->sampler.top_k, "keep the k most likely tokens (0 = off)")
      ->check(kNonNegative);
  cmd->add_option("--seed", o->sampler.seed, "sampling seed");
  AddBf16Flag(cmd, &o->bf16,
              "the prompt's matrix products on the BF16 base (not batch-invariant; decode reads "
              "the BF16 weights either way),");
  AddQuantizeFlags(cmd, &o->quantize);
  AddThreadsOption(cmd, &o->threads);
  cmd->callback([o]() {
    if (o->prompt.empty() && o->prompt_ids.empty())
      Fail("generate: the prompt is empty (--prompt or --prompt-ids)");
    RunGenerate(*o);
  });
}

}  // namespace tinylora
