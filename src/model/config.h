// The Llama model configuration, read from and written to Hugging Face's config.json.
#pragma once

#include <cstdint>
#include <string>
#include <utility>

namespace tinylora {

struct LlamaConfig {
  int hidden = 0;        // hidden_size (C)
  int intermediate = 0;  // intermediate_size (F)
  int n_layers = 0;      // num_hidden_layers (L)
  int n_heads = 0;       // num_attention_heads (NH)
  int n_kv_heads = 0;    // num_key_value_heads (KVH), divides NH
  int head_dim = 0;      // head_dim (HD), hidden / n_heads unless given
  int vocab = 0;         // vocab_size (V)
  int max_pos = 2048;    // max_position_embeddings
  double rms_eps = 1e-5;
  double rope_theta = 10000.0;
  bool tie_embeddings = false;
  int bos_id = 1;
  int eos_id = 2;
  std::string torch_dtype = "float32";

  int q_dim() const { return n_heads * head_dim; }
  int kv_dim() const { return n_kv_heads * head_dim; }
  int64_t ParamCount() const;
};

// Parses and validates config.json text; `what` names the file in errors (exit 2).
LlamaConfig ParseConfig(const std::string& json_text, const std::string& what);
LlamaConfig LoadConfig(const std::string& path);
std::string ConfigToJson(const LlamaConfig& c);

// Named presets: "tiny" (a few million parameters, for tests and the quickstart)
// and "tinyllama" (TinyLlama-1.1B's shape). Returns false for an unknown name.
bool PresetConfig(const std::string& name, LlamaConfig* out);

// The seven projections of a block, in this order everywhere (weights, adapters, gradients).
enum class Module { kQ, kK, kV, kO, kGate, kUp, kDown };
constexpr int kNumModules = 7;
const char* ModuleName(Module m);  // "q_proj", …
// "model.layers.{i}.self_attn.q_proj" / "model.layers.{i}.mlp.gate_proj"
std::string ModulePath(int layer, Module m);
// (out, in) of module m in a model of config c.
std::pair<int64_t, int64_t> ModuleShape(const LlamaConfig& c, Module m);

}  // namespace tinylora
