#include "model/weights.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>

#include "model/bnb_nf4.h"
#include "model/gguf_llama.h"
#include "ops/quantize.h"
#include "util/error.h"
#include "util/file.h"
#include "util/half.h"

namespace tinylora {

const Tensor& LayerWeights::weight(Module m) const {
  static constexpr const Tensor LayerWeights::*kWeight[kNumModules] = {
      &LayerWeights::wq,     &LayerWeights::wk,   &LayerWeights::wv,    &LayerWeights::wo,
      &LayerWeights::w_gate, &LayerWeights::w_up, &LayerWeights::w_down};
  return this->*kWeight[static_cast<int>(m)];
}

std::vector<TensorSpec> ModelTensorSpecs(const LlamaConfig& c) {
  const int64_t C = c.hidden, F = c.intermediate, V = c.vocab, Q = c.q_dim(), KV = c.kv_dim();
  std::vector<TensorSpec> s;
  s.push_back({"model.embed_tokens.weight", {V, C}, false, true});
  for (int i = 0; i < c.n_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    s.push_back({p + "input_layernorm.weight", {C}, true});
    s.push_back({p + "self_attn.q_proj.weight", {Q, C}, false});
    s.push_back({p + "self_attn.k_proj.weight", {KV, C}, false});
    s.push_back({p + "self_attn.v_proj.weight", {KV, C}, false});
    s.push_back({p + "self_attn.o_proj.weight", {C, Q}, false});
    s.push_back({p + "post_attention_layernorm.weight", {C}, true});
    s.push_back({p + "mlp.gate_proj.weight", {F, C}, false});
    s.push_back({p + "mlp.up_proj.weight", {F, C}, false});
    s.push_back({p + "mlp.down_proj.weight", {C, F}, false});
  }
  s.push_back({"model.norm.weight", {C}, true});
  if (!c.tie_embeddings) s.push_back({"lm_head.weight", {V, C}, false, true});
  return s;
}

namespace {
// The tensors of `w` in ModelTensorSpecs order (lm_head only when untied); T is Tensor or const
// Tensor.
template <class T, class W>
std::vector<T*> InSpecOrder(W& w) {
  std::vector<T*> held = {&w.embed};
  for (auto& l : w.layers) {
    for (T* t :
         {&l.attn_norm, &l.wq, &l.wk, &l.wv, &l.wo, &l.mlp_norm, &l.w_gate, &l.w_up, &l.w_down})
      held.push_back(t);
  }
  held.push_back(&w.final_norm);
  if (!w.config.tie_embeddings) held.push_back(&w.lm_head);
  return held;
}

std::string ShapeText(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}
}  // namespace

// One stored tensor, wherever it is: its bytes, format and shape, and the file whose pages hold
// it (released once it is converted). GGUF's q and k rows are in llama.cpp's order.
struct StoredTensor {
  const uint8_t* data = nullptr;
  Format format = Format::kF32;
  std::vector<int64_t> shape;
  const MappedFile* file = nullptr;
  size_t offset = 0, nbytes = 0;
  std::string where;  // "FILE: tensor 'NAME'"
  int rope_rows = 0;  // > 0: rows permuted as GGUF's q and k, heads of this many rows
};

class WeightLoader {
 public:
  explicit WeightLoader(ModelWeights* m) : m_(m) {}

  void OpenSafetensors() {
    const std::string index_path = JoinPath(m_->dir, "model.safetensors.index.json");
    const std::string single_path = JoinPath(m_->dir, "model.safetensors");
    if (FileExists(index_path)) {
      nlohmann::json j = nlohmann::json::parse(ReadTextFile(index_path), nullptr, false);
      if (j.is_discarded() || !j.is_object()) Fail(index_path + ": not valid JSON");
      auto wm = j.find("weight_map");
      if (wm == j.end() || !wm->is_object()) Fail(index_path + ": missing 'weight_map'");
      std::map<std::string, size_t> file_index;
      for (auto it = wm->begin(); it != wm->end(); ++it) {
        if (!it.value().is_string())
          Fail(index_path + ": weight_map entry '" + it.key() + "' is not a file name");
        const std::string file = it.value().get<std::string>();
        if (file.empty() || file.find('/') != std::string::npos || file == "." || file == "..") {
          Fail(index_path + ": weight_map names '" + file +
               "', which is not a file in the model directory");
        }
        auto f = file_index.find(file);
        if (f == file_index.end()) {
          m_->files_.push_back(std::make_unique<SafetensorsFile>(JoinPath(m_->dir, file)));
          f = file_index.emplace(file, m_->files_.size() - 1).first;
        }
        where_[it.key()] = f->second;
      }
    } else if (FileExists(single_path)) {
      m_->files_.push_back(std::make_unique<SafetensorsFile>(single_path));
      for (const auto& t : m_->files_[0]->header().tensors) where_[t.name] = 0;
    } else {
      Fail(m_->dir + ": no model.safetensors or model.safetensors.index.json");
    }
  }

  // The tensor `spec` names, checked against its shape.
  StoredTensor Find(const TensorSpec& spec) {
    StoredTensor s;
    if (m_->gguf_ != nullptr) {
      const GgufFile& g = *m_->gguf_;
      const std::string name = GgufTensorName(spec.name);
      const GgufTensor* t = g.header().FindTensor(name);
      s.where = g.path() + ": tensor '" + name + "'";
      if (t == nullptr) Fail(s.where + " is missing");
      s.shape.assign(t->ne.rbegin(), t->ne.rend());  // GGUF lists the innermost dimension first
      s.format = FormatOfGgml(t->type);
      s.data = g.Data(*t);
      s.file = &g.file();
      s.offset = t->offset;
      s.nbytes = t->nbytes;
      if (PermutedInGguf(spec.name)) s.rope_rows = m_->config.head_dim;
    } else {
      RawTensor raw;
      const RawLookup find = [this](const std::string& name, RawTensor* out) {
        return FindRaw(name, out);
      };
      if (!spec.is_norm && IsBnbWeight(find, spec.name)) {  // bitsandbytes NF4, unpacked once
        std::vector<uint8_t>& buf =
            m_->owned_.emplace_back(ReadBnbWeight(find, spec.name, spec.shape[0], spec.shape[1]));
        s.where = m_->dir + ": tensor '" + spec.name + "'";
        s.shape = spec.shape;
        s.format = Format::kNF4;
        s.data = buf.data();
        return s;
      }
      if (!FindRaw(spec.name, &raw)) Fail(raw.where + " is missing");
      s.where = raw.where;
      s.shape = raw.info->shape;
      s.format = FormatOfDType(raw.info->dtype, s.where);
      s.data = raw.data;
      s.file = &m_->files_[where_[spec.name]]->file();
      s.offset = raw.info->offset;
      s.nbytes = raw.info->nbytes;
    }
    if (s.shape != spec.shape) {
      Fail(s.where + " has shape " + ShapeText(s.shape) + " but " +
           (m_->gguf_ != nullptr ? "the file's llama.* keys imply " : "config.json implies ") +
           ShapeText(spec.shape));
    }
    return s;
  }

  // A safetensors tensor by name (false, `where` naming the place, when there is none).
  bool FindRaw(const std::string& name, RawTensor* out) const {
    auto w = where_.find(name);
    const SafetensorsFile* file = w == where_.end() ? nullptr : m_->files_[w->second].get();
    const TensorInfo* info = file ? file->Find(name) : nullptr;
    out->where = (file ? file->path() : m_->dir) + ": tensor '" + name + "'";
    if (info == nullptr) return false;
    out->info = info;
    out->data = file->Data(*info);
    return true;
  }

  // Finds, checks and prepares one tensor. Norms become F32; matrices stay in their stored format
  // (used in place where they can be), or are quantised to `quantize` when it is given.
  Tensor Get(const TensorSpec& spec, const QuantizeOnLoad* quantize = nullptr) {
    const StoredTensor s = Find(spec);
    Tensor t;
    t.rows = spec.shape.size() == 2 ? spec.shape[0] : 1;
    t.cols = spec.shape.back();
    const bool quantized = quantize != nullptr && quantize->enabled && !spec.is_norm;
    if (quantized && s.format != quantize->format) {
      Quantize(spec, *quantize, s, &t);
    } else {
      // Matrices stay in their stored format; norm vectors are always F32.
      t.format = spec.is_norm ? Format::kF32 : s.format;
      const bool as_stored = t.format == s.format;
      if (as_stored && s.rope_rows == 0 &&
          reinterpret_cast<uintptr_t>(s.data) % Traits(t.format).align == 0) {
        t.data = s.data;  // used in place from the map
        return t;
      }
      std::vector<uint8_t>& buf = m_->owned_.emplace_back(static_cast<size_t>(t.nbytes()));
      const int64_t row = FormatBytes(s.format, t.cols);
      for (int64_t r = 0; r < t.rows; ++r) {  // one copy: realigned, q and k rows reordered
        const uint8_t* src = s.data + StoredRow(s, r) * row;
        uint8_t* dst = buf.data() + FormatBytes(t.format, r * t.cols);
        if (as_stored) {
          std::memcpy(dst, src, static_cast<size_t>(row));
        } else {
          Traits(s.format).dequantize(src, t.cols, reinterpret_cast<float*>(dst));
        }
      }
      t.data = buf.data();
    }
    if (s.file != nullptr) s.file->Release(s.offset, s.nbytes);  // the original is not kept
    return t;
  }

 private:
  // The stored row holding row r of the matrix.
  static int64_t StoredRow(const StoredTensor& s, int64_t r) {
    return s.rope_rows > 0 ? GgufRopeRow(r, s.rope_rows) : r;
  }

  // t (rows, cols set) = the stored matrix quantised, row by row in parallel.
  void Quantize(const TensorSpec& spec, const QuantizeOnLoad& q, const StoredTensor& s, Tensor* t) {
    const FormatTraits& f = Traits(q.format);
    if (t->cols % f.block != 0) {
      Fail(std::string("--quantize ") + f.name + ": tensor '" + spec.name + "' has " +
           std::to_string(t->cols) + " columns, not a multiple of the format's block of " +
           std::to_string(f.block));
    }
    t->format = q.format;
    std::vector<uint8_t>& buf = m_->owned_.emplace_back(static_cast<size_t>(t->nbytes()));
    const FormatTraits& from = Traits(s.format);
    int64_t bad_row = t->rows;  // the first row holding a NaN or an infinity, if any
#pragma omp parallel
    {
      std::vector<float> row(static_cast<size_t>(t->cols));  // one row in F32, per thread
#pragma omp for schedule(static) reduction(min : bad_row)
      for (int64_t r = 0; r < t->rows; ++r) {
        from.dequantize(s.data + FormatBytes(s.format, StoredRow(s, r) * t->cols), t->cols,
                        row.data());
        if (!std::all_of(row.begin(), row.end(), [](float v) { return std::isfinite(v); }))
          bad_row = std::min(bad_row, r);
        f.quantize(row.data(), t->cols, buf.data() + FormatBytes(q.format, r * t->cols));
      }
    }
    // A block's scale cannot hold a NaN or an infinity (GGML's quantisers would spread it over
    // the block, bitsandbytes' too): refused, as the model's own fault.
    if (bad_row < t->rows) {
      Fail(std::string("--quantize ") + f.name + ": tensor '" + spec.name + "' holds a " +
           "non-finite weight in row " + std::to_string(bad_row) + "; a quantised block cannot " +
           "represent it");
    }
    if (q.double_quant) DoubleQuantizeNF4(buf.data(), t->numel());
    t->data = buf.data();
  }

  ModelWeights* m_;
  std::map<std::string, size_t> where_;  // tensor name -> index in files_
};

// tokenizer_config.json's "chat_template": a string, or a list of {name, template} (the
// "default" one). Empty when the file or the field is absent.
static std::string ChatTemplateOf(const std::string& path) {
  if (!FileExists(path)) return "";
  const nlohmann::json j = nlohmann::json::parse(ReadTextFile(path), nullptr, false);
  if (!j.is_object() || !j.contains("chat_template")) return "";
  const nlohmann::json& t = j["chat_template"];
  if (t.is_string()) return t.get<std::string>();
  if (t.is_array()) {
    for (const nlohmann::json& e : t) {
      if (e.is_object() && e.value("name", "") == "default" && e.contains("template") &&
          e["template"].is_string())
        return e["template"].get<std::string>();
    }
  }
  return "";
}

std::unique_ptr<ModelWeights> ModelWeights::Load(const std::string& path,
                                                 const QuantizeOnLoad& quantize) {
  if (quantize.enabled) QuantizedFormatNamed(Traits(quantize.format).name, "--quantize");
  if (quantize.double_quant && (!quantize.enabled || quantize.format != Format::kNF4))
    Fail("--double-quant: only with --quantize nf4 (it quantises NF4's absmaxes)");
  const QuantizeOnLoad* head = quantize.head ? &quantize : nullptr;
  auto m = std::make_unique<ModelWeights>();
  m->dir = path;
  WeightLoader loader(m.get());
  if (IsGgufFile(path)) {
    m->gguf_ = std::make_unique<GgufFile>(path);
    m->config = ConfigFromGguf(m->gguf_->header(), path);
    SpmModel spm;
    if (TokenizerFromGguf(m->gguf_->header(), path, &spm, &m->no_tokenizer)) {
      m->tokenizer_model = SerializeSpmModel(spm);
      m->tokenizer_name = path + "'s tokenizer";
    }
    if (const GgufValue* t = m->gguf_->header().Find("tokenizer.chat_template");
        t != nullptr && t->type == GgufType::kString)
      m->chat_template = t->str;
  } else {
    if (!IsDirectory(path)) Fail(path + ": not a model directory or GGUF file");
    const std::string config = JoinPath(path, "config.json"), text = ReadTextFile(config);
    m->config = ParseConfig(text, config);
    IsBnb4BitConfig(text, config);  // refuses what tinylora cannot read
    loader.OpenSafetensors();
    m->tokenizer_name = JoinPath(path, "tokenizer.model");
    if (FileExists(m->tokenizer_name)) {
      m->tokenizer_model = ReadTextFile(m->tokenizer_name);
    } else {
      m->no_tokenizer = "it has no tokenizer.model";
    }
    m->chat_template = ChatTemplateOf(JoinPath(path, "tokenizer_config.json"));
  }
  const LlamaConfig& c = m->config;
  m->layers.resize(static_cast<size_t>(c.n_layers));
  const std::vector<TensorSpec> specs = ModelTensorSpecs(c);
  const std::vector<Tensor*> held = InSpecOrder<Tensor>(*m);
  for (size_t k = 0; k < specs.size(); ++k) {  // norms are never quantised
    *held[k] = loader.Get(specs[k], specs[k].is_norm   ? nullptr
                                    : specs[k].is_head ? head
                                                       : &quantize);
  }
  if (quantize.int8_activations) {  // q8_0 and q4_0 matrices stream against int8 activations
    int switched = 0;
    for (size_t k = 0; k < specs.size(); ++k) {
      Tensor& t = *held[k];
      const Format f = t.format == Format::kQ8_0   ? Format::kQ8_0I8
                       : t.format == Format::kQ4_0 ? Format::kQ4_0I8
                                                   : t.format;
      switched += f != t.format;
      t.format = f;
    }
    if (switched == 0) {
      Fail("--int8-activations: " + path +
           " holds no q8_0 or q4_0 matrix (give --quantize q8_0 or q4_0)");
    }
  }
  if (c.tie_embeddings) m->lm_head = m->embed;
  return m;
}

const std::string& ModelWeights::TokenizerModel(const std::string& hint) const {
  if (tokenizer_model.empty()) Fail(dir + ": no tokenizer (" + no_tokenizer + "); " + hint);
  return tokenizer_model;
}

std::vector<std::pair<TensorSpec, const Tensor*>> ModelWeights::Tensors() const {
  std::vector<TensorSpec> specs = ModelTensorSpecs(config);
  const std::vector<const Tensor*> held = InSpecOrder<const Tensor>(*this);
  std::vector<std::pair<TensorSpec, const Tensor*>> out;
  for (size_t k = 0; k < specs.size(); ++k) out.emplace_back(std::move(specs[k]), held[k]);
  return out;
}

LlamaConfig ModelConfig(const std::string& path) {
  if (IsGgufFile(path)) return ConfigFromGguf(GgufFile(path).header(), path);
  if (!IsDirectory(path)) Fail(path + ": not a model directory or GGUF file");
  return LoadConfig(JoinPath(path, "config.json"));
}

int64_t ModelWeights::MatrixBytes() const {
  int64_t total = lm_head.nbytes();
  for (const auto& l : layers) {
    for (const Tensor* t : {&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down})
      total += t->nbytes();
  }
  return total;
}

int64_t ModelWeights::PrepareBf16(bool backward) {
  const Bf16Kernel kernel = Bf16KernelInUse();
  static bool named = false;  // the kernel is named once in the log
  if (!named) std::fprintf(stderr, "bf16 kernel: %s\n", Bf16KernelSummary(kernel));
  named = true;
  std::vector<Tensor*> matrices = {&lm_head};
  for (auto& l : layers) {
    for (Tensor* t : {&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down})
      matrices.push_back(t);
  }
  int64_t bytes = 0;
  for (Tensor* t : matrices) {
    if (!Traits(t->format).bf16_gemm) continue;
    // This tensor's preparation when an earlier call made one (owned by bf16_, so writable).
    auto* p = const_cast<Bf16Weight*>(t->bf16_compute);
    if (p == nullptr) {
      bf16_.push_back(std::make_unique<Bf16Weight>(kernel, *t, backward));
      p = bf16_.back().get();
      bytes += p->bytes();
    } else if (backward) {
      bytes += p->AddBackward();
    }
    t->bf16_compute = p;
    // The mapped original is read again only by few-row products (decode), by the kernels that
    // read it where it lies and, when the head is tied, by the embedding lookup.
    if (p->reads_original() || (t == &lm_head && lm_head.data == embed.data)) continue;
    const auto* data = static_cast<const uint8_t*>(t->data);
    for (const auto& f : files_) {
      const MappedFile& map = f->file();
      if (data >= map.data() && data < map.data() + map.size())
        map.Release(static_cast<size_t>(data - map.data()), static_cast<size_t>(t->nbytes()));
    }
  }
  if (bf16_.empty()) Fail("--bf16: " + dir + " holds no BF16 matrix (its base is not BF16)");
  return bytes;
}

}  // namespace tinylora
