#include "formats/gguf.h"

#include <algorithm>
#include <cstring>

#include "util/error.h"

namespace tinylora {

namespace {

// Bytes of one scalar of a numeric (or bool) type; 0 for strings, arrays and unknown ids.
size_t ScalarSize(GgufType t) {
  switch (t) {
    case GgufType::kU8:
    case GgufType::kI8:
    case GgufType::kBool:
      return 1;
    case GgufType::kU16:
    case GgufType::kI16:
      return 2;
    case GgufType::kU32:
    case GgufType::kI32:
    case GgufType::kF32:
      return 4;
    case GgufType::kU64:
    case GgufType::kI64:
    case GgufType::kF64:
      return 8;
    default:
      return 0;
  }
}

bool KnownType(uint32_t t) { return t <= static_cast<uint32_t>(GgufType::kF64); }

// GGML's type names, by id (empty: an id GGML does not define).
constexpr const char* kGgmlNames[] = {
    "f32",     "f16",   "q4_0",   "q4_1",  "",      "",       "q5_0", "q5_1",    "q8_0",
    "q8_1",    "q2_k",  "q3_k",   "q4_k",  "q5_k",  "q6_k",   "q8_k", "iq2_xxs", "iq2_xs",
    "iq3_xxs", "iq1_s", "iq4_nl", "iq3_s", "iq2_s", "iq4_xs", "i8",   "i16",     "i32",
    "i64",     "f64",   "iq1_m",  "bf16",  "",      "",       "",     "tq1_0",   "tq2_0"};

// The types tinylora reads: weights per block and bytes per block.
struct GgmlLayout {
  GgmlType type;
  int64_t block, block_bytes;
};
constexpr GgmlLayout kReadable[] = {{GgmlType::kF32, 1, 4},
                                    {GgmlType::kF16, 1, 2},
                                    {GgmlType::kQ4_0, 32, 18},
                                    {GgmlType::kQ8_0, 32, 34},
                                    {GgmlType::kBF16, 1, 2}};

const GgmlLayout* LayoutOf(uint32_t id) {
  for (const GgmlLayout& l : kReadable)
    if (static_cast<uint32_t>(l.type) == id) return &l;
  return nullptr;
}

// Reads the file front to back; every read is checked against the end.
class Reader {
 public:
  Reader(const uint8_t* bytes, size_t size, const std::string& what)
      : p_(bytes), size_(size), what_(what) {}
  size_t pos() const { return pos_; }
  size_t left() const { return size_ - pos_; }
  const uint8_t* Take(size_t n, const std::string& item) {
    if (n > left()) {
      Fail(what_ + ": " + item + " (" + std::to_string(n) + " bytes at offset " +
           std::to_string(pos_) + ") runs past the end of the file (" + std::to_string(size_) +
           " bytes)");
    }
    const uint8_t* at = p_ + pos_;
    pos_ += n;
    return at;
  }
  template <class T>
  T Get(const std::string& item) {
    T v;
    std::memcpy(&v, Take(sizeof(T), item), sizeof(T));
    return v;
  }
  std::string String(const std::string& item) {
    const uint64_t n = Get<uint64_t>(item + "'s length");
    if (n > left()) {
      Fail(what_ + ": " + item + " of " + std::to_string(n) + " bytes at offset " +
           std::to_string(pos_) + " runs past the end of the file (" + std::to_string(size_) +
           " bytes)");
    }
    const uint8_t* s = Take(static_cast<size_t>(n), item);
    return std::string(reinterpret_cast<const char*>(s), static_cast<size_t>(n));
  }

 private:
  const uint8_t* p_;
  size_t size_, pos_ = 0;
  const std::string& what_;
};

GgufValue ReadValue(Reader& r, GgufType type, const std::string& key, const std::string& what) {
  GgufValue v;
  v.type = type;
  if (type == GgufType::kString) {
    v.str = r.String("the value of '" + key + "'");
  } else if (type == GgufType::kArray) {
    const uint32_t elem = r.Get<uint32_t>("the element type of '" + key + "'");
    if (!KnownType(elem)) {
      Fail(what + ": key '" + key + "' is an array of unknown type " + std::to_string(elem));
    }
    v.elem = static_cast<GgufType>(elem);
    if (v.elem == GgufType::kArray) Fail(what + ": key '" + key + "' is an array of arrays");
    v.count = r.Get<uint64_t>("the element count of '" + key + "'");
    if (v.elem == GgufType::kString) {
      // each string holds at least its 8-byte length
      if (v.count > r.left() / 8) {
        Fail(what + ": key '" + key + "' claims " + std::to_string(v.count) +
             " strings, past the end of the file");
      }
      v.strs.reserve(static_cast<size_t>(v.count));
      for (uint64_t i = 0; i < v.count; ++i)
        v.strs.push_back(r.String("string " + std::to_string(i) + " of '" + key + "'"));
    } else {
      const size_t es = ScalarSize(v.elem);
      if (v.count > r.left() / es) {
        Fail(what + ": key '" + key + "' claims " + std::to_string(v.count) + " elements of " +
             GgufTypeName(v.elem) + ", past the end of the file");
      }
      const size_t n = static_cast<size_t>(v.count) * es;
      const uint8_t* b = r.Take(n, "the elements of '" + key + "'");
      v.bytes.assign(b, b + n);
    }
  } else {
    const size_t n = ScalarSize(type);
    const uint8_t* b = r.Take(n, "the value of '" + key + "'");
    v.bytes.assign(b, b + n);
  }
  return v;
}

double ScalarAt(GgufType t, const uint8_t* b) {
  auto get = [&](auto x) {
    std::memcpy(&x, b, sizeof(x));
    return static_cast<double>(x);
  };
  switch (t) {
    case GgufType::kU8:
      return get(uint8_t{});
    case GgufType::kI8:
      return get(int8_t{});
    case GgufType::kBool:
      return get(uint8_t{}) != 0 ? 1.0 : 0.0;
    case GgufType::kU16:
      return get(uint16_t{});
    case GgufType::kI16:
      return get(int16_t{});
    case GgufType::kU32:
      return get(uint32_t{});
    case GgufType::kI32:
      return get(int32_t{});
    case GgufType::kF32:
      return get(float{});
    case GgufType::kU64:
      return get(uint64_t{});
    case GgufType::kI64:
      return get(int64_t{});
    case GgufType::kF64:
      return get(double{});
    default:
      return 0.0;
  }
}

template <class T>
GgufValue Scalar(GgufType type, T x) {
  GgufValue v;
  v.type = type;
  v.bytes.resize(sizeof(T));
  std::memcpy(v.bytes.data(), &x, sizeof(T));
  return v;
}

template <class T>
GgufValue Array(GgufType elem, const T* x, size_t n) {
  GgufValue v;
  v.type = GgufType::kArray;
  v.elem = elem;
  v.count = n;
  v.bytes.resize(n * sizeof(T));
  if (n > 0) std::memcpy(v.bytes.data(), x, n * sizeof(T));
  return v;
}

}  // namespace

GgufValue GgufValue::U32(uint32_t v) { return Scalar(GgufType::kU32, v); }
GgufValue GgufValue::I32(int32_t v) { return Scalar(GgufType::kI32, v); }
GgufValue GgufValue::F32(float v) { return Scalar(GgufType::kF32, v); }
GgufValue GgufValue::Bool(bool v) { return Scalar(GgufType::kBool, static_cast<uint8_t>(v)); }
GgufValue GgufValue::String(std::string s) {
  GgufValue v;
  v.type = GgufType::kString;
  v.str = std::move(s);
  return v;
}
GgufValue GgufValue::Strings(std::vector<std::string> s) {
  GgufValue v;
  v.type = GgufType::kArray;
  v.elem = GgufType::kString;
  v.count = s.size();
  v.strs = std::move(s);
  return v;
}
GgufValue GgufValue::F32s(const std::vector<float>& x) {
  return Array(GgufType::kF32, x.data(), x.size());
}
GgufValue GgufValue::I32s(const std::vector<int32_t>& x) {
  return Array(GgufType::kI32, x.data(), x.size());
}
GgufValue GgufValue::U8s(const std::string& b) {
  return Array(GgufType::kU8, reinterpret_cast<const uint8_t*>(b.data()), b.size());
}

bool GgufValue::is_integer() const {
  return type != GgufType::kF32 && type != GgufType::kF64 && is_number();
}
bool GgufValue::is_number() const { return type != GgufType::kBool && ScalarSize(type) > 0; }
int64_t GgufValue::AsInt() const {
  if (type == GgufType::kU64 || type == GgufType::kI64) {
    int64_t x;
    std::memcpy(&x, bytes.data(), 8);
    return x;
  }
  return static_cast<int64_t>(ScalarAt(type, bytes.data()));
}
double GgufValue::AsDouble() const { return ScalarAt(type, bytes.data()); }
double GgufValue::At(uint64_t i) const {
  return ScalarAt(elem, bytes.data() + static_cast<size_t>(i) * ScalarSize(elem));
}

const char* GgufTypeName(GgufType t) {
  static const char* const kNames[] = {"u8",   "i8",     "u16",   "i16", "u32", "i32", "f32",
                                       "bool", "string", "array", "u64", "i64", "f64"};
  return KnownType(static_cast<uint32_t>(t)) ? kNames[static_cast<uint32_t>(t)] : "?";
}

std::string GgmlTypeName(uint32_t id) {
  if (id < sizeof(kGgmlNames) / sizeof(kGgmlNames[0]) && kGgmlNames[id][0] != '\0')
    return kGgmlNames[id];
  return "type " + std::to_string(id);
}

int64_t GgmlTypeBlock(GgmlType t) { return LayoutOf(static_cast<uint32_t>(t))->block; }

int64_t GgmlTypeBytes(GgmlType t, int64_t n) {
  const GgmlLayout& l = *LayoutOf(static_cast<uint32_t>(t));
  return n / l.block * l.block_bytes;
}

int64_t GgufTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : ne) n *= d;
  return n;
}

const GgufValue* GgufHeader::Find(const std::string& key) const {
  for (const auto& [k, v] : kv)
    if (k == key) return &v;
  return nullptr;
}

const GgufTensor* GgufHeader::FindTensor(const std::string& name) const {
  for (const auto& t : tensors)
    if (t.name == name) return &t;
  return nullptr;
}

bool IsGguf(const uint8_t* bytes, size_t size) {
  return size >= 4 && std::memcmp(bytes, "GGUF", 4) == 0;
}

bool IsGgufFile(const std::string& path) {
  if (IsDirectory(path) || !FileExists(path)) return false;
  MappedFile f(path);
  return IsGguf(f.data(), f.size());
}

GgufHeader ParseGguf(const uint8_t* bytes, size_t size, const std::string& what) {
  if (!IsGguf(bytes, size)) Fail(what + ": not a GGUF file (no 'GGUF' magic)");
  Reader r(bytes, size, what);
  r.Take(4, "the magic");
  GgufHeader h;
  h.version = r.Get<uint32_t>("the version");
  if (h.version != 2 && h.version != 3) {
    Fail(what + ": GGUF version " + std::to_string(h.version) +
         " (tinylora reads versions 2 and 3)");
  }
  const uint64_t n_tensors = r.Get<uint64_t>("the tensor count");
  const uint64_t n_kv = r.Get<uint64_t>("the key-value count");
  // A key-value pair takes at least 12 bytes (key length, type), a tensor info at least 24.
  if (n_kv > r.left() / 12 || n_tensors > r.left() / 24) {
    Fail(what + ": " + std::to_string(n_kv) + " key-value pairs and " + std::to_string(n_tensors) +
         " tensors cannot fit in the file (" + std::to_string(size) + " bytes)");
  }
  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string key = r.String("key " + std::to_string(i));
    const uint32_t type = r.Get<uint32_t>("the type of '" + key + "'");
    if (!KnownType(type))
      Fail(what + ": key '" + key + "' has unknown type " + std::to_string(type));
    if (h.Find(key) != nullptr) Fail(what + ": key '" + key + "' appears twice");
    GgufValue v = ReadValue(r, static_cast<GgufType>(type), key, what);
    h.kv.emplace_back(std::move(key), std::move(v));
  }
  if (const GgufValue* a = h.Find("general.alignment")) {
    if (a->type != GgufType::kU32 || a->AsInt() == 0 || (a->AsInt() & (a->AsInt() - 1)) != 0) {
      Fail(what + ": general.alignment must be a power of two (u32), got " +
           (a->is_number() ? std::to_string(a->AsInt()) : std::string(GgufTypeName(a->type))));
    }
    h.alignment = static_cast<uint64_t>(a->AsInt());
  }
  std::vector<uint64_t> rel_offsets;
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensor t;
    t.name = r.String("the name of tensor " + std::to_string(i));
    const std::string item = "tensor '" + t.name + "'";
    if (h.FindTensor(t.name) != nullptr) Fail(what + ": " + item + " appears twice");
    const uint32_t n_dims = r.Get<uint32_t>("the dimension count of " + item);
    if (n_dims < 1 || n_dims > 4)
      Fail(what + ": " + item + " has " + std::to_string(n_dims) + " dimensions (1 to 4 allowed)");
    int64_t numel = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const int64_t n = r.Get<int64_t>("the dimensions of " + item);
      if (n < 0 || (n > 0 && numel > (int64_t{1} << 50) / n))
        Fail(what + ": " + item + " has an impossible dimension " + std::to_string(n));
      numel *= n;
      t.ne.push_back(n);
    }
    const uint32_t type = r.Get<uint32_t>("the type of " + item);
    if (LayoutOf(type) == nullptr) {
      const std::string name = GgmlTypeName(type);
      if (name.rfind("type ", 0) == 0) Fail(what + ": " + item + " has unknown " + name);
      Fail(what + ": " + item + " is " + name +
           ", which tinylora does not read (it reads f32, f16, bf16, q8_0 and q4_0)");
    }
    t.type = static_cast<GgmlType>(type);
    if (t.ne[0] % GgmlTypeBlock(t.type) != 0) {
      Fail(what + ": " + item + " has rows of " + std::to_string(t.ne[0]) + " weights, not a " +
           "whole number of " + GgmlTypeName(type) + " blocks");
    }
    const uint64_t off = r.Get<uint64_t>("the offset of " + item);
    if (off % h.alignment != 0) {
      Fail(what + ": " + item + " starts at offset " + std::to_string(off) +
           ", not a multiple of the alignment " + std::to_string(h.alignment));
    }
    t.nbytes = static_cast<size_t>(GgmlTypeBytes(t.type, numel));
    rel_offsets.push_back(off);
    h.tensors.push_back(std::move(t));
  }
  h.data_start = (r.pos() + h.alignment - 1) / h.alignment * h.alignment;
  if (h.data_start > size && !h.tensors.empty()) {
    Fail(what + ": the tensor data would start at offset " + std::to_string(h.data_start) +
         ", past the end of the file (" + std::to_string(size) + " bytes)");
  }
  const size_t data_size = size >= h.data_start ? size - h.data_start : 0;
  for (size_t i = 0; i < h.tensors.size(); ++i) {
    GgufTensor& t = h.tensors[i];
    if (rel_offsets[i] > data_size || t.nbytes > data_size - rel_offsets[i]) {
      Fail(what + ": tensor '" + t.name + "' (" + std::to_string(t.nbytes) + " bytes at offset " +
           std::to_string(rel_offsets[i]) + ") runs past the end of the data (" +
           std::to_string(data_size) + " bytes)");
    }
    t.offset = h.data_start + static_cast<size_t>(rel_offsets[i]);
  }
  std::vector<const GgufTensor*> by_offset;
  for (const auto& t : h.tensors) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const GgufTensor* a, const GgufTensor* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const GgufTensor& a = *by_offset[i - 1];
    if (a.offset + a.nbytes > by_offset[i]->offset)
      Fail(what + ": tensors '" + a.name + "' and '" + by_offset[i]->name + "' overlap");
  }
  return h;
}

GgufFile::GgufFile(const std::string& path)
    : file_(path), header_(ParseGguf(file_.data(), file_.size(), path)) {}

namespace {

class HeaderWriter {
 public:
  std::string bytes;
  void Raw(const void* p, size_t n) { bytes.append(static_cast<const char*>(p), n); }
  template <class T>
  void Put(T x) {
    Raw(&x, sizeof(T));
  }
  void String(const std::string& s) {
    Put<uint64_t>(s.size());
    Raw(s.data(), s.size());
  }
  void Value(const GgufValue& v) {
    if (v.type == GgufType::kString) {
      String(v.str);
    } else if (v.type == GgufType::kArray) {
      Put<uint32_t>(static_cast<uint32_t>(v.elem));
      Put<uint64_t>(v.count);
      if (v.elem == GgufType::kString) {
        for (const auto& s : v.strs) String(s);
      } else {
        Raw(v.bytes.data(), v.bytes.size());
      }
    } else {
      Raw(v.bytes.data(), v.bytes.size());
    }
  }
};

}  // namespace

void WriteGguf(const std::string& path, std::vector<std::pair<std::string, GgufValue>> kv,
               const std::vector<GgufTensorToWrite>& tensors, uint32_t alignment) {
  if (alignment != 32) kv.emplace_back("general.alignment", GgufValue::U32(alignment));
  HeaderWriter w;
  w.Raw("GGUF", 4);
  w.Put<uint32_t>(3);
  w.Put<uint64_t>(tensors.size());
  w.Put<uint64_t>(kv.size());
  for (const auto& [key, value] : kv) {
    w.String(key);
    w.Put<uint32_t>(static_cast<uint32_t>(value.type));
    w.Value(value);
  }
  auto padded = [&](uint64_t n) { return (n + alignment - 1) / alignment * alignment; };
  uint64_t offset = 0;
  std::vector<uint64_t> sizes;
  for (const auto& t : tensors) {
    int64_t numel = 1;
    for (int64_t d : t.ne) numel *= d;
    sizes.push_back(static_cast<uint64_t>(GgmlTypeBytes(t.type, numel)));
    w.String(t.name);
    w.Put<uint32_t>(static_cast<uint32_t>(t.ne.size()));
    for (int64_t d : t.ne) w.Put<int64_t>(d);
    w.Put<uint32_t>(static_cast<uint32_t>(t.type));
    w.Put<uint64_t>(offset);
    offset = padded(offset + sizes.back());
  }
  w.bytes.resize(padded(w.bytes.size()), '\0');
  AtomicFileWriter out(path);
  out.Write(w.bytes.data(), w.bytes.size());
  const std::string zeros(alignment, '\0');
  for (size_t i = 0; i < tensors.size(); ++i) {
    uint64_t written = 0;
    tensors[i].produce([&](const void* p, size_t n) {
      out.Write(p, n);
      written += n;
    });
    if (written != sizes[i]) {
      FailRuntime("internal: tensor '" + tensors[i].name + "' produced " + std::to_string(written) +
                  " bytes, not " + std::to_string(sizes[i]));
    }
    out.Write(zeros.data(), padded(written) - written);
  }
  out.Commit();
}

}  // namespace tinylora
