// tinylora init: write a randomly initialised model directory (config.json,
// model.safetensors, optionally tokenizer.model) for a config file or a preset.
#include <omp.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "model/config.h"
#include "model/tokenizer.h"
#include "model/weights.h"
#include "train/trainable.h"
#include "util/error.h"
#include "util/file.h"
#include "util/half.h"

namespace tinylora {

namespace {

struct InitOptions {
  std::string config_file, preset, out, tokenizer, dtype = "f32";
  uint64_t seed = 0;
  bool force = false;
  int threads = 0;
};

void RunInit(const InitOptions& o) {
  SetThreads(o.threads);
  LlamaConfig c;
  if (!o.preset.empty()) {
    if (!PresetConfig(o.preset, &c))
      Fail("--preset: unknown preset '" + o.preset + "' (tiny, tinyllama)");
  } else {
    c = LoadConfig(o.config_file);
  }
  const Format format = FormatNamed(o.dtype, "--dtype");
  if (!Traits(format).savable()) Fail("--dtype: expected f32 or bf16, got " + o.dtype);
  if (!o.tokenizer.empty()) {
    Tokenizer tok(o.tokenizer);
    if (!o.preset.empty()) {
      if (tok.vocab_size() != c.vocab) {  // a preset takes the tokenizer's vocabulary
        std::cerr << "init: vocab_size " << c.vocab << " of preset " << o.preset
                  << " replaced by the tokenizer's " << tok.vocab_size() << "\n";
      }
      c.vocab = tok.vocab_size();
    } else if (tok.vocab_size() > c.vocab) {
      Fail("--tokenizer: " + o.tokenizer + " has " + std::to_string(tok.vocab_size()) +
           " pieces but the config's vocab_size is " + std::to_string(c.vocab));
    }
    c.bos_id = tok.bos_id() >= 0 ? tok.bos_id() : c.bos_id;
    c.eos_id = tok.eos_id() >= 0 ? tok.eos_id() : c.eos_id;
  }
  MakeDirectories(o.out);
  const std::string model_path = JoinPath(o.out, "model.safetensors");
  if (!o.force && (FileExists(model_path) || FileExists(JoinPath(o.out, "config.json")))) {
    Fail(o.out + ": already holds a model; pass --force to overwrite it");
  }

  auto base = CreateRandomBase(c, o.seed, /*with_grads=*/false);
  SaveModel(*base, o.out, format);
  const int64_t total = base->params.total();
  if (!o.tokenizer.empty()) {
    const std::string text = ReadTextFile(o.tokenizer);
    WriteFileAtomic(JoinPath(o.out, "tokenizer.model"), text);
  } else {
    std::remove(JoinPath(o.out, "tokenizer.model").c_str());  // a stale one would not fit
  }
  std::cerr << "wrote " << o.out << ": " << total << " parameters (" << o.dtype << ")\n";
  std::cout << nlohmann::json{{"out", o.out}, {"params", total}, {"vocab", c.vocab}}.dump() << "\n";
}

}  // namespace

void AddInitCommand(CLI::App& app) {
  auto o = std::make_shared<InitOptions>();
  CLI::App* cmd = app.add_subcommand("init", "write a randomly initialised model directory");
  auto* cfg = cmd->add_option("--config", o->config_file, "a config.json to initialise");
  auto* preset = cmd->add_option("--preset", o->preset, "a named config: tiny, tinyllama");
  cfg->excludes(preset);
  cmd->add_option("--out", o->out, "the model directory to write")->required();
  cmd->add_option("--tokenizer", o->tokenizer,
                  "a SentencePiece tokenizer.model to include (with --preset, the model takes "
                  "the tokenizer's vocabulary size; with --config it must fit vocab_size)");
  cmd->add_option("--seed", o->seed, "random seed");
  cmd->add_option("--dtype", o->dtype, "stored dtype: f32 or bf16");
  cmd->add_flag("--force", o->force, "overwrite a model already in --out");
  AddThreadsOption(cmd, &o->threads);
  cmd->callback([o]() {
    if (o->config_file.empty() && o->preset.empty())
      Fail("init: give --config FILE or --preset NAME");
    RunInit(*o);
  });
}

}  // namespace tinylora
