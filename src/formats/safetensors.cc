#include "formats/safetensors.h"

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>

#include "util/error.h"
#include "util/half.h"

namespace tinylora {

namespace {

struct DTypeEntry {
  DType type;
  const char* name;
  size_t size;
};
constexpr DTypeEntry kDTypes[] = {
    {DType::kF32, "F32", 4},   {DType::kF16, "F16", 2}, {DType::kBF16, "BF16", 2},
    {DType::kF64, "F64", 8},   {DType::kI64, "I64", 8}, {DType::kI32, "I32", 4},
    {DType::kI16, "I16", 2},   {DType::kI8, "I8", 1},   {DType::kU8, "U8", 1},
    {DType::kBool, "BOOL", 1},
};

// Largest header accepted: real headers are kilobytes; this bounds a hostile length.
constexpr uint64_t kMaxHeaderBytes = 100u << 20;

}  // namespace

size_t DTypeSize(DType t) {
  for (const auto& e : kDTypes)
    if (e.type == t) return e.size;
  return 0;
}

const char* DTypeName(DType t) {
  for (const auto& e : kDTypes)
    if (e.type == t) return e.name;
  return "?";
}

bool ParseDType(const std::string& name, DType* out) {
  for (const auto& e : kDTypes) {
    if (name == e.name) {
      *out = e.type;
      return true;
    }
  }
  return false;
}

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

bool WidenToF32(DType dtype, const uint8_t* src, int64_t n, float* dst) {
  if (dtype == DType::kF32) {
    std::memcpy(dst, src, static_cast<size_t>(n) * 4);
    return true;
  }
  if (dtype != DType::kF16 && dtype != DType::kBF16) return false;
  for (int64_t i = 0; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, src + 2 * i, 2);
    dst[i] = dtype == DType::kF16 ? F16ToF32(h) : Bf16ToF32(h);
  }
  return true;
}

SafetensorsHeader ParseSafetensors(const uint8_t* bytes, size_t size, const std::string& what) {
  if (size < 8) Fail(what + ": not a safetensors file (" + std::to_string(size) + " bytes)");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];
  if (header_len > size - 8) {
    Fail(what + ": header length " + std::to_string(header_len) +
         " runs past the end of the file (" + std::to_string(size) + " bytes)");
  }
  if (header_len > kMaxHeaderBytes) {
    Fail(what + ": header length " + std::to_string(header_len) + " is implausibly large");
  }
  const char* text = reinterpret_cast<const char*>(bytes + 8);
  nlohmann::json j = nlohmann::json::parse(text, text + header_len, nullptr, false);
  if (j.is_discarded()) Fail(what + ": header is not valid JSON");
  if (!j.is_object()) Fail(what + ": header is not a JSON object");

  SafetensorsHeader h;
  h.data_start = 8 + header_len;
  const size_t data_size = size - h.data_start;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    const nlohmann::json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) Fail(what + ": __metadata__ is not an object");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string())
          Fail(what + ": __metadata__ value '" + m.key() + "' is not a string");
        h.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string where = what + ": tensor '" + name + "'";
    if (!v.is_object()) Fail(where + ": entry is not an object");
    auto dt = v.find("dtype");
    auto sh = v.find("shape");
    auto off = v.find("data_offsets");
    if (dt == v.end() || !dt->is_string()) Fail(where + ": missing dtype");
    if (sh == v.end() || !sh->is_array()) Fail(where + ": missing shape");
    if (off == v.end() || !off->is_array() || off->size() != 2)
      Fail(where + ": missing data_offsets");
    TensorInfo t;
    t.name = name;
    if (!ParseDType(dt->get<std::string>(), &t.dtype)) {
      Fail(where + ": unknown dtype '" + dt->get<std::string>() + "'");
    }
    // numel * dtype size, refusing anything that would overflow or exceed the file.
    uint64_t bytes_needed = DTypeSize(t.dtype);
    for (const auto& d : *sh) {
      if (!d.is_number_unsigned()) Fail(where + ": shape has a non-integer or negative dimension");
      uint64_t dim = d.get<uint64_t>();
      if (dim > (uint64_t{1} << 53)) Fail(where + ": shape has an implausibly large dimension");
      if (dim != 0 && bytes_needed > data_size / dim) {
        Fail(where + ": shape is larger than the file");
      }
      bytes_needed *= dim;
      t.shape.push_back(static_cast<int64_t>(dim));
    }
    for (const auto& o : *off) {
      if (!o.is_number_unsigned()) Fail(where + ": data_offsets are not non-negative integers");
    }
    uint64_t begin = (*off)[0].get<uint64_t>(), end = (*off)[1].get<uint64_t>();
    if (begin > end || end > data_size) {
      Fail(where + ": data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
           "] out of range (data is " + std::to_string(data_size) + " bytes)");
    }
    if (end - begin != bytes_needed) {
      Fail(where + ": data_offsets span " + std::to_string(end - begin) +
           " bytes but dtype and shape need " + std::to_string(bytes_needed));
    }
    t.offset = h.data_start + begin;
    t.nbytes = end - begin;
    h.tensors.push_back(std::move(t));
  }
  std::sort(h.tensors.begin(), h.tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.offset < b.offset || (a.offset == b.offset && a.nbytes < b.nbytes);
  });
  for (size_t i = 1; i < h.tensors.size(); ++i) {
    const TensorInfo& prev = h.tensors[i - 1];
    if (h.tensors[i].offset < prev.offset + prev.nbytes) {
      Fail(what + ": tensors '" + prev.name + "' and '" + h.tensors[i].name + "' overlap");
    }
  }
  return h;
}

SafetensorsFile::SafetensorsFile(const std::string& path, bool copy_on_write)
    : file_(path, copy_on_write) {
  header_ = ParseSafetensors(file_.data(), file_.size(), path);
}

const TensorInfo* SafetensorsFile::Find(const std::string& name) const {
  for (const auto& t : header_.tensors)
    if (t.name == name) return &t;
  return nullptr;
}

void WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  nlohmann::json j = nlohmann::json::object();
  if (!metadata.empty()) j["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    uint64_t n = DTypeSize(t.dtype);
    for (int64_t d : t.shape) n *= static_cast<uint64_t>(d);
    j[t.name] = {
        {"dtype", DTypeName(t.dtype)}, {"shape", t.shape}, {"data_offsets", {offset, offset + n}}};
    offset += n;
  }
  std::string header = j.dump();
  while ((8 + header.size()) % 8 != 0) header.push_back(' ');
  uint8_t len[8];
  for (int i = 0; i < 8; ++i)
    len[i] = static_cast<uint8_t>(static_cast<uint64_t>(header.size()) >> (8 * i));
  AtomicFileWriter w(path);
  w.Write(len, 8);
  w.Write(header.data(), header.size());
  for (const auto& t : tensors) {
    size_t n = DTypeSize(t.dtype);
    for (int64_t d : t.shape) n *= static_cast<size_t>(d);
    if (n == 0) continue;
    if (t.data != nullptr) {
      w.Write(t.data, n);
      continue;
    }
    size_t produced = 0;
    t.produce([&](const void* bytes, size_t size) {
      w.Write(bytes, size);
      produced += size;
    });
    if (produced != n) {
      FailRuntime(path + ": tensor '" + t.name + "' produced " + std::to_string(produced) +
                  " bytes, expected " + std::to_string(n));
    }
  }
  w.Commit();
}

}  // namespace tinylora
