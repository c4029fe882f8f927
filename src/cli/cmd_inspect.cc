// tinylora inspect: what a model directory (or GGUF file) or an adapter directory holds. A JSON
// summary on stdout, a table on stderr.
#include <cstdio>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>

#include "adapters/lora.h"
#include "cli/commands.h"
#include "cli/common.h"
#include "formats/gguf.h"
#include "model/tokenizer.h"
#include "model/weights.h"
#include "util/error.h"
#include "util/file.h"

namespace tinylora {

namespace {

// Every matrix as loaded (after --quantize): its format and bits per weight, by format.
nlohmann::json HeldMatrices(const ModelWeights& w) {
  std::map<std::string, std::pair<int64_t, int64_t>> by_format;  // params, bytes
  auto add = [&](const Tensor& t) {
    auto& [params, bytes] = by_format[Traits(t.format).name];
    params += t.numel();
    bytes += t.nbytes();
  };
  add(w.embed);
  for (const auto& l : w.layers)
    for (int m = 0; m < kNumModules; ++m) add(l.weight(static_cast<Module>(m)));
  if (w.lm_head.data != w.embed.data) add(w.lm_head);
  nlohmann::json out = nlohmann::json::object();
  std::fprintf(stderr, "\nmatrices as held in memory:\n");
  for (const auto& [name, pb] : by_format) {
    const double bits = 8.0 * static_cast<double>(pb.second) / static_cast<double>(pb.first);
    std::fprintf(stderr, "  %-5s %lld parameters, %.1f MB, %.2f bits per weight\n", name.c_str(),
                 static_cast<long long>(pb.first), pb.second / 1e6, bits);
    out[name] = {{"params", pb.first}, {"bytes", pb.second}, {"bits_per_weight", bits}};
  }
  return out;
}

void InspectModel(const std::string& dir, const QuantizeFlags& q) {
  auto w = ModelWeights::Load(dir, q.Get());  // validates every tensor against the config
  const LlamaConfig& c = w->config;
  // Every tensor stored, from the files themselves.
  std::vector<std::string> files;
  std::map<std::string, int64_t> params_by_dtype;
  int64_t n_tensors = 0, bytes = 0;
  std::fprintf(stderr, "%-56s %-5s %s\n", "tensor", "dtype", "shape");
  auto row = [&](const std::string& name, const std::string& dtype,
                 const std::vector<int64_t>& shape, int64_t numel, size_t nbytes) {
    std::string text;
    for (int64_t d : shape) text += (text.empty() ? "" : " x ") + std::to_string(d);
    std::fprintf(stderr, "%-56s %-5s %s\n", name.c_str(), dtype.c_str(), text.c_str());
    params_by_dtype[dtype] += numel;
    bytes += static_cast<int64_t>(nbytes);
    ++n_tensors;
  };
  if (IsGgufFile(dir)) {  // GGUF: its own names, shapes outermost first as everywhere else
    files.push_back(dir);
    GgufFile g(dir);
    for (const GgufTensor& t : g.header().tensors) {
      row(t.name, GgmlTypeName(static_cast<uint32_t>(t.type)),
          std::vector<int64_t>(t.ne.rbegin(), t.ne.rend()), t.numel(), t.nbytes);
    }
  } else {
    if (FileExists(JoinPath(dir, "model.safetensors.index.json"))) {
      auto idx = nlohmann::json::parse(ReadTextFile(JoinPath(dir, "model.safetensors.index.json")));
      std::map<std::string, int> seen;
      for (auto& [name, file] : idx["weight_map"].items()) {
        if (seen[file.get<std::string>()]++ == 0) files.push_back(file.get<std::string>());
      }
    } else {
      files.push_back("model.safetensors");
    }
    for (const std::string& f : files) {
      SafetensorsFile st(JoinPath(dir, f));
      for (const TensorInfo& t : st.header().tensors)
        row(t.name, DTypeName(t.dtype), t.shape, t.numel(), t.nbytes);
    }
  }
  int64_t params = 0;
  for (auto& [k, v] : params_by_dtype) params += v;
  nlohmann::json tokenizer = nullptr;
  if (!w->tokenizer_model.empty()) {
    Tokenizer tok(w->tokenizer_model, w->tokenizer_name);
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
                        {"tokenizer", tokenizer},
                        {"held", HeldMatrices(*w)}};
  std::cout << out.dump() << "\n";
}

void InspectAdapter(const std::string& dir) {
  const std::string cfg_path = JoinPath(dir, "adapter_config.json");
  nlohmann::json cfg = nlohmann::json::parse(ReadTextFile(cfg_path), nullptr, false);
  if (cfg.is_discarded() || !cfg.is_object()) Fail(cfg_path + ": not valid JSON");
  const int depth = cfg.value("tree_depth", 0);
  const AdapterParams counts = CountAdapterParams(dir, depth);
  const int64_t params = counts.params, router = counts.router, active = counts.active_per_token;
  SafetensorsFile st(JoinPath(dir, "adapter_model.safetensors"));
  nlohmann::json out = {{"kind", "adapter"},
                        {"dir", dir},
                        {"r", cfg.value("r", 0)},
                        {"lora_alpha", cfg.value("lora_alpha", 0.0)},
                        {"tree_depth", depth},
                        {"gate", cfg.value("gate", std::string("path"))},
                        {"target_modules", cfg.value("target_modules", nlohmann::json::array())},
                        {"params", params},
                        {"router_params", router},
                        {"active_params_per_token", active},
                        {"tensors", st.header().tensors.size()}};
  if (cfg.contains("training")) out["training"] = cfg["training"];
  std::fprintf(
      stderr,
      "%s adapter: r=%d, %d leaves per projection, %lld parameters (%lld active per token)\n",
      depth > 0 ? "tree-LoRA" : "LoRA", cfg.value("r", 0), 1 << depth,
      static_cast<long long>(params), static_cast<long long>(active));
  if (cfg.contains("training") && cfg["training"].contains("routing_stats")) {
    const auto& rs = cfg["training"]["routing_stats"];
    std::fprintf(stderr,
                 "routing at the end of training: entropy %.3f nats, %.0f%% of decisions decided\n",
                 rs.value("entropy", 0.0), 100 * rs.value("decided", 0.0));
    int block = 0;
    if (rs.contains("leaf_usage")) {
      for (const auto& usage : rs["leaf_usage"])
        std::fprintf(stderr, "  block %d leaf usage %s\n", block++, usage.dump().c_str());
    } else if (rs.contains("leaves_used") && rs.contains("top_leaf_share")) {
      for (size_t b = 0; b < rs["leaves_used"].size(); ++b)
        std::fprintf(stderr, "  block %zu: %s leaves used in the last step, largest %.1f%%\n", b,
                     rs["leaves_used"][b].dump().c_str(),
                     100 * rs["top_leaf_share"][b].get<double>());
    }
  }
  std::cout << out.dump() << "\n";
}

}  // namespace

AdapterParams CountAdapterParams(const std::string& dir, int tree_depth) {
  if (tree_depth < 0 || tree_depth > kMaxTreeDepth) {
    Fail(JoinPath(dir, "adapter_config.json") + ": tree_depth " + std::to_string(tree_depth) +
         " is outside [0, " + std::to_string(kMaxTreeDepth) + "]");
  }
  SafetensorsFile st(JoinPath(dir, "adapter_model.safetensors"));
  AdapterParams p;
  for (const TensorInfo& t : st.header().tensors) {
    p.params += t.numel();
    if (t.name.find("tree_router") != std::string::npos) p.router += t.numel();
  }
  // A token uses one leaf of each projection and d router rows per block.
  const int64_t leaf_params = (p.params - p.router) >> tree_depth;
  p.active_per_token =
      leaf_params + (tree_depth > 0 ? p.router / ((1 << tree_depth) - 1) * tree_depth : 0);
  return p;
}

void AddInspectCommand(CLI::App& app) {
  auto dir = std::make_shared<std::string>();
  auto q = std::make_shared<QuantizeFlags>();
  CLI::App* cmd = app.add_subcommand(
      "inspect", "show what a model or adapter directory (or a GGUF model file) holds");
  cmd->add_option("dir", *dir, "the directory or GGUF file")->required();
  AddQuantizeFlags(cmd, q.get());
  cmd->callback([dir, q]() {
    if (IsGgufFile(*dir)) return InspectModel(*dir, *q);
    if (!IsDirectory(*dir)) Fail(*dir + ": not a directory or GGUF file");
    if (FileExists(JoinPath(*dir, "adapter_config.json"))) {
      InspectAdapter(*dir);
    } else if (FileExists(JoinPath(*dir, "config.json"))) {
      InspectModel(*dir, *q);
    } else {
      Fail(*dir + ": neither a model (config.json) nor an adapter (adapter_config.json) directory");
    }
  });
}

}  // namespace tinylora
