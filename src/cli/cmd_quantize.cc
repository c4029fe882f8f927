// tinylora quantize: write a base in another format as a file other tools read unchanged —
// a GGUF file llama.cpp loads (f32, f16, bf16, q8_0, q4_0), or a bitsandbytes 4-bit directory
// (nf4) for Hugging Face and PEFT.
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

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
    WriteLlamaGguf(*w, w->tokenizer_model, f, o.head, o.out);
  } else {
    WriteBnbModel(*w, o.double_quant, w->tokenizer_model, o.out);
  }
  std::fprintf(stderr, "wrote %s (%s) in %.1f s\n", o.out.c_str(), Traits(f).name, Seconds() - t0);
  std::cout << nlohmann::json{{"out", o.out}, {"format", Traits(f).name}, {"gguf", o.gguf}}.dump()
            << "\n";
}

}  // namespace

void AddQuantizeCommand(CLI::App& app) {
  auto o = std::make_shared<QuantizeOptions>();
  CLI::App* cmd = app.add_subcommand(
      "quantize",
      "write a base as a GGUF file (--gguf: f32, f16, bf16, q8_0, q4_0) or a bitsandbytes NF4 "
      "directory");
  cmd->add_option("--model", o->model, "model directory or GGUF file")->required();
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
