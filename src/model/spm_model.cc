#include "model/spm_model.h"

#include <cstdint>
#include <cstring>

#include "util/error.h"

namespace tinylora {

namespace {

// Wire types.
constexpr int kVarint = 0, kFixed64 = 1, kBytes = 2, kFixed32 = 5;

class ProtoReader {
 public:
  ProtoReader(const std::string& bytes, const std::string& what)
      : p_(bytes.data()), end_(bytes.data() + bytes.size()), what_(what) {}
  ProtoReader(const char* p, const char* end, const std::string& what)
      : p_(p), end_(end), what_(what) {}
  bool Done() const { return p_ == end_; }
  uint64_t Varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (p_ == end_) Bad("a varint runs past the end");
      const uint8_t b = static_cast<uint8_t>(*p_++);
      v |= static_cast<uint64_t>(b & 0x7f) << shift;
      if (b < 0x80) return v;
    }
    Bad("a varint is longer than 10 bytes");
  }
  // The next field's number and wire type.
  void Key(int* field, int* wire) {
    const uint64_t k = Varint();
    *field = static_cast<int>(k >> 3);
    *wire = static_cast<int>(k & 7);
  }
  std::string Bytes() {
    const uint64_t n = Varint();
    if (n > static_cast<uint64_t>(end_ - p_)) Bad("a length runs past the end");
    std::string s(p_, static_cast<size_t>(n));
    p_ += n;
    return s;
  }
  float Fixed32Float() {
    if (end_ - p_ < 4) Bad("a float runs past the end");
    float f;
    std::memcpy(&f, p_, 4);
    p_ += 4;
    return f;
  }
  void Skip(int wire) {
    if (wire == kVarint) {
      Varint();
    } else if (wire == kBytes) {
      Bytes();
    } else if (wire == kFixed32 || wire == kFixed64) {
      const long n = wire == kFixed32 ? 4 : 8;
      if (end_ - p_ < n) Bad("a fixed-size field runs past the end");
      p_ += n;
    } else {
      Bad("unknown wire type " + std::to_string(wire));
    }
  }
  void Expect(int wire, int want) {
    if (wire != want) Bad("a field has wire type " + std::to_string(wire));
  }
  [[noreturn]] void Bad(const std::string& why) const {
    Fail(what_ + ": not a SentencePiece model (" + why + ")");
  }

 private:
  const char* p_;
  const char* end_;
  const std::string& what_;
};

class ProtoWriter {
 public:
  std::string out;
  void Varint(uint64_t v) {
    while (v >= 0x80) {
      out.push_back(static_cast<char>((v & 0x7f) | 0x80));
      v >>= 7;
    }
    out.push_back(static_cast<char>(v));
  }
  void Key(int field, int wire) { Varint(static_cast<uint64_t>(field) << 3 | wire); }
  void Int(int field, int64_t v) {  // int32/enum/bool: negative values as 10-byte varints
    Key(field, kVarint);
    Varint(static_cast<uint64_t>(v));
  }
  void Bytes(int field, const std::string& s) {
    Key(field, kBytes);
    Varint(s.size());
    out += s;
  }
  void Float(int field, float f) {
    Key(field, kFixed32);
    char b[4];
    std::memcpy(b, &f, 4);
    out.append(b, 4);
  }
};

SpmPiece ReadPiece(ProtoReader r) {
  SpmPiece p;
  while (!r.Done()) {
    int field, wire;
    r.Key(&field, &wire);
    if (field == 1) {
      r.Expect(wire, kBytes);
      p.piece = r.Bytes();
    } else if (field == 2) {
      r.Expect(wire, kFixed32);
      p.score = r.Fixed32Float();
    } else if (field == 3) {
      r.Expect(wire, kVarint);
      const uint64_t t = r.Varint();
      if (t < 1 || t > 6) r.Bad("piece type " + std::to_string(t));
      p.type = static_cast<SpmPieceType>(t);
    } else {
      r.Skip(wire);
    }
  }
  return p;
}

void ReadTrainerSpec(ProtoReader r, SpmModel* m) {
  while (!r.Done()) {
    int field, wire;
    r.Key(&field, &wire);
    int* id = field == 40   ? &m->unk_id
              : field == 41 ? &m->bos_id
              : field == 42 ? &m->eos_id
              : field == 43 ? &m->pad_id
                            : nullptr;
    if (field == 3 || field == 35 || id != nullptr) {
      r.Expect(wire, kVarint);
      const int v = static_cast<int>(static_cast<int64_t>(r.Varint()));
      if (field == 3) m->model_type = v;
      if (field == 35) m->byte_fallback = v != 0;
      if (id != nullptr) *id = v;
    } else {
      r.Skip(wire);
    }
  }
}

void ReadNormalizerSpec(ProtoReader r, SpmModel* m) {
  while (!r.Done()) {
    int field, wire;
    r.Key(&field, &wire);
    if (field == 1 || field == 2) {
      r.Expect(wire, kBytes);
      (field == 1 ? m->normalizer_name : m->precompiled_charsmap) = r.Bytes();
    } else if (field >= 3 && field <= 5) {
      r.Expect(wire, kVarint);
      const bool v = r.Varint() != 0;
      if (field == 3) m->add_dummy_prefix = v;
      if (field == 4) m->remove_extra_whitespaces = v;
      if (field == 5) m->escape_whitespaces = v;
    } else {
      r.Skip(wire);
    }
  }
}

}  // namespace

SpmModel ParseSpmModel(const std::string& bytes, const std::string& what) {
  SpmModel m;
  ProtoReader r(bytes, what);
  while (!r.Done()) {
    int field, wire;
    r.Key(&field, &wire);
    if (field >= 1 && field <= 3) {
      r.Expect(wire, kBytes);
      const std::string sub = r.Bytes();
      ProtoReader s(sub.data(), sub.data() + sub.size(), what);
      if (field == 1) m.pieces.push_back(ReadPiece(s));
      if (field == 2) ReadTrainerSpec(s, &m);
      if (field == 3) ReadNormalizerSpec(s, &m);
    } else {
      r.Skip(wire);
    }
  }
  if (m.pieces.empty()) r.Bad("no pieces");
  return m;
}

std::string SerializeSpmModel(const SpmModel& m) {
  ProtoWriter w;
  for (const SpmPiece& p : m.pieces) {
    ProtoWriter pw;
    pw.Bytes(1, p.piece);
    pw.Float(2, p.score);
    pw.Int(3, static_cast<int>(p.type));
    w.Bytes(1, pw.out);
  }
  ProtoWriter t;
  t.Int(3, m.model_type);
  t.Int(4, static_cast<int64_t>(m.pieces.size()));
  t.Int(35, m.byte_fallback);
  const int ids[4] = {m.unk_id, m.bos_id, m.eos_id, m.pad_id};
  for (int k = 0; k < 4; ++k) t.Int(40 + k, ids[k]);
  // unk_piece, bos_piece, eos_piece, pad_piece: SentencePiece finds the special ids by these
  const int n = static_cast<int>(m.pieces.size());
  for (int k = 0; k < 4; ++k) {
    if (ids[k] >= 0 && ids[k] < n) t.Bytes(45 + k, m.pieces[static_cast<size_t>(ids[k])].piece);
  }
  w.Bytes(2, t.out);
  ProtoWriter ns;
  ns.Bytes(1, m.normalizer_name);
  ns.Bytes(2, m.precompiled_charsmap);
  ns.Int(3, m.add_dummy_prefix);
  ns.Int(4, m.remove_extra_whitespaces);
  ns.Int(5, m.escape_whitespaces);
  w.Bytes(3, ns.out);
  return w.out;
}

}  // namespace tinylora
