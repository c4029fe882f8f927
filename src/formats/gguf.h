// GGUF, llama.cpp's file (version 2 or 3): "GGUF", a u32 version, u64 tensor and key-value
// counts, the key-value pairs (u64-length strings; typed scalars, strings and arrays), one info
// per tensor (name, dimensions innermost first, GGML type, offset into the data), then the tensor
// data, each tensor at a multiple of `general.alignment` (32 unless the file says otherwise).
// This file is the container only: which keys and tensors a Llama model has is model/gguf_llama.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "formats/safetensors.h"
#include "util/file.h"

namespace tinylora {

enum class GgufType : uint32_t {
  kU8 = 0,
  kI8 = 1,
  kU16 = 2,
  kI16 = 3,
  kU32 = 4,
  kI32 = 5,
  kF32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kU64 = 10,
  kI64 = 11,
  kF64 = 12
};

// One value: a scalar (its little-endian bytes), a string, or an array of either.
struct GgufValue {
  GgufType type = GgufType::kU32;
  GgufType elem = GgufType::kU8;  // arrays: the element type
  uint64_t count = 0;             // arrays: the element count
  std::vector<uint8_t> bytes;     // numeric scalars and arrays: the elements' bytes
  std::string str;                // a string
  std::vector<std::string> strs;  // an array of strings

  static GgufValue U32(uint32_t v);
  static GgufValue I32(int32_t v);
  static GgufValue F32(float v);
  static GgufValue Bool(bool v);
  static GgufValue String(std::string s);
  static GgufValue Strings(std::vector<std::string> v);
  static GgufValue F32s(const std::vector<float>& v);
  static GgufValue I32s(const std::vector<int32_t>& v);
  static GgufValue U8s(const std::string& bytes);

  bool is_integer() const;  // a scalar of one of the integer types
  bool is_number() const;   // an integer or a float scalar
  int64_t AsInt() const;    // integer scalars (a u64 above 2^63 comes out negative)
  double AsDouble() const;  // number scalars
  // Numeric arrays: element i as a double (any numeric element type).
  double At(uint64_t i) const;
};

const char* GgufTypeName(GgufType t);

// The GGML tensor types tinylora reads and writes (GGML's ids).
enum class GgmlType : uint32_t { kF32 = 0, kF16 = 1, kQ4_0 = 2, kQ8_0 = 8, kBF16 = 30 };
// GGML's name of a type id ("q6_k", …; "type N" for an id GGML does not define).
std::string GgmlTypeName(uint32_t id);
// Bytes of n weights of a type tinylora reads (n a multiple of its block); its block.
int64_t GgmlTypeBytes(GgmlType t, int64_t n);
int64_t GgmlTypeBlock(GgmlType t);

struct GgufTensor {
  std::string name;
  GgmlType type = GgmlType::kF32;
  std::vector<int64_t> ne;  // dimensions, innermost (a row's length) first
  size_t offset = 0;        // absolute byte offset in the file
  size_t nbytes = 0;
  int64_t numel() const;
};

struct GgufHeader {
  uint32_t version = 3;
  std::vector<std::pair<std::string, GgufValue>> kv;  // in file order
  std::vector<GgufTensor> tensors;                    // in file order
  uint64_t alignment = 32;
  size_t data_start = 0;
  const GgufValue* Find(const std::string& key) const;  // nullptr when absent
  const GgufTensor* FindTensor(const std::string& name) const;
};

// True when the bytes start with GGUF's magic.
bool IsGguf(const uint8_t* bytes, size_t size);
bool IsGgufFile(const std::string& path);

// Validates everything a reader relies on: magic and version, every count and length within the
// file, known value types, unique keys and tensor names, a power-of-two alignment, tensors of a
// type tinylora reads (others refused naming the tensor and its type), rows a whole number of
// blocks, offsets aligned, inside the data and not overlapping. `what` names the file in errors.
// Throws Error (exit 2).
GgufHeader ParseGguf(const uint8_t* bytes, size_t size, const std::string& what);

// One GGUF file, memory-mapped.
class GgufFile {
 public:
  explicit GgufFile(const std::string& path);
  const GgufHeader& header() const { return header_; }
  const uint8_t* Data(const GgufTensor& t) const { return file_.data() + t.offset; }
  const MappedFile& file() const { return file_; }
  const std::string& path() const { return file_.path(); }

 private:
  MappedFile file_;
  GgufHeader header_;
};

// A tensor to write: `ne` innermost first; `produce` streams exactly its GgmlTypeBytes(type,
// numel) bytes through the sink, in order.
struct GgufTensorToWrite {
  std::string name;
  GgmlType type;
  std::vector<int64_t> ne;
  std::function<void(const ByteSink& sink)> produce;
};

// Writes a version-3 file atomically (temp name, fsync, rename), tensors aligned to `alignment`
// (which is recorded as general.alignment when it is not 32).
void WriteGguf(const std::string& path, std::vector<std::pair<std::string, GgufValue>> kv,
               const std::vector<GgufTensorToWrite>& tensors, uint32_t alignment = 32);

}  // namespace tinylora
