#include "adapters/lora_gguf.h"

#include <cstring>

#include "formats/gguf.h"
#include "model/gguf_llama.h"
#include "util/error.h"

namespace tinylora {

void WriteLoraGguf(const Adapter& adapter, const LlamaConfig& base, const std::string& path) {
  const AdapterConfig& ac = adapter.config();
  if (ac.tree_depth != 0)
    Fail("--adapter: a tree adapter (tree_depth " + std::to_string(ac.tree_depth) +
         ") has no GGUF LoRA form; only a LoRA (tree_depth 0) does");
  std::vector<std::pair<std::string, GgufValue>> kv;
  kv.emplace_back("general.architecture", GgufValue::String("llama"));
  kv.emplace_back("general.type", GgufValue::String("adapter"));
  kv.emplace_back("adapter.type", GgufValue::String("lora"));
  kv.emplace_back("adapter.lora.alpha", GgufValue::F32(static_cast<float>(ac.alpha)));
  std::vector<GgufTensorToWrite> tensors;
  for (int l = 0; l < base.n_layers; ++l) {
    for (int m = 0; m < kNumModules; ++m) {
      const Module mod = static_cast<Module>(m);
      const LoraWeights* w = adapter.Get(l, mod);
      if (w == nullptr) continue;
      const std::string hf = ModulePath(l, mod) + ".weight";
      const std::string name = GgufTensorName(hf);
      auto floats = [](const float* p, size_t n) {
        return [p, n](const ByteSink& sink) { sink(p, n * sizeof(float)); };
      };
      tensors.push_back({name + ".lora_a",
                         GgmlType::kF32,
                         {w->in, w->r},
                         floats(w->A, static_cast<size_t>(w->r * w->in))});
      const bool permute = PermutedInGguf(hf);
      const int hd = base.head_dim;
      const LoraWeights* lw = w;
      tensors.push_back({name + ".lora_b",
                         GgmlType::kF32,
                         {w->r, w->out},
                         [lw, permute, hd](const ByteSink& sink) {
                           for (int64_t g = 0; g < lw->out; ++g) {  // GGUF row g: B's row r
                             const int64_t r = permute ? HfRopeRow(g, hd) : g;
                             sink(lw->B + r * lw->r, static_cast<size_t>(lw->r) * sizeof(float));
                           }
                         }});
    }
  }
  WriteGguf(path, std::move(kv), tensors);
}

}  // namespace tinylora
