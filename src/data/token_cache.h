// The tokenised data cache (DESIGN.md §4): training documents turned into one flat token
// stream, stored beside a small JSON header and memory-mapped for reading.
//
//   DIR/NAME.tokens  N token ids, little-endian uint16 (vocab <= 65536) or uint32
//   DIR/NAME.mask    N bytes: 1 = this token is a prediction target that carries loss
//   DIR/NAME.json    {"version": 1, "split", "dtype": "u16"|"u32", "tokens": N, "loss_tokens",
//                     "documents": D, "vocab_size": V, "bos", "eos", "val_fraction",
//                     "sources": [{"path", "size", "mtime"}], "tokenizer_bytes_hash"}
//
// Each document is BOS + Encode(prompt + text) + EOS. Masks: BOS 0 (never a target); prompt
// tokens 0; text/completion tokens and the EOS 1. Where the prompt's tokens stop is the length
// of the common prefix of Encode(prompt) and Encode(prompt + text), so the tokens are exactly
// those of the whole document and a merge across the boundary counts as completion.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "util/file.h"

namespace tinylora {

// Read side of one cache, memory-mapped. Movable, not copyable.
class TokenCache {
 public:
  // Opens DIR/NAME.{json,tokens,mask}. Error (exit 2) naming the file when one is missing, the
  // header is malformed, or a file's size disagrees with the header (truncated/inconsistent).
  TokenCache(const std::string& dir, const std::string& name);

  int64_t size() const { return size_; }  // tokens in the stream
  int64_t documents() const { return documents_; }
  int64_t loss_tokens() const { return loss_tokens_; }  // tokens whose mask is 1
  int vocab_size() const { return vocab_size_; }        // of the tokenizer that built it
  const std::string& path() const { return prefix_; }   // DIR/NAME

  int32_t token(int64_t i) const {
    const uint8_t* p = tokens_.data() + static_cast<size_t>(i) * static_cast<size_t>(width_);
    if (width_ == 2) return static_cast<int32_t>(p[0] | (p[1] << 8));
    return static_cast<int32_t>(static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
                                (static_cast<uint32_t>(p[2]) << 16) |
                                (static_cast<uint32_t>(p[3]) << 24));
  }
  uint8_t mask(int64_t i) const { return mask_.data()[i] != 0 ? 1 : 0; }

  // tokens (count), mask (count) = the stream's [begin, begin + count); either may be null.
  void Read(int64_t begin, int64_t count, int32_t* tokens, uint8_t* mask) const;

  // Error (exit 2) naming the token file unless every token is < `vocab` (the model's
  // vocabulary) and every mask byte is 0 or 1.
  void Validate(int vocab) const;

 private:
  std::string prefix_;
  MappedFile tokens_, mask_;
  int width_ = 2;  // bytes per token
  int64_t size_ = 0, documents_ = 0, loss_tokens_ = 0;
  int vocab_size_ = 0;
};

// What to tokenise and where to keep it.
struct CacheSpec {
  std::vector<std::string> paths;  // files and folders (see ListSources)
  std::string tokenizer_model;  // a tokenizer.model's bytes: they encode, their hash keys the cache
  std::string tokenizer_name;   // where they came from, for messages
  std::string dir;              // cache directory, created if missing
  std::string name = "train";   // DIR/NAME.*: the training split
  std::string val_name = "val";  // DIR/VAL_NAME.*: the validation split, when val_fraction > 0
  double val_fraction = 0;       // in [0, 0.5]
  // Called now and then while building with the documents and tokens written so far.
  std::function<void(int64_t documents, int64_t tokens)> progress;
};

struct DataCaches {
  TokenCache train;
  std::optional<TokenCache> val;  // iff val_fraction > 0; holds 0 tokens with a single document
  bool rebuilt = false;           // false when the existing cache was reused
};

// Reuses DIR/NAME (and DIR/VAL_NAME) when their headers name the same sources (absolute path,
// size, mtime), tokenizer hash and val_fraction; otherwise rebuilds both in one streaming pass
// (documents encoded in parallel batches, written in order, so the result does not depend on
// the thread count). A build writes temporary files, fsyncs and renames them, headers last
// (the old headers are removed first), so a crash never leaves a cache that looks complete.
// Document k goes to validation iff IsValidationDocument(k, val_fraction). If that leaves the
// validation split empty with >= 2 documents, the last document moves to validation; if it
// leaves training empty, the last validation document moves to training.
// Errors (exit 2): val_fraction outside [0, 0.5], bad sources (ListSources / ReadDocuments),
// a bad tokenizer, and no documents at all ("no training data in ...").
DataCaches OpenOrBuild(const CacheSpec& spec);

// splitmix64(doc_index ^ constant) / 2^64 < val_fraction.
bool IsValidationDocument(int64_t doc_index, double val_fraction);

// 64-bit FNV-1a.
uint64_t Fnv1a64(const void* data, size_t size);

}  // namespace tinylora
