// tinylora merge: fold a LoRA adapter (depth 0) into the base weights, W' = W + s·B·A, and
// write a model directory in the base's stored dtype.
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "adapters/lora.h"
#include "cli/commands.h"
#include "cli/common.h"
#include "train/trainable.h"
#include "util/error.h"
#include "util/file.h"

namespace tinylora {

namespace {

struct MergeOptions {
  std::string model, adapter, out;
  bool force = false;
  int threads = 0;
  QuantizeFlags quantize;  // the base the adapter was trained over; the merge is then F32
};

void RunMerge(const MergeOptions& o) {
  SetThreads(o.threads);
  auto src = ModelWeights::Load(o.model, o.quantize.Get());
  const LlamaConfig& c = src->config;
  auto adapter = Adapter::Load(o.adapter, c, /*with_grads=*/false);
  if (adapter->config().tree_depth != 0)
    Fail("--adapter: only a LoRA (tree_depth 0) can be merged");
  if (!o.force && FileExists(JoinPath(o.out, "model.safetensors"))) {
    Fail(o.out + ": already holds a model; pass --force to overwrite it");
  }
  auto base = MakeTrainable(*src, /*with_grads=*/false);
  const float s = static_cast<float>(adapter->config().scale());
  int merged = 0;
  for (int l = 0; l < c.n_layers; ++l) {
    for (int m = 0; m < kNumModules; ++m) {
      const LoraWeights* lw = adapter->Get(l, static_cast<Module>(m));
      if (lw == nullptr) continue;
      const int idx = base->params.Find(ModulePath(l, static_cast<Module>(m)) + ".weight");
      LoraMerge(*lw, s, base->params.value(idx));
      ++merged;
    }
  }
  SaveModel(*base, o.out, Traits(src->layers[0].wq.format).merged_as);
  if (!src->tokenizer_model.empty())
    WriteFileAtomic(JoinPath(o.out, "tokenizer.model"), src->tokenizer_model);
  std::fprintf(stderr, "merged %d adapted projections into %s\n", merged, o.out.c_str());
  std::cout << nlohmann::json{{"out", o.out}, {"merged", merged}}.dump() << "\n";
}

}  // namespace

void AddMergeCommand(CLI::App& app) {
  auto o = std::make_shared<MergeOptions>();
  CLI::App* cmd = app.add_subcommand("merge", "fold a LoRA adapter into the base weights");
  cmd->add_option("--model", o->model,
                  "base model directory, GGUF file or bitsandbytes 4-bit directory")
      ->required();
  cmd->add_option("--adapter", o->adapter, "LoRA adapter directory")->required();
  cmd->add_option("--out", o->out, "merged model directory")->required();
  cmd->add_flag("--force", o->force, "overwrite a model already in --out");
  AddQuantizeFlags(cmd, &o->quantize);
  AddThreadsOption(cmd, &o->threads);
  cmd->callback([o]() { RunMerge(*o); });
}

}  // namespace tinylora
