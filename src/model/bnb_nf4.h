// Hugging Face's bitsandbytes 4-bit directories (transformers' BitsAndBytesConfig with
// load_in_4bit, saved to safetensors): config.json carries `quantization_config`, and each
// quantised weight NAME is stored as
//   NAME                                  uint8 (n/2, 1): the codes of the row-major flattened
//                                         weight, two per byte, the first in the high nibble
//   NAME.absmax                           float32 (n/64), or uint8 codes when double-quantised
//   NAME.quant_map                        float32 (16): NF4's levels
//   NAME.nested_absmax, .nested_quant_map float32 (n/64/256), (256): double quantisation
//   NAME.quant_state.bitsandbytes__nf4    uint8: the JSON of quant_type, blocksize, dtype,
//                                         shape (and nested_blocksize, nested_offset, …)
// Read into the format table's NF4 blocks (ops/quantize.h), and written from them.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "formats/safetensors.h"
#include "ops/tensor.h"

namespace tinylora {

class ModelWeights;

// A stored tensor by name: its info and bytes, or false when the file has none of that name.
struct RawTensor {
  const TensorInfo* info = nullptr;
  const uint8_t* data = nullptr;
  std::string where;  // "FILE: tensor 'NAME'"
};
using RawLookup = std::function<bool(const std::string& name, RawTensor* out)>;

// The quantization_config of a config.json: none (false), bitsandbytes 4-bit NF4 (true), or
// Error (exit 2) naming `what` for what tinylora cannot read (8-bit, fp4, another method).
bool IsBnb4BitConfig(const std::string& config_json, const std::string& what);

// True when NAME is stored as a bitsandbytes 4-bit weight (its quant_state is present).
bool IsBnbWeight(const RawLookup& find, const std::string& name);

// The weight (rows × cols, cols a multiple of 64) as NF4 blocks, each absmax its stored value
// (double-quantised: dequantised as bitsandbytes does). Error (exit 2) naming the tensor for a
// missing or inconsistent part.
std::vector<uint8_t> ReadBnbWeight(const RawLookup& find, const std::string& name, int64_t rows,
                                   int64_t cols);

// Writes the model as a bitsandbytes 4-bit directory: the seven projections of every block in
// NF4 (double-quantised when asked), everything else as it is held (F32, F16 or BF16),
// config.json with its quantization_config, and the model's tokenizer when it has one.
void WriteBnbModel(const ModelWeights& w, bool double_quant, const std::string& dir);

}  // namespace tinylora
