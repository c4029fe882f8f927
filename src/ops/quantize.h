// The block formats of a quantized frozen base (DESIGN.md §8, docs/DECISIONS.md "Quantized
// bases"): their block layouts and plain reference quantisers and dequantisers. A quantized
// matrix means exactly its dequantised F32 values; every kernel reproduces them bit for bit.
//   q8_0  GGML's block_q8_0: an F16 scale d and 32 int8 q;  w = q · d
//   q4_0  GGML's block_q4_0: an F16 scale d and 16 bytes, weight j in the low nibble of byte j,
//         weight j + 16 in its high nibble;  w = (q − 8) · d
//   nf4   QLoRA/bitsandbytes NF4: blocks of 64 with an F32 absmax, w = level[q] · absmax. In
//         memory byte j holds weight j (low nibble) and weight j + 32 (high nibble), the layout
//         q4_0 uses, so one unpacking serves both; bitsandbytes files pack consecutive pairs,
//         high nibble first (converted when such a file is read or written).
#pragma once

#include <cstdint>

namespace tinylora {

struct BlockQ8_0 {
  uint16_t d;  // F16
  int8_t q[32];
};
struct BlockQ4_0 {
  uint16_t d;  // F16
  uint8_t q[16];
};
struct BlockNF4 {
  float absmax;
  uint8_t q[32];
};
static_assert(sizeof(BlockQ8_0) == 34 && sizeof(BlockQ4_0) == 18 && sizeof(BlockNF4) == 36);

// The 16 NormalFloat levels of QLoRA (bitsandbytes' NF4 code), in code order.
extern const float kNF4Levels[16];
// bitsandbytes' signed dynamic 8-bit map (create_dynamic_map()), sorted: the code that double
// quantisation puts the NF4 absmaxes through.
extern const float kDynamicMap8[256];

// F32 -> F16, round to nearest even (overflow to ±inf, subnormals kept), as F16C converts.
uint16_t F32ToF16(float f);

// Reference quantisers of n weights (n a multiple of the block), as GGML's
// quantize_row_q8_0_ref / quantize_row_q4_0_ref and bitsandbytes' blockwise NF4 kernel do.
void QuantizeQ8_0Reference(const float* x, int64_t n, void* dst);
void QuantizeQ4_0Reference(const float* x, int64_t n, void* dst);
void QuantizeNF4Reference(const float* x, int64_t n, void* dst);
void DequantizeQ8_0Reference(const void* src, int64_t n, float* dst);
void DequantizeQ4_0Reference(const void* src, int64_t n, float* dst);
void DequantizeNF4Reference(const void* src, int64_t n, float* dst);

// bitsandbytes' NF4 code of x already scaled by 1/absmax (the nearest level; x exactly between
// two levels takes the lower; NaN, from an all-zero block, takes code 0).
uint8_t NF4Code(float x);
// The index of kDynamicMap8 bitsandbytes' dQuantize picks for x in [-1, 1].
uint8_t DynamicMap8Code(float x);

// Double quantisation of a tensor's `count` NF4 absmaxes, as bitsandbytes' quantize_4bit with
// compress_statistics: offset = their mean; (absmax − offset) quantised through kDynamicMap8 in
// blocks of 256 with an F32 absmax each. Writes the codes and the 256-block absmaxes
// (ceil(count / 256)) when not null, and replaces each absmax by its dequantised value
// kDynamicMap8[code] · absmax2 + offset (the value every product then uses). Returns offset.
float DoubleQuantizeAbsmax(float* absmax, int64_t count, uint8_t* codes, float* absmax2);

// The reading side of double quantisation, as bitsandbytes' dequantize_4bit: absmax[i] =
// map[codes[i]] · absmax2[i / 256] + offset, in F32, two roundings (never fused).
void DequantizeAbsmax(const uint8_t* codes, const float* map, const float* absmax2, float offset,
                      int64_t count, float* absmax);

// The block formats' absmaxes in place: NF4 blocks of n weights, double-quantised (above).
void DoubleQuantizeNF4(void* blocks, int64_t n);

}  // namespace tinylora
