#include "train/trainable.h"

#include "util/file.h"
#include "util/half.h"

namespace tinylora {

std::unique_ptr<TrainableBase> MakeTrainable(const ModelWeights& source) {
  auto t = std::make_unique<TrainableBase>();
  const LlamaConfig& c = source.config;
  t->weights.config = c;
  t->weights.dir = source.dir;
  const std::vector<TensorSpec> specs = ModelTensorSpecs(c);
  for (const TensorSpec& s : specs) t->params.Add(s.name, s.shape);
  t->params.Allocate(/*with_grads=*/true);

  // Source tensors in the same order as ModelTensorSpecs.
  std::vector<const Tensor*> src = {&source.embed};
  for (const LayerWeights& l : source.layers) {
    for (const Tensor* x :
         {&l.attn_norm, &l.wq, &l.wk, &l.wv, &l.wo, &l.mlp_norm, &l.w_gate, &l.w_up, &l.w_down}) {
      src.push_back(x);
    }
  }
  src.push_back(&source.final_norm);
  if (!c.tie_embeddings) src.push_back(&source.lm_head);

  std::vector<Tensor> views(specs.size());
  for (size_t i = 0; i < specs.size(); ++i) {
    const int k = static_cast<int>(i);
    float* dst = t->params.value(k);
    const Tensor& s = *src[i];
    for (int64_t j = 0; j < s.numel(); ++j)
      dst[j] = s.dtype == DType::kBF16 ? Bf16ToF32(s.bf16()[j]) : s.f32()[j];
    views[i] = Tensor{DType::kF32, s.rows, s.cols, dst};
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

void SaveModel(const TrainableBase& base, const std::string& dir) {
  MakeDirectories(dir);
  std::vector<TensorToWrite> tensors;
  for (int i = 0; i < base.params.size(); ++i) {
    tensors.push_back(
        {base.params.name(i), DType::kF32, base.params.shape(i), base.params.value(i)});
  }
  LlamaConfig c = base.weights.config;
  c.torch_dtype = "float32";
  WriteSafetensors(JoinPath(dir, "model.safetensors"), tensors, {{"format", "pt"}});
  WriteFileAtomic(JoinPath(dir, "config.json"), ConfigToJson(c));
}

}  // namespace tinylora
