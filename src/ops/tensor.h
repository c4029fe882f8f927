// A weight the engine computes with: row-major, in a format of ops/format.h, not owning its
// bytes.
// Vectors have rows = 1.
#pragma once

#include <cstdint>

#include "ops/format.h"

namespace tinylora {

class Bf16Weight;  // ops/gemm_bf16.h

struct Tensor {
  Format format = Format::kF32;
  int64_t rows = 0, cols = 0;
  const void* data = nullptr;
  // Set by ModelWeights::PrepareBf16 (--bf16): MatMul and MatMulBackwardX over many rows then
  // compute in BF16 through this kernel's preparation of the weight.
  const Bf16Weight* bf16_compute = nullptr;

  const float* f32() const { return static_cast<const float*>(data); }
  const uint16_t* bf16() const { return static_cast<const uint16_t*>(data); }
  int64_t numel() const { return rows * cols; }
  int64_t nbytes() const { return FormatBytes(format, numel()); }
  // Where row r starts, in the tensor's format.
  const void* row(int64_t r) const {
    return static_cast<const uint8_t*>(data) + FormatBytes(format, r * cols);
  }
};

}  // namespace tinylora
