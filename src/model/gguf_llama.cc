#include "model/gguf_llama.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>

#include "model/weights.h"
#include "util/error.h"

namespace tinylora {

namespace {

// The shortest decimal that reads back as the same F32 (GGUF stores eps as F32: 1e-5f is
// 1e-05 again, not 9.99999975e-06).
double ShortestDecimal(float f) {
  char buf[32];
  for (int digits = 1; digits <= 9; ++digits) {
    std::snprintf(buf, sizeof(buf), "%.*g", digits, static_cast<double>(f));
    if (std::strtof(buf, nullptr) == f) break;
  }
  return std::strtod(buf, nullptr);
}

int64_t IntKey(const GgufHeader& h, const std::string& key, const std::string& what, bool required,
               int64_t fallback) {
  const GgufValue* v = h.Find(key);
  if (v == nullptr) {
    if (required) Fail(what + ": missing key '" + key + "'");
    return fallback;
  }
  if (!v->is_integer()) {
    Fail(what + ": key '" + key + "' is " + GgufTypeName(v->type) + ", not an integer");
  }
  const int64_t x = v->AsInt();
  if (x <= 0 || x > (int64_t{1} << 30))
    Fail(what + ": key '" + key + "' = " + std::to_string(x) + " is out of range");
  return x;
}

double FloatKey(const GgufHeader& h, const std::string& key, const std::string& what,
                double fallback) {
  const GgufValue* v = h.Find(key);
  if (v == nullptr) return fallback;
  if (!v->is_number())
    Fail(what + ": key '" + key + "' is " + GgufTypeName(v->type) + ", not a number");
  return v->type == GgufType::kF32 ? ShortestDecimal(static_cast<float>(v->AsDouble()))
                                   : v->AsDouble();
}

std::string StringKey(const GgufHeader& h, const std::string& key, const std::string& what) {
  const GgufValue* v = h.Find(key);
  if (v == nullptr) return "";
  if (v->type != GgufType::kString) Fail(what + ": key '" + key + "' is not a string");
  return v->str;
}

constexpr const char* kModuleGgufNames[kNumModules] = {
    "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"};

}  // namespace

LlamaConfig ConfigFromGguf(const GgufHeader& h, const std::string& what) {
  const std::string arch = StringKey(h, "general.architecture", what);
  if (arch != "llama") {
    Fail(what + ": general.architecture is '" + arch +
         "'; tinylora reads Llama models ('llama') only");
  }
  const std::string rope_scaling = StringKey(h, "llama.rope.scaling.type", what);
  if (!rope_scaling.empty() && rope_scaling != "none")
    Fail(what + ": llama.rope.scaling.type '" + rope_scaling + "' is not supported");
  nlohmann::json j;
  j["model_type"] = "llama";
  j["hidden_size"] = IntKey(h, "llama.embedding_length", what, true, 0);
  j["intermediate_size"] = IntKey(h, "llama.feed_forward_length", what, true, 0);
  j["num_hidden_layers"] = IntKey(h, "llama.block_count", what, true, 0);
  const int64_t heads = IntKey(h, "llama.attention.head_count", what, true, 0);
  j["num_attention_heads"] = heads;
  j["num_key_value_heads"] = IntKey(h, "llama.attention.head_count_kv", what, false, heads);
  j["max_position_embeddings"] = IntKey(h, "llama.context_length", what, false, 2048);
  j["rms_norm_eps"] = FloatKey(h, "llama.attention.layer_norm_rms_epsilon", what, 1e-5);
  j["rope_theta"] = FloatKey(h, "llama.rope.freq_base", what, 10000.0);
  const int64_t key_length = IntKey(h, "llama.attention.key_length", what, false, 0);
  if (key_length > 0) {
    j["head_dim"] = key_length;
    if (IntKey(h, "llama.attention.value_length", what, false, key_length) != key_length)
      Fail(what + ": llama.attention.value_length differs from key_length (not supported)");
  }
  // The vocabulary: llama.vocab_size, else the tokenizer's, else the embedding's rows.
  const GgufTensor* embd = h.FindTensor("token_embd.weight");
  if (embd == nullptr) Fail(what + ": tensor 'token_embd.weight' is missing");
  int64_t vocab = embd->ne.size() == 2 ? embd->ne[1] : 0;
  if (const GgufValue* tokens = h.Find("tokenizer.ggml.tokens");
      tokens != nullptr && tokens->type == GgufType::kArray)
    vocab = static_cast<int64_t>(tokens->count);
  j["vocab_size"] = IntKey(h, "llama.vocab_size", what, false, vocab);
  j["tie_word_embeddings"] = h.FindTensor("output.weight") == nullptr;
  for (const char* id : {"bos", "eos"}) {
    const std::string key = std::string("tokenizer.ggml.") + id + "_token_id";
    if (const GgufValue* v = h.Find(key)) {
      if (!v->is_integer()) Fail(what + ": key '" + key + "' is not an integer");
      j[std::string(id) + "_token_id"] = v->AsInt();
    }
  }
  const char* dtype = Traits(FormatOfGgml(embd->type)).torch_dtype;  // null: a block format
  j["torch_dtype"] = dtype != nullptr ? dtype : "float32";
  LlamaConfig c = ParseConfig(j.dump(), what);
  const int64_t rot = IntKey(h, "llama.rope.dimension_count", what, false, c.head_dim);
  if (rot != c.head_dim) {
    Fail(what + ": llama.rope.dimension_count " + std::to_string(rot) + " is not the head " +
         "dimension " + std::to_string(c.head_dim) + " (partial rotary is not supported)");
  }
  return c;
}

std::string GgufTensorName(const std::string& hf) {
  if (hf == "model.embed_tokens.weight") return "token_embd.weight";
  if (hf == "model.norm.weight") return "output_norm.weight";
  if (hf == "lm_head.weight") return "output.weight";
  const std::string prefix = "model.layers.";
  if (hf.compare(0, prefix.size(), prefix) != 0) return "";
  const size_t dot = hf.find('.', prefix.size());
  if (dot == std::string::npos) return "";
  const std::string layer = hf.substr(prefix.size(), dot - prefix.size());
  const std::string rest = hf.substr(dot + 1);
  const std::string blk = "blk." + layer + ".";
  if (rest == "input_layernorm.weight") return blk + "attn_norm.weight";
  if (rest == "post_attention_layernorm.weight") return blk + "ffn_norm.weight";
  for (int m = 0; m < kNumModules; ++m) {
    const std::string name = ModuleName(static_cast<Module>(m));
    const std::string where = m < 4 ? "self_attn." : "mlp.";
    if (rest == where + name + ".weight") return blk + kModuleGgufNames[m] + ".weight";
  }
  return "";
}

int64_t GgufRopeRow(int64_t r, int head_dim) {
  const int64_t hd = head_dim, half = hd / 2;
  const int64_t head = r / hd, i = r % hd;
  return head * hd + 2 * (i % half) + i / half;
}

int64_t HfRopeRow(int64_t g, int head_dim) {
  const int64_t hd = head_dim, i = g % hd;
  return g / hd * hd + (i % 2) * (hd / 2) + i / 2;
}

bool PermutedInGguf(const std::string& hf_name) {
  auto ends = [&](const std::string& s) {
    return hf_name.size() >= s.size() &&
           hf_name.compare(hf_name.size() - s.size(), s.size(), s) == 0;
  };
  return ends("self_attn.q_proj.weight") || ends("self_attn.k_proj.weight");
}

Format FormatOfGgml(GgmlType t) {
  switch (t) {
    case GgmlType::kF32:
      return Format::kF32;
    case GgmlType::kF16:
      return Format::kF16;
    case GgmlType::kBF16:
      return Format::kBF16;
    case GgmlType::kQ8_0:
      return Format::kQ8_0;
    case GgmlType::kQ4_0:
      return Format::kQ4_0;
  }
  return Format::kF32;
}

GgmlType GgmlOfFormat(Format f, const std::string& what) {
  switch (f) {
    case Format::kF32:
      return GgmlType::kF32;
    case Format::kF16:
      return GgmlType::kF16;
    case Format::kBF16:
      return GgmlType::kBF16;
    case Format::kQ8_0:
    case Format::kQ8_0I8:
      return GgmlType::kQ8_0;
    case Format::kQ4_0:
    case Format::kQ4_0I8:
      return GgmlType::kQ4_0;
    case Format::kNF4:
      break;
  }
  Fail(what + ": GGUF has no " + Traits(f).name + " type (write nf4 as a bitsandbytes directory)");
}

bool TokenizerFromGguf(const GgufHeader& h, const std::string& what, SpmModel* out,
                       std::string* why) {
  const std::string model = StringKey(h, "tokenizer.ggml.model", what);
  if (model != "llama") {
    *why = model.empty()
               ? "it has no tokenizer.ggml.model"
               : "its tokenizer.ggml.model is '" + model + "', not SentencePiece's 'llama'";
    return false;
  }
  const GgufValue* tokens = h.Find("tokenizer.ggml.tokens");
  if (tokens == nullptr || tokens->type != GgufType::kArray || tokens->elem != GgufType::kString ||
      tokens->count == 0)
    Fail(what + ": tokenizer.ggml.tokens is missing or not an array of strings");
  const uint64_t n = tokens->count;
  auto numeric = [&](const char* key) -> const GgufValue* {
    const GgufValue* v = h.Find(key);
    if (v == nullptr) return nullptr;
    if (v->type != GgufType::kArray || v->elem == GgufType::kString || v->count != n) {
      Fail(what + ": " + key + " is not an array of " + std::to_string(n) +
           " numbers (one per token)");
    }
    return v;
  };
  const GgufValue* scores = numeric("tokenizer.ggml.scores");
  const GgufValue* types = numeric("tokenizer.ggml.token_type");
  SpmModel m;
  m.model_type = 2;  // llama.cpp's SPM tokenizer merges by score: SentencePiece's BPE
  m.pieces.resize(static_cast<size_t>(n));
  for (uint64_t i = 0; i < n; ++i) {
    SpmPiece& p = m.pieces[static_cast<size_t>(i)];
    p.piece = tokens->strs[static_cast<size_t>(i)];
    if (p.piece.empty()) Fail(what + ": token " + std::to_string(i) + " is empty");
    p.score = scores ? static_cast<float>(scores->At(i)) : 0.0f;
    const int t = types ? static_cast<int>(types->At(i)) : 1;
    if (t < 1 || t > 6)
      Fail(what + ": token " + std::to_string(i) + " has token type " + std::to_string(t));
    p.type = static_cast<SpmPieceType>(t);
    m.byte_fallback = m.byte_fallback || p.type == SpmPieceType::kByte;
  }
  auto id = [&](const char* key, int fallback) {
    const GgufValue* v = h.Find(std::string("tokenizer.ggml.") + key);
    if (v == nullptr) return fallback;
    if (!v->is_integer() || v->AsInt() < -1 || v->AsInt() >= static_cast<int64_t>(n))
      Fail(what + ": tokenizer.ggml." + key + " is not a token id");
    return static_cast<int>(v->AsInt());
  };
  m.unk_id = id("unknown_token_id", 0);
  m.bos_id = id("bos_token_id", 1);
  m.eos_id = id("eos_token_id", 2);
  m.pad_id = id("padding_token_id", -1);
  auto flag = [&](const char* key, bool fallback) {
    const GgufValue* v = h.Find(std::string("tokenizer.ggml.") + key);
    if (v == nullptr) return fallback;
    if (v->type != GgufType::kBool) Fail(what + ": tokenizer.ggml." + key + " is not a bool");
    return v->AsInt() != 0;
  };
  m.add_dummy_prefix = flag("add_space_prefix", true);
  m.remove_extra_whitespaces = flag("remove_extra_whitespaces", false);
  if (const GgufValue* cm = h.Find("tokenizer.ggml.precompiled_charsmap")) {
    if (cm->type != GgufType::kArray || (cm->elem != GgufType::kU8 && cm->elem != GgufType::kI8))
      Fail(what + ": tokenizer.ggml.precompiled_charsmap is not an array of bytes");
    m.precompiled_charsmap.assign(cm->bytes.begin(), cm->bytes.end());
    m.normalizer_name = "nmt_nfkc";
  }
  *out = std::move(m);
  return true;
}

void AddTokenizerKeys(const SpmModel& m, std::vector<std::pair<std::string, GgufValue>>* kv) {
  std::vector<std::string> tokens;
  std::vector<float> scores;
  std::vector<int32_t> types;
  for (const SpmPiece& p : m.pieces) {
    tokens.push_back(p.piece);
    scores.push_back(p.score);
    types.push_back(static_cast<int32_t>(p.type));
  }
  kv->emplace_back("tokenizer.ggml.model", GgufValue::String("llama"));
  kv->emplace_back("tokenizer.ggml.tokens", GgufValue::Strings(std::move(tokens)));
  kv->emplace_back("tokenizer.ggml.scores", GgufValue::F32s(scores));
  kv->emplace_back("tokenizer.ggml.token_type", GgufValue::I32s(types));
  const std::pair<const char*, int> ids[] = {{"unknown_token_id", m.unk_id},
                                             {"bos_token_id", m.bos_id},
                                             {"eos_token_id", m.eos_id},
                                             {"padding_token_id", m.pad_id}};
  for (const auto& [key, id] : ids) {
    if (id >= 0)
      kv->emplace_back(std::string("tokenizer.ggml.") + key,
                       GgufValue::U32(static_cast<uint32_t>(id)));
  }
  kv->emplace_back("tokenizer.ggml.add_bos_token", GgufValue::Bool(true));
  kv->emplace_back("tokenizer.ggml.add_eos_token", GgufValue::Bool(false));
  kv->emplace_back("tokenizer.ggml.add_space_prefix", GgufValue::Bool(m.add_dummy_prefix));
  kv->emplace_back("tokenizer.ggml.remove_extra_whitespaces",
                   GgufValue::Bool(m.remove_extra_whitespaces));
  if (!m.precompiled_charsmap.empty()) {
    kv->emplace_back("tokenizer.ggml.precompiled_charsmap", GgufValue::U8s(m.precompiled_charsmap));
  }
}

void WriteLlamaGguf(const ModelWeights& w, Format format, bool head, const std::string& path) {
  const LlamaConfig& c = w.config;
  GgmlOfFormat(format, "--gguf");  // nf4 refused before anything is written
  std::vector<std::pair<std::string, GgufValue>> kv;
  auto u32 = [&](const std::string& key, int64_t v) {
    kv.emplace_back(key, GgufValue::U32(static_cast<uint32_t>(v)));
  };
  kv.emplace_back("general.architecture", GgufValue::String("llama"));
  std::string name = w.dir;
  while (!name.empty() && name.back() == '/') name.pop_back();
  name = name.substr(name.find_last_of('/') + 1);
  kv.emplace_back("general.name", GgufValue::String(name));
  // llama.cpp's llama_ftype of the file's dominant type
  const int ftype = format == Format::kF32    ? 0
                    : format == Format::kF16  ? 1
                    : format == Format::kQ4_0 ? 2
                    : format == Format::kQ8_0 ? 7
                                              : 32;  // bf16
  u32("general.file_type", ftype);
  if (Traits(format).quantized()) u32("general.quantization_version", 2);
  u32("llama.vocab_size", c.vocab);
  u32("llama.context_length", c.max_pos);
  u32("llama.embedding_length", c.hidden);
  u32("llama.block_count", c.n_layers);
  u32("llama.feed_forward_length", c.intermediate);
  u32("llama.rope.dimension_count", c.head_dim);
  u32("llama.attention.head_count", c.n_heads);
  u32("llama.attention.head_count_kv", c.n_kv_heads);
  if (c.head_dim * c.n_heads != c.hidden) {
    u32("llama.attention.key_length", c.head_dim);
    u32("llama.attention.value_length", c.head_dim);
  }
  kv.emplace_back("llama.attention.layer_norm_rms_epsilon",
                  GgufValue::F32(static_cast<float>(c.rms_eps)));
  kv.emplace_back("llama.rope.freq_base", GgufValue::F32(static_cast<float>(c.rope_theta)));
  if (!w.tokenizer_model.empty()) {
    AddTokenizerKeys(ParseSpmModel(w.tokenizer_model, w.tokenizer_name), &kv);
  } else {  // llama.cpp's word for a model without one (it needs the key)
    kv.emplace_back("tokenizer.ggml.model", GgufValue::String("no_vocab"));
  }

  // Each tensor row by row: widened to F32 and encoded in the target type, or its bytes as they
  // are when it is held in that type already; q and k rows in llama.cpp's order.
  std::vector<GgufTensorToWrite> tensors;
  for (const auto& [spec, t] : w.Tensors()) {
    // norms F32; the embedding and head as held unless --quantize-head or a float format
    Format f = spec.is_norm ? Format::kF32 : format;
    if (spec.is_head && !head && Traits(format).quantized())
      f = t->format == Format::kNF4 ? Format::kF32 : t->format;  // GGUF has no nf4
    GgufTensorToWrite out;
    out.name = GgufTensorName(spec.name);
    out.type = GgmlOfFormat(f, "--gguf");
    out.ne.assign(spec.shape.rbegin(), spec.shape.rend());  // innermost first
    const bool permute = PermutedInGguf(spec.name);
    const int head_dim = c.head_dim;
    const Tensor* src = t;
    out.produce = [src, f, permute, head_dim](const ByteSink& sink) {
      const int64_t cols = src->cols;
      const size_t src_row = static_cast<size_t>(FormatBytes(src->format, cols));
      const size_t dst_row = static_cast<size_t>(FormatBytes(f, cols));
      std::vector<float> wide(static_cast<size_t>(cols));
      std::vector<uint8_t> row(dst_row);
      const auto* base = static_cast<const uint8_t*>(src->data);
      for (int64_t g = 0; g < src->rows; ++g) {
        const int64_t r = permute ? HfRopeRow(g, head_dim) : g;
        const uint8_t* s = base + static_cast<size_t>(r) * src_row;
        if (src->format == f) {
          sink(s, dst_row);
          continue;
        }
        Traits(src->format).dequantize(s, cols, wide.data());
        Traits(f).quantize(wide.data(), cols, row.data());
        sink(row.data(), dst_row);
      }
    };
    tensors.push_back(std::move(out));
  }
  WriteGguf(path, std::move(kv), tensors);
}

}  // namespace tinylora
