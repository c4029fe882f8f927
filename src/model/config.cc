#include "model/config.h"

#include <nlohmann/json.hpp>

#include "util/error.h"
#include "util/file.h"

namespace tinylora {

int64_t LlamaConfig::ParamCount() const {
  const int64_t c = hidden, f = intermediate;
  const int64_t per_layer = c * q_dim() + 2 * c * kv_dim() + q_dim() * c + 3 * c * f + 2 * c;
  return static_cast<int64_t>(vocab) * c * (tie_embeddings ? 1 : 2) + n_layers * per_layer + c;
}

namespace {

int GetInt(const nlohmann::json& j, const char* key, const std::string& what, bool required,
           int fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (required) Fail(what + ": missing key '" + key + "'");
    return fallback;
  }
  if (!it->is_number_integer()) Fail(what + ": '" + key + "' must be an integer");
  int64_t v = it->get<int64_t>();
  if (v <= 0 || v > (int64_t{1} << 30))
    Fail(what + ": '" + key + "' = " + std::to_string(v) + " is out of range");
  return static_cast<int>(v);
}

double GetFloat(const nlohmann::json& j, const char* key, const std::string& what,
                double fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_number()) Fail(what + ": '" + key + "' must be a number");
  double v = it->get<double>();
  if (!(v > 0) || v > 1e12)
    Fail(what + ": '" + key + "' = " + std::to_string(v) + " is out of range");
  return v;
}

}  // namespace

LlamaConfig ParseConfig(const std::string& json_text, const std::string& what) {
  nlohmann::json j = nlohmann::json::parse(json_text, nullptr, false);
  if (j.is_discarded()) Fail(what + ": not valid JSON");
  if (!j.is_object()) Fail(what + ": not a JSON object");
  if (auto mt = j.find("model_type"); mt != j.end() && mt->is_string() && *mt != "llama") {
    Fail(what + ": model_type '" + mt->get<std::string>() +
         "' is not supported (expected 'llama')");
  }
  if (auto rs = j.find("rope_scaling"); rs != j.end() && !rs->is_null()) {
    Fail(what + ": rope_scaling is not supported");
  }
  for (const char* bias : {"attention_bias", "mlp_bias"}) {
    if (auto b = j.find(bias); b != j.end() && b->is_boolean() && b->get<bool>()) {
      Fail(what + ": '" + bias + "' is true; biases on the projections are not supported");
    }
  }
  if (auto act = j.find("hidden_act"); act != j.end() && act->is_string() && *act != "silu") {
    Fail(what + ": hidden_act '" + act->get<std::string>() +
         "' is not supported (expected 'silu')");
  }
  LlamaConfig c;
  c.hidden = GetInt(j, "hidden_size", what, true, 0);
  c.intermediate = GetInt(j, "intermediate_size", what, true, 0);
  c.n_layers = GetInt(j, "num_hidden_layers", what, true, 0);
  c.n_heads = GetInt(j, "num_attention_heads", what, true, 0);
  c.n_kv_heads = GetInt(j, "num_key_value_heads", what, false, c.n_heads);
  c.vocab = GetInt(j, "vocab_size", what, true, 0);
  c.max_pos = GetInt(j, "max_position_embeddings", what, false, 2048);
  c.rms_eps = GetFloat(j, "rms_norm_eps", what, 1e-6);
  c.rope_theta = GetFloat(j, "rope_theta", what, 10000.0);
  if (auto t = j.find("tie_word_embeddings"); t != j.end() && !t->is_null()) {
    if (!t->is_boolean()) Fail(what + ": 'tie_word_embeddings' must be true or false");
    c.tie_embeddings = t->get<bool>();
  }
  if (auto b = j.find("bos_token_id"); b != j.end() && b->is_number_integer())
    c.bos_id = b->get<int>();
  if (auto e = j.find("eos_token_id"); e != j.end()) {
    if (e->is_number_integer()) {
      c.eos_id = e->get<int>();
    } else if (e->is_array() && !e->empty() && (*e)[0].is_number_integer()) {
      c.eos_id = (*e)[0].get<int>();  // several end tokens (Llama 3): the first stops generation
    }
  }
  if (auto d = j.find("torch_dtype"); d != j.end() && d->is_string())
    c.torch_dtype = d->get<std::string>();

  if (j.contains("head_dim") && !j["head_dim"].is_null()) {
    c.head_dim = GetInt(j, "head_dim", what, true, 0);
  } else {
    if (c.hidden % c.n_heads != 0) {
      Fail(what + ": hidden_size " + std::to_string(c.hidden) +
           " is not divisible by num_attention_heads " + std::to_string(c.n_heads));
    }
    c.head_dim = c.hidden / c.n_heads;
  }
  if (c.head_dim % 2 != 0)
    Fail(what + ": head dimension " + std::to_string(c.head_dim) + " must be even for RoPE");
  if (c.n_heads % c.n_kv_heads != 0) {
    Fail(what + ": num_key_value_heads " + std::to_string(c.n_kv_heads) +
         " does not divide num_attention_heads " + std::to_string(c.n_heads));
  }
  if (c.bos_id < 0 || c.eos_id < 0 || c.bos_id >= c.vocab || c.eos_id >= c.vocab) {
    Fail(what + ": bos/eos token id outside the vocabulary");
  }
  // Bounds that keep every size computed from the config far from integer overflow.
  constexpr int64_t kMaxDim = int64_t{1} << 20;
  if (int64_t{c.n_heads} * c.head_dim > kMaxDim || c.hidden > kMaxDim || c.intermediate > kMaxDim ||
      c.vocab > (int64_t{1} << 24) || int64_t{c.max_pos} * c.head_dim > (int64_t{1} << 28) ||
      c.n_layers > 4096) {
    Fail(what + ": dimensions are implausibly large");
  }
  return c;
}

LlamaConfig LoadConfig(const std::string& path) { return ParseConfig(ReadTextFile(path), path); }

std::string ConfigToJson(const LlamaConfig& c) {
  nlohmann::ordered_json j;
  j["architectures"] = {"LlamaForCausalLM"};
  j["model_type"] = "llama";
  j["hidden_size"] = c.hidden;
  j["intermediate_size"] = c.intermediate;
  j["num_hidden_layers"] = c.n_layers;
  j["num_attention_heads"] = c.n_heads;
  j["num_key_value_heads"] = c.n_kv_heads;
  if (c.head_dim * c.n_heads != c.hidden) j["head_dim"] = c.head_dim;
  j["vocab_size"] = c.vocab;
  j["max_position_embeddings"] = c.max_pos;
  j["rms_norm_eps"] = c.rms_eps;
  j["rope_theta"] = c.rope_theta;
  j["tie_word_embeddings"] = c.tie_embeddings;
  j["hidden_act"] = "silu";
  j["bos_token_id"] = c.bos_id;
  j["eos_token_id"] = c.eos_id;
  j["torch_dtype"] = c.torch_dtype;
  return j.dump(2) + "\n";
}

bool PresetConfig(const std::string& name, LlamaConfig* out) {
  LlamaConfig c;
  if (name == "tiny") {
    c.hidden = 256;
    c.intermediate = 704;
    c.n_layers = 6;
    c.n_heads = 8;
    c.n_kv_heads = 2;
    c.vocab = 4096;
    c.max_pos = 512;
  } else if (name == "tinyllama") {
    c.hidden = 2048;
    c.intermediate = 5632;
    c.n_layers = 22;
    c.n_heads = 32;
    c.n_kv_heads = 4;
    c.vocab = 32000;
    c.max_pos = 2048;
  } else {
    return false;
  }
  c.head_dim = c.hidden / c.n_heads;
  c.rms_eps = 1e-5;
  c.rope_theta = 10000.0;
  *out = c;
  return true;
}

namespace {
constexpr const char* kModuleNames[kNumModules] = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                                   "gate_proj", "up_proj", "down_proj"};
}  // namespace

const char* ModuleName(Module m) { return kModuleNames[static_cast<int>(m)]; }

std::string ModulePath(int layer, Module m) {
  const bool attn = m == Module::kQ || m == Module::kK || m == Module::kV || m == Module::kO;
  return "model.layers." + std::to_string(layer) + (attn ? ".self_attn." : ".mlp.") + ModuleName(m);
}

std::pair<int64_t, int64_t> ModuleShape(const LlamaConfig& c, Module m) {
  switch (m) {
    case Module::kQ:
      return {c.q_dim(), c.hidden};
    case Module::kK:
    case Module::kV:
      return {c.kv_dim(), c.hidden};
    case Module::kO:
      return {c.hidden, c.q_dim()};
    case Module::kGate:
    case Module::kUp:
      return {c.intermediate, c.hidden};
    case Module::kDown:
      return {c.hidden, c.intermediate};
  }
  return {0, 0};
}

}  // namespace tinylora
