// Weight formats (DESIGN.md §8): one traits entry per format a frozen matrix can be held in —
// its block layout, a plain reference dequantiser, a fast one (the GEMM path widens panels with
// it), and its streaming kernel (decode and batch-invariant products). Code above ops/ never
// asks which format a tensor has; a new format is one more entry here and its kernels.
#pragma once

#include <cstdint>
#include <string>

#include "formats/safetensors.h"

namespace tinylora {

// The float formats, then the block formats of a quantized frozen base (ops/quantize.h), which
// only --quantize produces (GGUF and bitsandbytes files are read and written elsewhere).
// kQ8_0I8 and kQ4_0I8 hold q8_0 and q4_0 blocks unchanged but stream them against int8
// activations (--int8-activations: llama.cpp's definition, approximate; ops/matvec_int8.h).
enum class Format : uint8_t { kF32, kF16, kBF16, kQ8_0, kQ4_0, kNF4, kQ8_0I8, kQ4_0I8 };

struct FormatTraits {
  const char* name;     // "f32", "f16", "bf16", "q8_0", "q4_0", "nf4", "q8_0/i8", "q4_0/i8"
  int64_t block;        // weights per block (1 for the float formats)
  int64_t block_bytes;  // bytes per block
  int64_t align;        // the alignment its kernels need, in bytes
  // dst (n) = the n weights starting at src (n a multiple of `block`): plain, for tests
  void (*dequantize_reference)(const void* src, int64_t n, float* dst);
  // the same, fast (Highway): the GEMM path's panels, the embedding lookup
  void (*dequantize)(const void* src, int64_t n, float* dst);
  // y[t·out + r] = W_r · x_t for rows [r0, r1) of W (out, in) and T rows of x, each element
  // summed in one fixed order whatever T (ops/matvec.cc)
  void (*matvec)(const void* w, int64_t in, int64_t out, const float* x, int64_t T, int64_t r0,
                 int64_t r1, float* y);
  bool gemm_in_place;  // F32: sgemm reads the weight itself, no widened panel
  bool bf16_gemm;      // --bf16 computes its products in BF16 (ops/gemm_bf16)
  // The encoder from F32: round to nearest even, or the block format's reference quantiser
  // (null: nothing is encoded in this format).
  void (*quantize)(const float* src, int64_t n, void* dst);
  // Files (float formats): the safetensors dtype holding its bytes and config.json's
  // torch_dtype; and the format `merge` writes a merged base of this format in.
  DType dtype;
  const char* torch_dtype;
  Format merged_as;
  bool quantized() const { return block > 1; }
  // A safetensors model can be written in it (init, merge, pretraining's saves).
  bool savable() const { return quantize != nullptr && !quantized(); }
};

const FormatTraits& Traits(Format f);
// The float format a safetensors dtype is held in; Error (exit 2) naming `what` for others.
Format FormatOfDType(DType dtype, const std::string& what);
// The format whose traits are named `name` ("f32", …); Error (exit 2) naming `what` otherwise.
Format FormatNamed(const std::string& name, const std::string& what);
// The block format named (q8_0, q4_0, nf4); Error "WHAT: expected …, got NAME" otherwise.
Format QuantizedFormatNamed(const std::string& name, const std::string& what);
// Bytes of n weights (n a multiple of the format's block).
int64_t FormatBytes(Format f, int64_t n);

}  // namespace tinylora
