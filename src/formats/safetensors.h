// safetensors: an 8-byte little-endian header length N, N bytes of JSON
//   {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}}
// then the tensor bytes; offsets are relative to the first byte after the header.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "util/file.h"

namespace tinylora {

enum class DType { kF32, kF16, kBF16, kF64, kI64, kI32, kI16, kI8, kU8, kBool };

size_t DTypeSize(DType t);
const char* DTypeName(DType t);
bool ParseDType(const std::string& name, DType* out);

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  size_t offset = 0;  // absolute byte offset in the file
  size_t nbytes = 0;
  int64_t numel() const;
};

struct SafetensorsHeader {
  std::vector<TensorInfo> tensors;  // in the order of their data offsets
  std::map<std::string, std::string> metadata;
  size_t data_start = 0;  // 8 + header length
};

// Validates everything a reader relies on: header length within the file, JSON well formed,
// known dtypes, shapes matching byte counts, offsets inside the data and not overlapping.
// `what` names the file in error messages. Throws Error (exit 2).
SafetensorsHeader ParseSafetensors(const uint8_t* bytes, size_t size, const std::string& what);

// dst (n) = the F32, F16 or BF16 values at src (any alignment), widened to F32.
// False, with dst untouched, for any other dtype.
bool WidenToF32(DType dtype, const uint8_t* src, int64_t n, float* dst);

// One safetensors file, memory-mapped.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path, bool copy_on_write = false);
  const SafetensorsHeader& header() const { return header_; }
  const TensorInfo* Find(const std::string& name) const;  // nullptr when absent
  const uint8_t* Data(const TensorInfo& t) const { return file_.data() + t.offset; }
  // The tensor's bytes, writable in a copy-on-write mapping, else null.
  uint8_t* WritableData(const TensorInfo& t) const {
    return file_.writable_data() == nullptr ? nullptr : file_.writable_data() + t.offset;
  }
  const MappedFile& file() const { return file_; }
  const std::string& path() const { return file_.path(); }

 private:
  MappedFile file_;
  SafetensorsHeader header_;
};

// A tensor to write: `data` holds numel * DTypeSize(dtype) bytes, or, when `data` is null,
// `produce` streams them through the sink it is given (e.g. a tensor stored in pieces or in
// another layout), in order; a producer that yields another byte count is a bug (exit 1).
using ByteSink = std::function<void(const void* bytes, size_t size)>;
struct TensorToWrite {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  std::function<void(const ByteSink& sink)> produce = nullptr;
};

// Writes atomically (temp name, fsync, rename). Header padded with spaces to 8 bytes.
void WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

}  // namespace tinylora
