// tinylora init: write a randomly initialised model directory (config.json,
// model.safetensors, optionally tokenizer.model) for a config file or a preset.
#include <omp.h>

#include <cmath>
#include <cstring>
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "model/config.h"
#include "model/tokenizer.h"
#include "model/weights.h"
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

uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Element i of a N(0, std^2) tensor: Box-Muller on a counter-based hash, so any thread
// count gives the same values for the same seed.
float NormalAt(uint64_t key, int64_t i, float std) {
  const uint64_t h = SplitMix64(key ^ SplitMix64(static_cast<uint64_t>(i / 2)));
  const double u1 = (static_cast<double>(h >> 40) + 1.0) / 16777217.0;  // (0, 1]
  const double u2 = static_cast<double>(h & 0xffffffu) / 16777216.0;
  const double r = std::sqrt(-2.0 * std::log(u1));
  const double z = (i % 2 == 0) ? r * std::cos(2 * M_PI * u2) : r * std::sin(2 * M_PI * u2);
  return static_cast<float>(z * std);
}

void RunInit(const InitOptions& o) {
  SetThreads(o.threads);
  LlamaConfig c;
  if (!o.preset.empty()) {
    if (!PresetConfig(o.preset, &c))
      Fail("--preset: unknown preset '" + o.preset + "' (tiny, tinyllama)");
  } else {
    c = LoadConfig(o.config_file);
  }
  if (o.dtype != "f32" && o.dtype != "bf16")
    Fail("--dtype: expected f32 or bf16, got '" + o.dtype + "'");
  c.torch_dtype = o.dtype == "bf16" ? "bfloat16" : "float32";
  if (!o.tokenizer.empty()) {
    Tokenizer tok(o.tokenizer);
    if (!o.preset.empty()) {
      c.vocab = tok.vocab_size();  // a preset takes the tokenizer's vocabulary
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

  const DType dt = o.dtype == "bf16" ? DType::kBF16 : DType::kF32;
  const std::vector<TensorSpec> specs = ModelTensorSpecs(c);
  // Every tensor in memory, then one atomic write of the file.
  std::vector<TensorToWrite> to_write;
  std::vector<std::vector<uint8_t>> data(specs.size());
  int64_t total = 0;
  for (size_t k = 0; k < specs.size(); ++k) {
    const TensorSpec& s = specs[k];
    int64_t n = 1;
    for (int64_t d : s.shape) n *= d;
    total += n;
    data[k].resize(static_cast<size_t>(n) * DTypeSize(dt));
    const uint64_t key = SplitMix64(o.seed * 1000003u + k);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      const float v = s.is_norm ? 1.0f : NormalAt(key, i, 0.02f);
      if (dt == DType::kBF16) {
        const uint16_t h = F32ToBf16(v);
        std::memcpy(data[k].data() + 2 * i, &h, 2);
      } else {
        std::memcpy(data[k].data() + 4 * i, &v, 4);
      }
    }
    to_write.push_back({s.name, dt, s.shape, data[k].data()});
  }
  WriteSafetensors(model_path, to_write, {{"format", "pt"}});
  WriteFileAtomic(JoinPath(o.out, "config.json"), ConfigToJson(c));
  if (!o.tokenizer.empty()) {
    const std::string text = ReadTextFile(o.tokenizer);
    WriteFileAtomic(JoinPath(o.out, "tokenizer.model"), text);
  }
  std::cerr << "wrote " << o.out << ": " << total << " parameters (" << o.dtype << ")\n";
  std::cout << nlohmann::json{{"out", o.out}, {"params", total}}.dump() << "\n";
}

}  // namespace

void AddInitCommand(CLI::App& app) {
  auto o = std::make_shared<InitOptions>();
  CLI::App* cmd = app.add_subcommand("init", "write a randomly initialised model directory");
  auto* cfg = cmd->add_option("--config", o->config_file, "a config.json to initialise");
  auto* preset = cmd->add_option("--preset", o->preset, "a named config: tiny, tinyllama");
  cfg->excludes(preset);
  cmd->add_option("--out", o->out, "the model directory to write")->required();
  cmd->add_option("--tokenizer", o->tokenizer, "a SentencePiece tokenizer.model to include");
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
