// Files for other tools, read by them unchanged. tinylora quantize: a base as a GGUF file
// llama.cpp loads (f32, f16, bf16, q8_0, q4_0) or a bitsandbytes 4-bit directory (nf4) for
// Hugging Face and PEFT; tinylora export-lora: a LoRA adapter as a GGUF LoRA file (--lora).
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "adapters/lora.h"
#include "adapters/lora_gguf.h"
#include "cli/common.h"
#include "model/bnb_nf4.h"
#include "model/gguf_llama.h"
#include "model/weights.h"
#include "util/error.h"
#include "util/file.h"

namespace tinylora {

namespace {

struct QuantizeOptions {
  std::string model, out, format;
  bool gguf = false, double_quant = false, head = false, force = false;
  int threads = 0;
};

void RunQuantize(const QuantizeOptions& o) {
  const Format f = FormatNamed(o.format, "--format");
  if (o.double_quant && f != Format::kNF4)
    Fail("--double-quant: only with --format nf4 (it quantises NF4's absmaxes)");
  if (o.gguf && f == Format::kNF4)
    Fail(
        "--format nf4 --gguf: GGUF has no NF4 type; nf4 is written as a bitsandbytes directory "
        "(drop --gguf)");
  if (!o.gguf && f != Format::kNF4)
    Fail("--format " + o.format + ": written as a GGUF file; give --gguf");
  if (!o.force && (o.gguf ? FileExists(o.out) : FileExists(JoinPath(o.out, "model.safetensors"))))
    Fail(o.out + ": already holds a model; pass --force to overwrite it");
  SetThreads(o.threads);
  const double t0 = Seconds();
  auto w = ModelWeights::Load(o.model);
  if (o.gguf) {
    WriteLlamaGguf(*w, f, o.head, o.out);
  } else {
    WriteBnbModel(*w, o.double_quant, o.out);
  }
  std::fprintf(stderr, "wrote %s (%s) in %.1f s\n", o.out.c_str(), Traits(f).name, Seconds() - t0);
  std::cout << nlohmann::json{{"out", o.out}, {"format", Traits(f).name}, {"gguf", o.gguf}}.dump()
            << "\n";
}

struct ExportLoraOptions {
  std::string model, adapter, out;
  bool force = false;
};

void RunExportLora(const ExportLoraOptions& o) {
  if (!o.force && FileExists(o.out)) Fail(o.out + ": already exists; pass --force to overwrite it");
  const LlamaConfig c = ModelConfig(o.model);  // the adapter's shapes; no tensor is read
  auto adapter = Adapter::Load(o.adapter, c, /*with_grads=*/false);
  WriteLoraGguf(*adapter, c, o.out);
  std::fprintf(stderr, "wrote %s (LoRA r=%d, alpha %g)\n", o.out.c_str(), adapter->config().r,
               adapter->config().alpha);
  std::cout << nlohmann::json{{"out", o.out}, {"r", adapter->config().r}}.dump() << "\n";
}

}  // namespace

void AddExportLoraCommand(CLI::App& app) {
  auto o = std::make_shared<ExportLoraOptions>();
  CLI::App* cmd = app.add_subcommand(
      "export-lora",
      "write a LoRA adapter (tree_depth 0) as a GGUF LoRA file for llama.cpp's --lora");
  cmd->add_option("--model", o->model,
                  "the base model directory, GGUF file or bitsandbytes 4-bit directory")
      ->required();
  cmd->add_option("--adapter", o->adapter, "the LoRA adapter directory")->required();
  cmd->add_option("--out", o->out, "the GGUF file to write")->required();
  cmd->add_flag("--force", o->force, "overwrite --out");
  cmd->callback([o]() { RunExportLora(*o); });
}

void AddQuantizeCommand(CLI::App& app) {
  auto o = std::make_shared<QuantizeOptions>();
  CLI::App* cmd = app.add_subcommand(
      "quantize",
      "write a base as a GGUF file (--gguf: f32, f16, bf16, q8_0, q4_0) or a bitsandbytes NF4 "
      "directory");
  cmd->add_option("--model", o->model, "model directory, GGUF file or bitsandbytes 4-bit directory")
      ->required();
  cmd->add_option("--format", o->format, "f32, f16, bf16, q8_0, q4_0 (with --gguf) or nf4")
      ->required();
  cmd->add_option("--out", o->out, "the GGUF file (or bitsandbytes directory) to write")
      ->required();
  cmd->add_flag("--gguf", o->gguf, "write a GGUF file llama.cpp loads");
  cmd->add_flag("--double-quant", o->double_quant, "nf4: bitsandbytes' double quantisation");
  cmd->add_flag("--quantize-head", o->head,
                "q8_0/q4_0: the embedding and head too (else kept as they are)");
  cmd->add_flag("--force", o->force, "overwrite --out");
  AddThreadsOption(cmd, &o->threads);
  cmd->callback([o]() { RunQuantize(*o); });
}

}  // namespace tinylora
