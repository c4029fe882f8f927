// tinylora inspect: what a model directory holds. A JSON summary on stdout, a table on stderr.
#include <cstdio>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "model/tokenizer.h"
#include "model/weights.h"
#include "util/error.h"
#include "util/file.h"

namespace tinylora {

namespace {

void InspectModel(const std::string& dir) {
  auto w = ModelWeights::Load(dir);  // validates every tensor against the config
  const LlamaConfig& c = w->config;
  // Every tensor stored, from the files themselves.
  std::vector<std::string> files;
  if (FileExists(JoinPath(dir, "model.safetensors.index.json"))) {
    auto idx = nlohmann::json::parse(ReadTextFile(JoinPath(dir, "model.safetensors.index.json")));
    std::map<std::string, int> seen;
    for (auto& [name, file] : idx["weight_map"].items()) {
      if (seen[file.get<std::string>()]++ == 0) files.push_back(file.get<std::string>());
    }
  } else {
    files.push_back("model.safetensors");
  }
  std::map<std::string, int64_t> params_by_dtype;
  int64_t n_tensors = 0, bytes = 0;
  std::fprintf(stderr, "%-56s %-5s %s\n", "tensor", "dtype", "shape");
  for (const std::string& f : files) {
    SafetensorsFile st(JoinPath(dir, f));
    for (const TensorInfo& t : st.header().tensors) {
      std::string shape;
      for (int64_t d : t.shape) shape += (shape.empty() ? "" : " x ") + std::to_string(d);
      std::fprintf(stderr, "%-56s %-5s %s\n", t.name.c_str(), DTypeName(t.dtype), shape.c_str());
      params_by_dtype[DTypeName(t.dtype)] += t.numel();
      bytes += static_cast<int64_t>(t.nbytes);
      ++n_tensors;
    }
  }
  int64_t params = 0;
  for (auto& [k, v] : params_by_dtype) params += v;
  nlohmann::json tokenizer = nullptr;
  if (FileExists(JoinPath(dir, "tokenizer.model"))) {
    Tokenizer tok(JoinPath(dir, "tokenizer.model"));
    tokenizer = {{"vocab", tok.vocab_size()}, {"bos", tok.bos_id()}, {"eos", tok.eos_id()}};
  }
  std::fprintf(
      stderr,
      "\nllama model: %d layers, hidden %d, intermediate %d, heads %d (kv %d, dim %d), vocab %d, "
      "context %d, %s head\n%lld parameters in %lld tensors, %.1f MB in %zu file(s)%s\n",
      c.n_layers, c.hidden, c.intermediate, c.n_heads, c.n_kv_heads, c.head_dim, c.vocab, c.max_pos,
      c.tie_embeddings ? "tied" : "untied", static_cast<long long>(params),
      static_cast<long long>(n_tensors), bytes / 1e6, files.size(),
      tokenizer.is_null() ? ", no tokenizer" : "");
  nlohmann::json out = {{"kind", "model"},
                        {"dir", dir},
                        {"config", nlohmann::json::parse(ConfigToJson(c))},
                        {"params", params},
                        {"params_by_dtype", params_by_dtype},
                        {"tensors", n_tensors},
                        {"bytes", bytes},
                        {"files", files},
                        {"tokenizer", tokenizer}};
  std::cout << out.dump() << "\n";
}

}  // namespace

void AddInspectCommand(CLI::App& app) {
  auto dir = std::make_shared<std::string>();
  CLI::App* cmd = app.add_subcommand("inspect", "show what a model directory holds");
  cmd->add_option("dir", *dir, "the directory")->required();
  cmd->callback([dir]() {
    if (!IsDirectory(*dir)) Fail(*dir + ": not a directory");
    if (FileExists(JoinPath(*dir, "config.json"))) {
      InspectModel(*dir);
    } else {
      Fail(*dir + ": no config.json; not a model directory");
    }
  });
}

}  // namespace tinylora
