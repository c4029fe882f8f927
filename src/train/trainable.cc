#include "train/trainable.h"

#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "util/error.h"
#include "util/file.h"

namespace tinylora {

namespace {

// Allocates the block for `c` and points the weight and gradient views into it.
std::unique_ptr<TrainableBase> Allocate(const LlamaConfig& c, bool with_grads) {
  auto t = std::make_unique<TrainableBase>();
  t->weights.config = c;
  const std::vector<TensorSpec> specs = ModelTensorSpecs(c);
  for (const TensorSpec& s : specs) t->params.Add(s.name, s.shape);
  t->params.Allocate(with_grads);
  std::vector<Tensor> views(specs.size());
  for (size_t i = 0; i < specs.size(); ++i) {
    const auto& shape = specs[i].shape;
    views[i] = Tensor{Format::kF32, shape.size() == 2 ? shape[0] : 1, shape.back(),
                      t->params.value(static_cast<int>(i))};
  }
  size_t k = 0;
  auto next = [&](float** grad) {
    if (grad != nullptr) *grad = t->params.grad(static_cast<int>(k));
    return views[k++];
  };
  t->weights.embed = next(&t->grads.embed);
  t->weights.layers.resize(static_cast<size_t>(c.n_layers));
  t->grads.layers.resize(static_cast<size_t>(c.n_layers));
  for (int l = 0; l < c.n_layers; ++l) {
    LayerWeights& w = t->weights.layers[static_cast<size_t>(l)];
    LayerGrads& g = t->grads.layers[static_cast<size_t>(l)];
    w.attn_norm = next(&g.attn_norm);
    w.wq = next(&g.wq);
    w.wk = next(&g.wk);
    w.wv = next(&g.wv);
    w.wo = next(&g.wo);
    w.mlp_norm = next(&g.mlp_norm);
    w.w_gate = next(&g.w_gate);
    w.w_up = next(&g.w_up);
    w.w_down = next(&g.w_down);
  }
  t->weights.final_norm = next(&t->grads.final_norm);
  if (c.tie_embeddings) {
    t->weights.lm_head = t->weights.embed;
    t->grads.lm_head = t->grads.embed;
  } else {
    t->weights.lm_head = next(&t->grads.lm_head);
  }
  return t;
}

uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Element i of a N(0, std²) tensor: Box-Muller on a counter-based hash.
float NormalAt(uint64_t key, int64_t i, float std) {
  const uint64_t h = SplitMix64(key ^ SplitMix64(static_cast<uint64_t>(i / 2)));
  const double u1 = (static_cast<double>(h >> 40) + 1.0) / 16777217.0;  // (0, 1]
  const double u2 = static_cast<double>(h & 0xffffffu) / 16777216.0;
  const double r = std::sqrt(-2.0 * std::log(u1));
  const double z = (i % 2 == 0) ? r * std::cos(2 * M_PI * u2) : r * std::sin(2 * M_PI * u2);
  return static_cast<float>(z * std);
}

}  // namespace

std::unique_ptr<TrainableBase> MakeTrainable(const ModelWeights& source, bool with_grads) {
  auto t = Allocate(source.config, with_grads);
  t->weights.dir = source.dir;
  // Source tensors in the order of ModelTensorSpecs.
  std::vector<const Tensor*> src = {&source.embed};
  for (const LayerWeights& l : source.layers) {
    for (const Tensor* x :
         {&l.attn_norm, &l.wq, &l.wk, &l.wv, &l.wo, &l.mlp_norm, &l.w_gate, &l.w_up, &l.w_down}) {
      src.push_back(x);
    }
  }
  src.push_back(&source.final_norm);
  if (!source.config.tie_embeddings) src.push_back(&source.lm_head);
  for (size_t i = 0; i < src.size(); ++i) {
    float* dst = t->params.value(static_cast<int>(i));
    const Tensor& s = *src[i];
    Traits(s.format).dequantize(s.data, s.numel(), dst);
  }
  return t;
}

std::unique_ptr<TrainableBase> CreateRandomBase(const LlamaConfig& config, uint64_t seed,
                                                bool with_grads) {
  auto t = Allocate(config, with_grads);
  const std::vector<TensorSpec> specs = ModelTensorSpecs(config);
  for (size_t k = 0; k < specs.size(); ++k) {
    float* dst = t->params.value(static_cast<int>(k));
    const int64_t n = t->params.numel(static_cast<int>(k));
    const uint64_t key = SplitMix64(seed * 1000003u + k);
    const bool norm = specs[k].is_norm;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) dst[i] = norm ? 1.0f : NormalAt(key, i, 0.02f);
  }
  return t;
}

void SaveModel(const TrainableBase& base, const std::string& dir, Format format) {
  const FormatTraits& f = Traits(format);
  if (!f.savable()) Fail(std::string("a model cannot be written in ") + f.name);
  MakeDirectories(dir);
  std::vector<TensorToWrite> tensors;
  for (int i = 0; i < base.params.size(); ++i) {  // each tensor encoded as it is written
    const float* src = base.params.value(i);
    const int64_t n = base.params.numel(i);
    tensors.push_back({base.params.name(i), f.dtype, base.params.shape(i), nullptr,
                       [&f, format, src, n](const ByteSink& sink) {
                         std::vector<uint8_t> bytes(static_cast<size_t>(FormatBytes(format, n)));
                         f.quantize(src, n, bytes.data());
                         sink(bytes.data(), bytes.size());
                       }});
  }
  LlamaConfig c = base.weights.config;
  c.torch_dtype = f.torch_dtype;
  WriteSafetensors(JoinPath(dir, "model.safetensors"), tensors, {{"format", "pt"}});
  WriteFileAtomic(JoinPath(dir, "config.json"), ConfigToJson(c));
  // A sharded checkpoint previously in `dir` would take precedence over the new file.
  const std::string index = JoinPath(dir, "model.safetensors.index.json");
  if (FileExists(index)) {
    auto j = nlohmann::json::parse(ReadTextFile(index), nullptr, false);
    std::remove(index.c_str());
    if (j.is_object() && j.contains("weight_map") && j["weight_map"].is_object()) {
      for (const auto& [name, file] : j["weight_map"].items()) {
        if (file.is_string() && file.get<std::string>().find('/') == std::string::npos) {
          std::remove(JoinPath(dir, file.get<std::string>()).c_str());
        }
      }
    }
  }
}

}  // namespace tinylora
