#include "adapters/lora.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>
#include <random>

#include "formats/safetensors.h"
#include "util/error.h"
#include "util/file.h"
#include "util/half.h"

namespace tinylora {

namespace {
const std::vector<Module> kAllModules = {Module::kQ,    Module::kK,  Module::kV,   Module::kO,
                                         Module::kGate, Module::kUp, Module::kDown};
}  // namespace

std::vector<Module> ParseTargets(const std::string& text, const std::string& what) {
  if (text == "all-linear") return kAllModules;
  std::vector<Module> out;
  size_t start = 0;
  while (start <= text.size()) {
    size_t comma = text.find(',', start);
    if (comma == std::string::npos) comma = text.size();
    const std::string name = text.substr(start, comma - start);
    bool found = false;
    for (Module m : kAllModules) {
      if (name == ModuleName(m)) {
        bool dup = false;
        for (Module o : out) dup |= o == m;
        if (!dup) out.push_back(m);
        found = true;
      }
    }
    if (!found) {
      Fail(what + ": unknown target module '" + name +
           "' (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj or all-linear)");
    }
    start = comma + 1;
  }
  return out;
}

std::string LoraTensorName(int layer, Module m, char which) {
  return "base_model.model." + ModulePath(layer, m) + ".lora_" + std::string(1, which) + ".weight";
}

std::string RouterTensorName(int layer, bool bias) {
  return "base_model.model.model.layers." + std::to_string(layer) + ".tree_router." +
         (bias ? "bias" : "weight");
}

bool Adapter::LeafMajorB(int i) const {
  const std::string& name = params_.name(i);
  const std::string tail = "lora_B.weight";
  return config_.tree_depth > 0 && name.size() >= tail.size() &&
         name.compare(name.size() - tail.size(), tail.size(), tail) == 0;
}

std::vector<int64_t> Adapter::FileShape(int i) const {
  const std::vector<int64_t>& s = params_.shape(i);
  return LeafMajorB(i) ? std::vector<int64_t>{s[1], s[0] * s[2]} : s;
}

namespace {

// A tree's B: leaf-major (L, out, r) in memory, PEFT's (out, L·r) in files. Row o of the file
// is leaf 0's row o, then leaf 1's, and so on.
struct TreeB {
  int64_t L, out, r;
  explicit TreeB(const std::vector<int64_t>& memory_shape)
      : L(memory_shape[0]), out(memory_shape[1]), r(memory_shape[2]) {}
  int64_t row_size() const { return L * r; }
  void ReadFileRow(const float* leaf_major, int64_t o, float* row) const {
    for (int64_t j = 0; j < L; ++j) std::copy_n(leaf_major + (j * out + o) * r, r, row + j * r);
  }
  void WriteFileRow(const float* row, int64_t o, float* leaf_major) const {
    for (int64_t j = 0; j < L; ++j) std::copy_n(row + j * r, r, leaf_major + (j * out + o) * r);
  }
};

}  // namespace

std::vector<float> Adapter::ToFileLayout(int i, const float* data) const {
  const int64_t n = params_.numel(i);
  if (!LeafMajorB(i)) return std::vector<float>(data, data + n);
  const TreeB b(params_.shape(i));
  std::vector<float> file(static_cast<size_t>(n));
  for (int64_t o = 0; o < b.out; ++o)
    b.ReadFileRow(data, o, &file[static_cast<size_t>(o * b.row_size())]);
  return file;
}

void Adapter::Build(const LlamaConfig& base, bool with_grads, const SafetensorsFile* in_place) {
  const int d = config_.tree_depth;
  if (d < 0 || d > kMaxTreeDepth) {
    Fail("tree_depth " + std::to_string(d) + " is outside 0.." + std::to_string(kMaxTreeDepth));
  }
  if (config_.gate != "path" && config_.gate != "unit") {
    Fail("gate '" + config_.gate + "' is not \"path\" or \"unit\"");
  }
  const int leaves = 1 << d;
  const int64_t R = static_cast<int64_t>(leaves) * config_.r;
  modules_.assign(static_cast<size_t>(base.n_layers), {});
  std::vector<std::array<int, 2>> index(static_cast<size_t>(base.n_layers) * kNumModules, {-1, -1});
  std::vector<std::array<int, 2>> router_index(static_cast<size_t>(base.n_layers), {-1, -1});
  for (int l = 0; l < base.n_layers; ++l) {
    for (Module m : kAllModules) {
      bool targeted = false;
      for (Module t : config_.targets) targeted |= t == m;
      if (!targeted) continue;
      auto [out, in] = ModuleShape(base, m);
      auto& idx = index[static_cast<size_t>(l) * kNumModules + static_cast<size_t>(m)];
      // One segment per leaf; B leaf-major in memory (see LoraWeights).
      idx[0] = params_.Add(LoraTensorName(l, m, 'A'), {R, in}, leaves);
      idx[1] = params_.Add(LoraTensorName(l, m, 'B'),
                           leaves > 1 ? std::vector<int64_t>{leaves, out, config_.r}
                                      : std::vector<int64_t>{out, config_.r},
                           leaves);
    }
    if (d > 0) {
      router_index[static_cast<size_t>(l)] = {
          params_.Add(RouterTensorName(l, false), {leaves - 1, base.hidden}, leaves - 1),
          params_.Add(RouterTensorName(l, true), {leaves - 1})};
    }
  }
  for (int i = 0; in_place != nullptr && i < params_.size(); ++i) {
    const TensorInfo* t = in_place->Find(params_.name(i));
    uint8_t* data = t != nullptr ? in_place->WritableData(*t) : nullptr;
    if (data != nullptr && t->dtype == DType::kF32 && t->shape == FileShape(i) && !LeafMajorB(i) &&
        reinterpret_cast<uintptr_t>(data) % alignof(float) == 0) {
      params_.SetExternal(i, reinterpret_cast<float*>(data));
    }
  }
  params_.Allocate(with_grads);
  routers_.assign(d > 0 ? static_cast<size_t>(base.n_layers) : 0, {});
  for (int l = 0; l < base.n_layers; ++l) {
    for (Module m : kAllModules) {
      const auto& idx = index[static_cast<size_t>(l) * kNumModules + static_cast<size_t>(m)];
      if (idx[0] < 0) continue;
      LoraWeights& w = modules_[static_cast<size_t>(l)][static_cast<size_t>(m)];
      w.r = config_.r;
      w.leaves = leaves;
      std::tie(w.out, w.in) = ModuleShape(base, m);
      w.A = params_.value(idx[0]);
      w.B = params_.value(idx[1]);
      w.grads = with_grads ? &params_ : nullptr;
      w.a_index = idx[0];
      w.b_index = idx[1];
    }
    if (d > 0) {
      const auto& ri = router_index[static_cast<size_t>(l)];
      RouterWeights& rw = routers_[static_cast<size_t>(l)];
      rw.depth = d;
      rw.hidden = base.hidden;
      rw.W = params_.value(ri[0]);
      rw.b = params_.value(ri[1]);
      rw.grads = with_grads ? &params_ : nullptr;
      rw.w_index = ri[0];
      rw.b_index = ri[1];
    }
  }
}

std::unique_ptr<Adapter> Adapter::Create(const LlamaConfig& base, const AdapterConfig& config,
                                         uint64_t seed, bool with_grads) {
  if (config.r <= 0) Fail("--rank must be positive");
  if (config.targets.empty()) Fail("--targets: no target modules");
  std::unique_ptr<Adapter> a(new Adapter());
  a->config_ = config;
  a->Build(base, with_grads);
  // A ~ U(-1/sqrt(in), 1/sqrt(in)) (kaiming_uniform_ with a = sqrt(5), as PEFT); B = 0;
  // router weights N(0, 1/hidden) so z ~ N(0, 1)-ish and tokens spread over the leaves; bias 0.
  std::mt19937_64 rng(seed);
  const auto ends_with = [](const std::string& s, const std::string& tail) {
    return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
  };
  for (int i = 0; i < a->params_.size(); ++i) {
    const std::string& name = a->params_.name(i);
    float* v = a->params_.value(i);
    const int64_t n = a->params_.numel(i);
    if (ends_with(name, "lora_A.weight")) {
      const float bound = 1.0f / std::sqrt(static_cast<float>(a->params_.shape(i)[1]));
      std::uniform_real_distribution<float> u(-bound, bound);
      for (int64_t k = 0; k < n; ++k) v[k] = u(rng);
    } else if (ends_with(name, "tree_router.weight")) {
      std::normal_distribution<float> g(0.0f, 1.0f / std::sqrt(static_cast<float>(base.hidden)));
      for (int64_t k = 0; k < n; ++k) v[k] = g(rng);
    }
  }
  return a;
}

std::unique_ptr<Adapter> Adapter::Load(const std::string& dir, const LlamaConfig& base,
                                       bool with_grads) {
  if (!IsDirectory(dir)) Fail(dir + ": not an adapter directory");
  const std::string cfg_path = JoinPath(dir, "adapter_config.json");
  nlohmann::json j = nlohmann::json::parse(ReadTextFile(cfg_path), nullptr, false);
  if (j.is_discarded() || !j.is_object()) Fail(cfg_path + ": not valid JSON");
  if (j.contains("peft_type") && (!j["peft_type"].is_string() || j["peft_type"] != "LORA")) {
    Fail(cfg_path + ": peft_type is not LORA");
  }
  if (j.contains("use_rslora") && j["use_rslora"].is_boolean() && j["use_rslora"].get<bool>()) {
    Fail(cfg_path + ": use_rslora adapters are not supported");
  }
  for (const char* key : {"alpha_pattern", "rank_pattern"}) {
    if (j.contains(key) && j[key].is_object() && !j[key].empty()) {
      Fail(cfg_path + ": '" + key + "' (per-module rank or alpha) is not supported");
    }
  }
  AdapterConfig c;
  if (!j.contains("r") || !j["r"].is_number_integer() || j["r"].get<int>() <= 0) {
    Fail(cfg_path + ": 'r' must be a positive integer");
  }
  c.r = j["r"].get<int>();
  c.alpha = j.contains("lora_alpha") && j["lora_alpha"].is_number() ? j["lora_alpha"].get<double>()
                                                                    : static_cast<double>(c.r);
  c.dropout = j.contains("lora_dropout") && j["lora_dropout"].is_number()
                  ? j["lora_dropout"].get<double>()
                  : 0.0;
  if (c.dropout < 0 || c.dropout >= 1) Fail(cfg_path + ": lora_dropout must be in [0, 1)");
  if (j.contains("fan_in_fan_out") && j["fan_in_fan_out"].is_boolean() &&
      j["fan_in_fan_out"].get<bool>())
    Fail(cfg_path + ": fan_in_fan_out adapters are not supported");
  if (j.contains("use_dora") && j["use_dora"].is_boolean() && j["use_dora"].get<bool>()) {
    Fail(cfg_path + ": DoRA adapters are not supported");
  }
  const auto& tm = j["target_modules"];
  if (tm.is_string()) {
    c.targets = ParseTargets(tm.get<std::string>(), cfg_path);
  } else if (tm.is_array()) {
    std::string joined;
    for (const auto& t : tm) {
      if (!t.is_string()) Fail(cfg_path + ": target_modules must be names");
      joined += (joined.empty() ? "" : ",") + t.get<std::string>();
    }
    c.targets = ParseTargets(joined, cfg_path);
  } else {
    Fail(cfg_path + ": missing target_modules");
  }
  c.tree_depth = j.contains("tree_depth") && j["tree_depth"].is_number_integer()
                     ? j["tree_depth"].get<int>()
                     : 0;
  if (j.contains("gate")) {
    if (!j["gate"].is_string() || (j["gate"] != "path" && j["gate"] != "unit")) {
      Fail(cfg_path + ": gate must be \"path\" or \"unit\"");
    }
    c.gate = j["gate"].get<std::string>();
  }
  if (j.contains("training")) c.training_json = j["training"].dump();

  std::unique_ptr<Adapter> a(new Adapter());
  a->config_ = c;
  const std::string st_path = JoinPath(dir, "adapter_model.safetensors");
  a->mapped_ = std::make_unique<SafetensorsFile>(st_path, /*copy_on_write=*/!with_grads);
  const SafetensorsFile& st = *a->mapped_;
  a->Build(base, with_grads, with_grads ? nullptr : &st);
  std::vector<float> peft_b;  // a tree's B in the file's layout, before it goes leaf-major
  for (int i = 0; i < a->params_.size(); ++i) {
    const TensorInfo* t = st.Find(a->params_.name(i));
    if (t == nullptr) Fail(st_path + ": tensor '" + a->params_.name(i) + "' is missing");
    const std::vector<int64_t> shape = a->FileShape(i);
    if (t->shape != shape) {
      const auto text = [](const std::vector<int64_t>& shape) {
        std::string out = "[";
        for (size_t k = 0; k < shape.size(); ++k) out += (k ? ", " : "") + std::to_string(shape[k]);
        return out + "]";
      };
      Fail(st_path + ": tensor '" + a->params_.name(i) + "' has shape " + text(t->shape) +
           " but the adapter's config (r, tree_depth, targets) on this base model implies " +
           text(shape) + " (maybe wrong base model?)");
    }
    const int64_t n = a->params_.numel(i);
    if (a->params_.value(i) == reinterpret_cast<const float*>(st.Data(*t))) continue;  // in place
    const bool leaf_major = a->LeafMajorB(i);
    if (leaf_major) peft_b.resize(static_cast<size_t>(n));
    if (!WidenToF32(t->dtype, st.Data(*t), n, leaf_major ? peft_b.data() : a->params_.value(i))) {
      Fail(st_path + ": tensor '" + t->name + "' has dtype " + DTypeName(t->dtype) +
           "; only F32, F16 and BF16 are supported");
    }
    if (leaf_major) {
      const TreeB b(a->params_.shape(i));
      for (int64_t o = 0; o < b.out; ++o)
        b.WriteFileRow(&peft_b[static_cast<size_t>(o * b.row_size())], o, a->params_.value(i));
    }
  }
  for (const TensorInfo& t : st.header().tensors) {
    if (a->params_.Find(t.name) < 0) {
      Fail(st_path + ": tensor '" + t.name + "' is not part of this adapter's config");
    }
  }
  if (with_grads) a->mapped_.reset();  // every tensor was copied
  return a;
}

void Adapter::Save(const std::string& dir) const {
  MakeDirectories(dir);
  nlohmann::ordered_json j;
  j["peft_type"] = "LORA";
  j["task_type"] = "CAUSAL_LM";
  j["r"] = config_.r;
  j["lora_alpha"] = config_.alpha;
  j["lora_dropout"] = config_.dropout;
  std::vector<std::string> targets;
  for (Module m : config_.targets) targets.push_back(ModuleName(m));
  j["target_modules"] = targets;
  j["bias"] = "none";
  j["fan_in_fan_out"] = false;
  j["tree_depth"] = config_.tree_depth;
  j["gate"] = config_.gate;
  j["training"] = nlohmann::json::parse(config_.training_json);
  std::vector<TensorToWrite> tensors;
  for (int i = 0; i < params_.size(); ++i) {
    if (!LeafMajorB(i)) {
      tensors.push_back({params_.name(i), DType::kF32, params_.shape(i), params_.value(i)});
      continue;
    }
    // Streamed into PEFT's layout a row at a time: no second copy of the bank.
    const TreeB b(params_.shape(i));
    const float* src = params_.value(i);
    tensors.push_back(
        {params_.name(i), DType::kF32, FileShape(i), nullptr, [b, src](const ByteSink& sink) {
           std::vector<float> row(static_cast<size_t>(b.row_size()));
           for (int64_t o = 0; o < b.out; ++o) {
             b.ReadFileRow(src, o, row.data());
             sink(row.data(), sizeof(float) * row.size());
           }
         }});
  }
  WriteSafetensors(JoinPath(dir, "adapter_model.safetensors"), tensors, {{"format", "pt"}});
  WriteFileAtomic(JoinPath(dir, "adapter_config.json"), j.dump(2) + "\n");
}

}  // namespace tinylora
