#include "data/token_cache.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>

#include "data/sources.h"
#include "model/tokenizer.h"
#include "util/error.h"

namespace tinylora {

namespace {

constexpr int kVersion = 1;

// ---------------------------------------------------------------------------------------------
// Reading

int64_t HeaderInt(const nlohmann::json& j, const char* key, const std::string& where) {
  if (!j.contains(key) || !j[key].is_number_integer() || j[key].get<int64_t>() < 0) {
    Fail(where + ": \"" + key + "\" is missing or not a non-negative integer");
  }
  return j[key].get<int64_t>();
}

}  // namespace

TokenCache::TokenCache(const std::string& dir, const std::string& name)
    : prefix_(JoinPath(dir, name)) {
  const std::string header_path = prefix_ + ".json";
  if (!FileExists(header_path)) Fail(header_path + ": token cache header not found");
  nlohmann::json h;
  try {
    h = nlohmann::json::parse(ReadTextFile(header_path));
  } catch (const nlohmann::json::parse_error&) {
    Fail(header_path + ": not valid JSON");
  }
  if (!h.is_object()) Fail(header_path + ": expected a JSON object");
  const int64_t version = HeaderInt(h, "version", header_path);
  if (version != kVersion) {
    Fail(header_path + ": unsupported version " + std::to_string(version) + " (expected " +
         std::to_string(kVersion) + ")");
  }
  const std::string dtype = h.contains("dtype") && h["dtype"].is_string() ? h["dtype"] : "";
  if (dtype != "u16" && dtype != "u32")
    Fail(header_path + ": \"dtype\" must be \"u16\" or \"u32\"");
  width_ = dtype == "u16" ? 2 : 4;
  size_ = HeaderInt(h, "tokens", header_path);
  documents_ = HeaderInt(h, "documents", header_path);
  loss_tokens_ = HeaderInt(h, "loss_tokens", header_path);
  const int64_t vocab = HeaderInt(h, "vocab_size", header_path);
  if (vocab < 1 || vocab > std::numeric_limits<int32_t>::max() || (width_ == 2 && vocab > 65536)) {
    Fail(header_path + ": \"vocab_size\" " + std::to_string(vocab) + " does not fit \"" + dtype +
         "\"");
  }
  vocab_size_ = static_cast<int>(vocab);
  if (size_ > std::numeric_limits<int64_t>::max() / 4 || loss_tokens_ > size_) {
    Fail(header_path + ": inconsistent token counts");
  }

  tokens_ = MappedFile(prefix_ + ".tokens");
  mask_ = MappedFile(prefix_ + ".mask");
  const auto check = [&](const MappedFile& f, int64_t bytes_per_token) {
    const uint64_t want = static_cast<uint64_t>(size_) * static_cast<uint64_t>(bytes_per_token);
    if (f.size() != want) {
      Fail(f.path() + ": holds " + std::to_string(f.size()) + " bytes, but " + header_path +
           " says " + std::to_string(size_) + " tokens (" + std::to_string(want) +
           " bytes): the cache is truncated or inconsistent; delete it to rebuild");
    }
  };
  check(tokens_, width_);
  check(mask_, 1);
}

void TokenCache::Read(int64_t begin, int64_t count, int32_t* tokens, uint8_t* mask) const {
  if (begin < 0 || count < 0 || begin > size_ - count) {
    FailRuntime(prefix_ + ": read of tokens [" + std::to_string(begin) + ", +" +
                std::to_string(count) + ") outside the " + std::to_string(size_) + " tokens");
  }
  if (tokens != nullptr) {
    for (int64_t i = 0; i < count; ++i) tokens[i] = token(begin + i);
  }
  if (mask != nullptr) {
    const uint8_t* m = mask_.data() + begin;
    for (int64_t i = 0; i < count; ++i) mask[i] = m[i] != 0 ? 1 : 0;
  }
}

void TokenCache::Validate(int vocab) const {
  for (int64_t i = 0; i < size_; ++i) {
    const int64_t t = static_cast<uint32_t>(token(i));  // u32 ids above 2^31 stay positive
    if (t >= vocab) {
      Fail(tokens_.path() + ": token id " + std::to_string(t) + " at position " +
           std::to_string(i) + " is outside the model's vocabulary of " + std::to_string(vocab) +
           " (was the data tokenized for another model?)");
    }
  }
  const uint8_t* m = mask_.data();
  for (int64_t i = 0; i < size_; ++i) {
    if (m[i] > 1) {
      Fail(mask_.path() + ": byte " + std::to_string(i) + " is " + std::to_string(m[i]) +
           ", expected 0 or 1");
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Splitting and hashing

namespace {
uint64_t SplitMix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}
}  // namespace

bool IsValidationDocument(int64_t doc_index, double val_fraction) {
  const uint64_t h = SplitMix64(static_cast<uint64_t>(doc_index) ^ 0x7A1D5EEDC0FFEE01ull);
  return static_cast<double>(h >> 11) * 0x1.0p-53 < val_fraction;  // exact in double
}

uint64_t Fnv1a64(const void* data, size_t size) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  uint64_t h = 0xCBF29CE484222325ull;
  for (size_t i = 0; i < size; ++i) {
    h ^= p[i];
    h *= 0x100000001B3ull;
  }
  return h;
}

// ---------------------------------------------------------------------------------------------
// Building

namespace {

// Appends fixed-width little-endian values to PATH.tmp.PID through a buffer; Commit() fsyncs
// and renames it to PATH. Destroyed uncommitted, the temporary file is removed.
class ColumnWriter {
 public:
  ColumnWriter(const std::string& path, int width)
      : path_(path), tmp_(path + ".tmp." + std::to_string(::getpid())), width_(width) {
    fd_ = ::open(tmp_.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) FailRuntime(tmp_ + ": cannot create: " + std::strerror(errno));
    buf_.reserve(kBufferBytes);
  }
  ~ColumnWriter() {
    if (fd_ >= 0) {
      ::close(fd_);
      ::unlink(tmp_.c_str());
    }
  }
  ColumnWriter(const ColumnWriter&) = delete;
  ColumnWriter& operator=(const ColumnWriter&) = delete;

  int64_t count() const { return count_; }

  void Append(uint32_t v) {
    for (int b = 0; b < width_; ++b) buf_.push_back(static_cast<uint8_t>(v >> (8 * b)));
    ++count_;
    if (buf_.size() >= kBufferBytes) Flush();
  }

  // Moves the values [from, count) to the end of `dst`.
  void MoveTail(int64_t from, ColumnWriter& dst) {
    Flush();
    std::vector<uint8_t> chunk(kBufferBytes);
    for (int64_t off = from * width_; off < count_ * width_;) {
      const size_t n = static_cast<size_t>(
          std::min<int64_t>(static_cast<int64_t>(chunk.size()), count_ * width_ - off));
      const ssize_t got = ::pread(fd_, chunk.data(), n, off);
      if (got <= 0) FailRuntime(tmp_ + ": read back failed: " + std::strerror(errno));
      dst.AppendBytes(chunk.data(), static_cast<size_t>(got));
      off += got;
    }
    if (::ftruncate(fd_, from * width_) != 0) {
      FailRuntime(tmp_ + ": truncate failed: " + std::strerror(errno));
    }
    count_ = from;
    flushed_bytes_ = from * width_;
  }

  void Commit() {
    Flush();
    if (::fsync(fd_) != 0) FailRuntime(tmp_ + ": fsync failed: " + std::strerror(errno));
    ::close(fd_);
    fd_ = -1;
    if (::rename(tmp_.c_str(), path_.c_str()) != 0) {
      const std::string why = std::strerror(errno);
      ::unlink(tmp_.c_str());
      FailRuntime(path_ + ": rename failed: " + why);
    }
  }

 private:
  static constexpr size_t kBufferBytes = size_t{1} << 20;

  void AppendBytes(const uint8_t* p, size_t n) {
    buf_.insert(buf_.end(), p, p + n);
    count_ += static_cast<int64_t>(n) / width_;
    if (buf_.size() >= kBufferBytes) Flush();
  }

  void Flush() {
    size_t done = 0;
    while (done < buf_.size()) {
      const ssize_t n = ::pwrite(fd_, buf_.data() + done, buf_.size() - done, flushed_bytes_);
      if (n < 0) {
        if (errno == EINTR) continue;
        FailRuntime(tmp_ + ": write failed: " + std::strerror(errno));
      }
      done += static_cast<size_t>(n);
      flushed_bytes_ += n;
    }
    buf_.clear();
  }

  std::string path_, tmp_;
  int fd_ = -1;
  int width_;
  std::vector<uint8_t> buf_;
  int64_t count_ = 0;          // values appended (written or buffered)
  int64_t flushed_bytes_ = 0;  // bytes in the file
};

// One split being built: its two columns and counts.
struct SplitWriter {
  SplitWriter(const std::string& prefix, int width)
      : tokens(prefix + ".tokens", width), mask(prefix + ".mask", 1) {}
  ColumnWriter tokens, mask;
  int64_t documents = 0, loss_tokens = 0;
  int64_t last_doc_start = 0, last_doc_loss_before = 0;  // where its last document starts

  void StartDocument() {
    ++documents;
    last_doc_start = tokens.count();
    last_doc_loss_before = loss_tokens;
  }
  void Push(int32_t id, uint8_t m) {
    tokens.Append(static_cast<uint32_t>(id));
    mask.Append(m);
    loss_tokens += m;
  }
  // Moves this split's last document to the end of `dst`.
  void MoveLastDocument(SplitWriter& dst) {
    dst.StartDocument();
    const int64_t moved_loss = loss_tokens - last_doc_loss_before;
    tokens.MoveTail(last_doc_start, dst.tokens);
    mask.MoveTail(last_doc_start, dst.mask);
    loss_tokens -= moved_loss;
    dst.loss_tokens += moved_loss;
    --documents;
  }
};

nlohmann::json SourcesJson(const std::vector<SourceFile>& files) {
  nlohmann::json out = nlohmann::json::array();
  for (const SourceFile& f : files) {
    out.push_back({{"path", std::filesystem::absolute(f.path).lexically_normal().string()},
                   {"size", f.size},
                   {"mtime", f.mtime_ns}});
  }
  return out;
}

// Whether the header at `path` describes a cache of these sources, tokenizer and val_fraction.
bool HeaderMatches(const std::string& path, const nlohmann::json& sources,
                   const std::string& tokenizer_hash, double val_fraction) {
  if (!FileExists(path)) return false;
  try {
    const nlohmann::json h = nlohmann::json::parse(ReadTextFile(path));
    return h.at("version") == kVersion && h.at("sources") == sources &&
           h.at("tokenizer_bytes_hash") == tokenizer_hash &&
           h.at("val_fraction").get<double>() == val_fraction;
  } catch (const nlohmann::json::exception&) {
    return false;
  }
}

std::string Hex64(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

std::string JoinPaths(const std::vector<std::string>& paths) {
  std::string s;
  for (const std::string& p : paths) s += (s.empty() ? "" : ", ") + p;
  return s;
}

// Documents encoded per batch: up to this many bytes of text or this many documents.
constexpr size_t kBatchBytes = size_t{4} << 20;
constexpr size_t kBatchDocuments = 4096;

void Build(const CacheSpec& spec, const std::vector<SourceFile>& files,
           const nlohmann::json& sources, const std::string& tokenizer_hash) {
  const Tokenizer tok(spec.tokenizer_model, spec.tokenizer_name);
  const int vocab = tok.vocab_size(), bos = tok.bos_id(), eos = tok.eos_id();
  if (bos < 0 || eos < 0) Fail(spec.tokenizer_name + ": the tokenizer has no BOS or EOS token");
  const int width = vocab <= 65536 ? 2 : 4;
  const std::string train_prefix = JoinPath(spec.dir, spec.name);
  const std::string val_prefix = JoinPath(spec.dir, spec.val_name);
  const bool with_val = spec.val_fraction > 0;

  // A crash from here on leaves no header, so the next run rebuilds.
  ::unlink((train_prefix + ".json").c_str());
  if (with_val) ::unlink((val_prefix + ".json").c_str());
  FsyncDirectory(spec.dir);

  SplitWriter train(train_prefix, width);
  std::optional<SplitWriter> val;
  if (with_val) val.emplace(val_prefix, width);
  SplitWriter* current = nullptr;  // the split of the open document
  int64_t doc_index = -1;
  const auto close_document = [&] {
    if (current != nullptr) current->Push(eos, 1);
  };

  std::vector<Document> batch;
  size_t batch_bytes = 0;
  std::vector<std::vector<int>> ids;  // per document of the batch: Encode(prompt + text)
  std::vector<size_t> first_loss;     // per document: index of its first token with loss
  std::vector<std::exception_ptr> errors;
  const auto encode_batch = [&] {
    const int64_t n = static_cast<int64_t>(batch.size());
    ids.assign(batch.size(), {});
    first_loss.assign(batch.size(), 0);
    errors.assign(batch.size(), nullptr);
#pragma omp parallel for schedule(dynamic, 8)
    for (int64_t i = 0; i < n; ++i) {
      try {
        const Document& d = batch[static_cast<size_t>(i)];
        ids[i] = tok.Encode(d.prompt + d.text, /*add_bos=*/false);
        if (!d.prompt.empty()) {
          const std::vector<int> p = tok.Encode(d.prompt, /*add_bos=*/false);
          size_t k = 0;
          while (k < p.size() && k < ids[i].size() && p[k] == ids[i][k]) ++k;
          first_loss[i] = k;
        }
      } catch (...) {
        errors[i] = std::current_exception();
      }
    }
    for (const auto& e : errors) {
      if (e) std::rethrow_exception(e);
    }
    for (size_t i = 0; i < batch.size(); ++i) {
      if (!batch[i].continuation || current == nullptr) {
        close_document();
        ++doc_index;
        current = with_val && IsValidationDocument(doc_index, spec.val_fraction) ? &*val : &train;
        current->StartDocument();
        current->Push(bos, 0);
      }
      for (size_t j = 0; j < ids[i].size(); ++j) {
        const int id = ids[i][j];
        if (id < 0 || id >= vocab) FailRuntime("tokenizer returned id " + std::to_string(id));
        current->Push(id, j >= first_loss[i] ? 1 : 0);
      }
    }
    batch.clear();
    batch_bytes = 0;
    if (spec.progress) {
      spec.progress(doc_index + 1, train.tokens.count() + (val ? val->tokens.count() : 0));
    }
  };

  ReadDocuments(files, [&](Document& d) {
    batch_bytes += d.prompt.size() + d.text.size();
    batch.push_back(std::move(d));
    if (batch_bytes >= kBatchBytes || batch.size() >= kBatchDocuments) encode_batch();
  });
  encode_batch();
  close_document();
  if (doc_index < 0) Fail("no training data in " + JoinPaths(spec.paths));

  if (val && val->documents == 0 && train.documents >= 2) train.MoveLastDocument(*val);
  if (val && train.documents == 0) val->MoveLastDocument(train);

  train.tokens.Commit();
  train.mask.Commit();
  if (val) {
    val->tokens.Commit();
    val->mask.Commit();
  }
  FsyncDirectory(spec.dir);

  const auto header = [&](const SplitWriter& s, const char* split) {
    nlohmann::json h;
    h["version"] = kVersion;
    h["split"] = split;
    h["dtype"] = width == 2 ? "u16" : "u32";
    h["tokens"] = s.tokens.count();
    h["loss_tokens"] = s.loss_tokens;
    h["documents"] = s.documents;
    h["vocab_size"] = vocab;
    h["bos"] = bos;
    h["eos"] = eos;
    h["val_fraction"] = spec.val_fraction;
    h["sources"] = sources;
    h["tokenizer_bytes_hash"] = tokenizer_hash;
    return h.dump(1) + "\n";
  };
  if (val) WriteFileAtomic(val_prefix + ".json", header(*val, "val"));
  WriteFileAtomic(train_prefix + ".json", header(train, "train"));  // last: the cache is whole
}

}  // namespace

DataCaches OpenOrBuild(const CacheSpec& spec) {
  if (!(spec.val_fraction >= 0 && spec.val_fraction <= 0.5)) {
    Fail("--val-fraction must be in [0, 0.5], got " + std::to_string(spec.val_fraction));
  }
  if (spec.val_fraction > 0 && spec.val_name == spec.name) {
    Fail("token cache: the validation split needs its own name (both are \"" + spec.name + "\")");
  }
  const std::vector<SourceFile> files = ListSources(spec.paths);
  const nlohmann::json sources = SourcesJson(files);
  const std::string& tokenizer_bytes = spec.tokenizer_model;
  const std::string hash = Hex64(Fnv1a64(tokenizer_bytes.data(), tokenizer_bytes.size()));
  MakeDirectories(spec.dir);

  const bool with_val = spec.val_fraction > 0;
  bool reuse =
      HeaderMatches(JoinPath(spec.dir, spec.name) + ".json", sources, hash, spec.val_fraction);
  if (reuse && with_val) {
    reuse = HeaderMatches(JoinPath(spec.dir, spec.val_name) + ".json", sources, hash,
                          spec.val_fraction);
  }
  if (!reuse) Build(spec, files, sources, hash);

  DataCaches out{TokenCache(spec.dir, spec.name), std::nullopt, !reuse};
  if (with_val) out.val.emplace(spec.dir, spec.val_name);
  return out;
}

}  // namespace tinylora
