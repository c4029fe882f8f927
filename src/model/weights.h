// The base model's weights, loaded from a Hugging Face model directory (config.json +
// model.safetensors, or shards listed in model.safetensors.index.json) or a GGUF file
// (model/gguf_llama: llama.cpp's names, q and k rows put back in Hugging Face's order).
// F32 and BF16 matrices are used in place from the memory map; F16 is widened to F32 once
// (its mapped pages released); norm vectors are always F32. --quantize holds the projections
// (and optionally the embedding and head) in a block format of ops/quantize.h instead.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "formats/gguf.h"
#include "formats/safetensors.h"
#include "model/config.h"
#include "ops/gemm_bf16.h"
#include "ops/tensor.h"

namespace tinylora {

struct LayerWeights {
  Tensor attn_norm;                      // (C)          input_layernorm
  Tensor wq;                             // (NH*HD, C)   q_proj
  Tensor wk;                             // (KVH*HD, C)  k_proj
  Tensor wv;                             // (KVH*HD, C)  v_proj
  Tensor wo;                             // (C, NH*HD)   o_proj
  Tensor mlp_norm;                       // (C)          post_attention_layernorm
  Tensor w_gate;                         // (F, C)       gate_proj
  Tensor w_up;                           // (F, C)       up_proj
  Tensor w_down;                         // (C, F)       down_proj
  const Tensor& weight(Module m) const;  // the projection's matrix
};

// --quantize: the block format the seven projections of every block are quantised to on load
// (QLoRA's way: read in the file's format, held quantised), optionally with bitsandbytes' double
// quantisation of NF4's absmaxes, and the embedding and head too when `head`.
struct QuantizeOnLoad {
  bool enabled = false;
  Format format = Format::kQ8_0;
  bool double_quant = false;
  bool head = false;
  // int8 activations (bench_forward --int8-activations; not a CLI flag until it is faster than
  // the exact kernel; independent of `enabled`, as a GGUF base is q8_0 or q4_0 already): the
  // q8_0 and q4_0 matrices stream against int8 activations (Format::kQ8_0I8, kQ4_0I8).
  bool int8_activations = false;
};

// The HF names of every tensor a config implies, in file order, with shapes; for init.
struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  bool is_norm;
  bool is_head = false;  // the embedding or lm_head: kept as held unless --quantize-head
};
std::vector<TensorSpec> ModelTensorSpecs(const LlamaConfig& c);

class ModelWeights {
 public:
  // Loads and validates a model directory or GGUF file; every problem is an Error naming the
  // file/tensor.
  // Quantised matrices are made one at a time, each source's mapped pages released once it is
  // quantised, so memory never holds a whole base twice.
  static std::unique_ptr<ModelWeights> Load(const std::string& path,
                                            const QuantizeOnLoad& quantize = {});

  LlamaConfig config;
  Tensor embed;  // (V, C)  model.embed_tokens
  std::vector<LayerWeights> layers;
  Tensor final_norm;  // (C)     model.norm
  Tensor lm_head;     // (V, C)  lm_head, or embed when tied
  std::string dir;    // the model directory or GGUF file it was loaded from
  // The tokenizer that came with the model, as SentencePiece model bytes: the directory's
  // tokenizer.model, or rebuilt from the GGUF file's tokenizer.ggml.* keys. Empty when it has
  // none, and then `no_tokenizer` says why.
  std::string tokenizer_model;
  std::string tokenizer_name;  // for messages: "DIR/tokenizer.model", "FILE.gguf's tokenizer"
  std::string no_tokenizer;
  // The chat template's Jinja text: tokenizer_config.json's "chat_template" (the "default" one
  // of a list), or the GGUF file's tokenizer.chat_template. Empty when it has none.
  std::string chat_template;
  // tokenizer_model, or Error (exit 2) "DIR: no tokenizer (why); HINT".
  const std::string& TokenizerModel(const std::string& hint) const;

  // Every tensor with its Hugging Face spec, in ModelTensorSpecs order (the head once when tied).
  std::vector<std::pair<TensorSpec, const Tensor*>> Tensors() const;
  // Bytes of every matrix as held in memory (what one decode step reads), lm_head included once.
  int64_t MatrixBytes() const;

  // Prepares every BF16 matrix (projections and lm_head) for the BF16 kernel in use
  // (ops/gemm_bf16.h), so products over many rows compute in BF16 (`backward`: also dx = dy · W,
  // for training). The mapped originals' pages are released unless the kernel reads them
  // (decode's few-row products read them again). Error when no matrix is BF16. Returns the
  // bytes it added (a second call adds only what is missing, e.g. the backward packings).
  int64_t PrepareBf16(bool backward);

 private:
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::unique_ptr<GgufFile> gguf_;
  std::vector<std::vector<uint8_t>> owned_;  // tensors that had to be converted or realigned
  std::vector<std::unique_ptr<Bf16Weight>> bf16_;
  friend class WeightLoader;
};

// The config of a model directory or GGUF file, without loading its tensors.
LlamaConfig ModelConfig(const std::string& path);

}  // namespace tinylora
