#include "ops/format.h"

#include <cstring>
#include <string>
#include <vector>

#include "ops/matmul.h"
#include "ops/matvec_int8.h"
#include "ops/quantize.h"
#include "util/error.h"
#include "util/half.h"

namespace tinylora {

namespace {

void CopyF32(const void* src, int64_t n, float* dst) {
  std::memcpy(dst, src, sizeof(float) * static_cast<size_t>(n));
}
void F16Reference(const void* src, int64_t n, float* dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = F16ToF32(static_cast<const uint16_t*>(src)[i]);
}
void Bf16Reference(const void* src, int64_t n, float* dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = Bf16ToF32(static_cast<const uint16_t*>(src)[i]);
}
void F16Fast(const void* src, int64_t n, float* dst) {
  WidenF16(static_cast<const uint16_t*>(src), n, dst);
}
void Bf16Fast(const void* src, int64_t n, float* dst) {
  WidenBf16(static_cast<const uint16_t*>(src), n, dst);
}

void EncodeF32(const float* src, int64_t n, void* dst) {
  std::memcpy(dst, src, sizeof(float) * static_cast<size_t>(n));
}
void EncodeBf16(const float* src, int64_t n, void* dst) {  // also --bf16's input rounding
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) static_cast<uint16_t*>(dst)[i] = F32ToBf16(src[i]);
}

void EncodeF16(const float* src, int64_t n, void* dst) {  // round to nearest even, as F16C
  for (int64_t i = 0; i < n; ++i) static_cast<uint16_t*>(dst)[i] = F32ToF16(src[i]);
}

// A merge over a quantized base writes the exact sum, dequantised base plus adapter, in F32.
const FormatTraits kTable[] = {
    {"f32", 1, 4, 4, CopyF32, CopyF32, MatVecF32Rows, true, false, EncodeF32, DType::kF32,
     "float32", Format::kF32},
    {"f16", 1, 2, 2, F16Reference, F16Fast, MatVecF16Rows, false, false, EncodeF16, DType::kF16,
     "float16", Format::kF32},
    {"bf16", 1, 2, 2, Bf16Reference, Bf16Fast, MatVecBf16Rows, false, true, EncodeBf16,
     DType::kBF16, "bfloat16", Format::kBF16},
    {"q8_0", 32, 34, 2, DequantizeQ8_0Reference, DequantizeQ8_0Fast, MatVecQ8_0Rows, false, false,
     QuantizeQ8_0Reference, DType::kU8, nullptr, Format::kF32},
    {"q4_0", 32, 18, 2, DequantizeQ4_0Reference, DequantizeQ4_0Fast, MatVecQ4_0Rows, false, false,
     QuantizeQ4_0Reference, DType::kU8, nullptr, Format::kF32},
    {"nf4", 64, 36, 4, DequantizeNF4Reference, DequantizeNF4Fast, MatVecNF4Rows, false, false,
     QuantizeNF4Reference, DType::kU8, nullptr, Format::kF32},
    {"q8_0/i8", 32, 34, 2, DequantizeQ8_0Reference, DequantizeQ8_0Fast, MatVecQ8_0Int8Rows, false,
     false, QuantizeQ8_0Reference, DType::kU8, nullptr, Format::kF32},
    {"q4_0/i8", 32, 18, 2, DequantizeQ4_0Reference, DequantizeQ4_0Fast, MatVecQ4_0Int8Rows, false,
     false, QuantizeQ4_0Reference, DType::kU8, nullptr, Format::kF32},
};
constexpr int kFormats = sizeof(kTable) / sizeof(kTable[0]);

}  // namespace

const FormatTraits& Traits(Format f) { return kTable[static_cast<int>(f)]; }

Format FormatOfDType(DType dtype, const std::string& what) {
  for (int i = 0; i < kFormats; ++i)
    if (!kTable[i].quantized() && kTable[i].dtype == dtype) return static_cast<Format>(i);
  Fail(what + " has dtype " + DTypeName(dtype) + "; only F32, F16 and BF16 are supported");
}

Format FormatNamed(const std::string& name, const std::string& what) {
  std::string names;
  for (int i = 0; i < kFormats; ++i) {
    if (std::strchr(kTable[i].name, '/') != nullptr) continue;  // q8_0/i8: --int8-activations
    if (name == kTable[i].name) return static_cast<Format>(i);
    names += std::string(i ? ", " : "") + kTable[i].name;
  }
  Fail(what + ": unknown format '" + name + "' (formats: " + names + ")");
}

Format QuantizedFormatNamed(const std::string& name, const std::string& what) {
  std::vector<std::string> names;
  for (int i = 0; i < kFormats; ++i) {
    if (!kTable[i].quantized() || std::strchr(kTable[i].name, '/') != nullptr) continue;
    if (name == kTable[i].name) return static_cast<Format>(i);
    names.push_back(kTable[i].name);
  }
  std::string list;
  for (size_t i = 0; i < names.size(); ++i)
    list += (i == 0 ? "" : i + 1 == names.size() ? " or " : ", ") + names[i];
  Fail(what + ": expected " + list + ", got " + name);
}

int64_t FormatBytes(Format f, int64_t n) {
  const FormatTraits& t = Traits(f);
  return n / t.block * t.block_bytes;
}

}  // namespace tinylora
