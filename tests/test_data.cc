// The training data layer: sources (text, folders, JSONL, prompt/completion), the token cache
// (exact tokens and masks, round trip, corruption, reuse, validation split) and the batch
// sampler (restore, coverage, windows across documents).
#include <gtest/gtest.h>
#include <omp.h>
#include <sys/stat.h>
#include <utime.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "data/sampler.h"
#include "data/sources.h"
#include "data/token_cache.h"
#include "model/tokenizer.h"
#include "test_util.h"
#include "util/error.h"

namespace tinylora {
namespace {

// One tokenizer for the whole suite (training it takes a moment).
const std::string& TokenizerPath() {
  static const test::TempDir dir;
  static const std::string path = test::TrainTinyTokenizer(dir.path(), 300);
  return path;
}

std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The error a call throws (exit 2 expected), or "" if none.
using test::ErrorOf;

struct Stream {
  std::vector<int32_t> tokens;
  std::vector<uint8_t> mask;
};

Stream ReadAll(const TokenCache& c) {
  Stream s;
  s.tokens.resize(static_cast<size_t>(c.size()));
  s.mask.resize(static_cast<size_t>(c.size()));
  c.Read(0, c.size(), s.tokens.data(), s.mask.data());
  for (int64_t i = 0; i < c.size(); ++i) {  // the accessors agree with Read
    EXPECT_EQ(c.token(i), s.tokens[static_cast<size_t>(i)]);
    EXPECT_EQ(c.mask(i), s.mask[static_cast<size_t>(i)]);
  }
  return s;
}

// What one document must become: BOS + Encode(prompt + text) + EOS and its mask.
void AppendExpected(const Tokenizer& tok, const std::string& prompt, const std::string& text,
                    Stream* s) {
  const std::vector<int> ids = tok.Encode(prompt + text, false);
  const std::vector<int> p = tok.Encode(prompt, false);
  size_t k = 0;
  while (k < p.size() && k < ids.size() && p[k] == ids[k]) ++k;
  s->tokens.push_back(tok.bos_id());
  s->mask.push_back(0);
  for (size_t j = 0; j < ids.size(); ++j) {
    s->tokens.push_back(ids[j]);
    s->mask.push_back(j >= k ? 1 : 0);
  }
  s->tokens.push_back(tok.eos_id());
  s->mask.push_back(1);
}

CacheSpec Spec(const test::TempDir& dir, std::vector<std::string> paths, double val = 0) {
  CacheSpec spec;
  spec.paths = std::move(paths);
  spec.tokenizer_model = ReadTextFile(TokenizerPath());
  spec.tokenizer_name = TokenizerPath();
  spec.dir = dir / "cache";
  spec.val_fraction = val;
  return spec;
}

// Writes a cache by hand (for the reader and the sampler, independent of any tokenizer).
void WriteCache(const std::string& dir, const std::string& name, const std::vector<uint32_t>& ids,
                const std::vector<uint8_t>& mask, int vocab, bool u32 = false) {
  std::string bytes;
  for (uint32_t id : ids) {
    for (int b = 0; b < (u32 ? 4 : 2); ++b) bytes += static_cast<char>(id >> (8 * b));
  }
  test::WriteFile(dir + "/" + name + ".tokens", bytes);
  test::WriteFile(dir + "/" + name + ".mask", std::string(mask.begin(), mask.end()));
  int64_t loss = 0;
  for (uint8_t m : mask) loss += m != 0;
  nlohmann::json h = {{"version", 1},
                      {"dtype", u32 ? "u32" : "u16"},
                      {"tokens", ids.size()},
                      {"loss_tokens", loss},
                      {"documents", 1},
                      {"vocab_size", vocab},
                      {"bos", 1},
                      {"eos", 2},
                      {"val_fraction", 0.0},
                      {"sources", nlohmann::json::array()},
                      {"tokenizer_bytes_hash", "0"}};
  test::WriteFile(dir + "/" + name + ".json", h.dump());
}

// ----------------------------------------------------------------------------------------------
// Sources

TEST(Sources, TextFolderAndJsonlGiveExactTokensAndMasks) {
  test::TempDir dir;
  const Tokenizer tok(TokenizerPath());
  ::mkdir((dir / "docs").c_str(), 0755);
  ::mkdir((dir / "docs/sub").c_str(), 0755);
  test::WriteFile(dir / "docs/b.txt", "the lazy dog\nover the fox\n");
  test::WriteFile(dir / "docs/a.txt", "the quick brown fox");
  test::WriteFile(dir / "docs/sub/c.txt", "café über naïve");
  test::WriteFile(dir / "docs/empty.txt", "");  // no document
  test::WriteFile(dir / "single.txt", "small fast tree");
  test::WriteFile(dir / "d.jsonl",
                  "{\"text\": \"router token\"}\n"
                  "\n"
                  "{\"prompt\": \"Q: the tree? A:\", \"completion\": \" leaf adapter\"}\r\n"
                  "   \n"
                  "{\"prompt\": \"\", \"completion\": \"fast\", \"id\": 7}\n"
                  "{\"prompt\": \"no loss here\", \"completion\": \"\"}\n"
                  "{\"text\": \"\"}\n");

  const auto spec = Spec(dir, {dir / "single.txt", dir / "docs", dir / "d.jsonl"});
  const DataCaches caches = OpenOrBuild(spec);
  EXPECT_TRUE(caches.rebuilt);
  EXPECT_FALSE(caches.val.has_value());
  Stream want;
  AppendExpected(tok, "", "small fast tree", &want);
  AppendExpected(tok, "", "the quick brown fox", &want);           // docs/a.txt
  AppendExpected(tok, "", "the lazy dog\nover the fox\n", &want);  // docs/b.txt
  AppendExpected(tok, "", "café über naïve", &want);               // docs/sub/c.txt
  AppendExpected(tok, "", "router token", &want);
  AppendExpected(tok, "Q: the tree? A:", " leaf adapter", &want);
  AppendExpected(tok, "", "fast", &want);
  AppendExpected(tok, "no loss here", "", &want);
  const Stream got = ReadAll(caches.train);
  EXPECT_EQ(got.tokens, want.tokens);
  EXPECT_EQ(got.mask, want.mask);
  EXPECT_EQ(caches.train.documents(), 8);
  EXPECT_EQ(caches.train.vocab_size(), 300);
  int64_t loss = 0;
  for (uint8_t m : want.mask) loss += m;
  EXPECT_EQ(caches.train.loss_tokens(), loss);

  // The prompt/completion document: prompt tokens carry no loss, the completion's do.
  const std::vector<int> prompt = tok.Encode("Q: the tree? A:", false);
  const std::vector<int> whole = tok.Encode("Q: the tree? A: leaf adapter", false);
  ASSERT_GT(whole.size(), prompt.size());
  int zeros = 0;
  for (size_t i = 0; i < want.mask.size(); ++i) zeros += want.mask[i] == 0;
  EXPECT_GE(zeros, 8 + static_cast<int>(prompt.size()) - 1);  // BOS of each + the prompts

  const nlohmann::json h = nlohmann::json::parse(Slurp(dir / "cache/train.json"));
  EXPECT_EQ(h["version"], 1);
  EXPECT_EQ(h["dtype"], "u16");
  EXPECT_EQ(h["tokens"], want.tokens.size());
  EXPECT_EQ(h["documents"], 8);
  EXPECT_EQ(h["bos"], 1);
  EXPECT_EQ(h["eos"], 2);
  ASSERT_EQ(h["sources"].size(), 6u);  // the empty file is a source too
  EXPECT_EQ(h["sources"][0]["size"], 15);
  const std::string tok_bytes = Slurp(TokenizerPath());
  char hex[17];
  std::snprintf(hex, sizeof(hex), "%016llx",
                static_cast<unsigned long long>(Fnv1a64(tok_bytes.data(), tok_bytes.size())));
  EXPECT_EQ(h["tokenizer_bytes_hash"], hex);
  EXPECT_EQ(Slurp(dir / "cache/train.tokens").size(), 2 * want.tokens.size());
}

TEST(Sources, PromptCompletionMasksOnlyTheCompletion) {
  test::TempDir dir;
  const Tokenizer tok(TokenizerPath());
  test::WriteFile(dir / "pc.jsonl",
                  "{\"prompt\": \"the quick brown\", \"completion\": \" fox jumps\"}\n");
  const DataCaches c = OpenOrBuild(Spec(dir, {dir / "pc.jsonl"}));
  const Stream got = ReadAll(c.train);
  const std::vector<int> p = tok.Encode("the quick brown", false);
  const std::vector<int> all = tok.Encode("the quick brown fox jumps", false);
  // This prompt ends at a word boundary, so its tokens are a prefix of the whole.
  ASSERT_TRUE(std::equal(p.begin(), p.end(), all.begin()));
  ASSERT_EQ(got.tokens.size(), all.size() + 2);
  for (size_t i = 0; i < got.tokens.size(); ++i) {
    const bool loss = i > p.size();  // BOS and the prompt's tokens carry none
    EXPECT_EQ(got.mask[i], loss ? 1 : 0) << i;
  }
  EXPECT_EQ(got.tokens.back(), tok.eos_id());
}

// Pieces of one document: each at most `limit` bytes, ending after a line break where the span
// has one, never inside a UTF-8 character; together they are `text`.
void ExpectPieces(const std::vector<Document>& pieces, const std::string& text, size_t limit) {
  std::string joined;
  for (size_t i = 0; i < pieces.size(); ++i) {
    EXPECT_EQ(pieces[i].continuation, i > 0) << i;
    EXPECT_LE(pieces[i].text.size(), limit) << i;
    EXPECT_FALSE(pieces[i].text.empty()) << i;
    EXPECT_NE(static_cast<unsigned char>(pieces[i].text[0]) & 0xC0, 0x80) << i;
    if (i + 1 < pieces.size() && pieces[i].text.find('\n') != std::string::npos) {
      EXPECT_EQ(pieces[i].text.back(), '\n') << i;
    }
    if (i > 0) {
      EXPECT_EQ(pieces[i].prompt, "") << i;
    }
    joined += pieces[i].text;
  }
  EXPECT_EQ(joined, text);
}

TEST(Sources, LongTextsComeInPieces) {
  test::TempDir dir;
  std::string text;
  for (int i = 0; i < 50; ++i) text += "line " + std::to_string(i) + " café\n";
  text += "no newline at the end: ";
  for (int i = 0; i < 60; ++i) text += "é";
  test::WriteFile(dir / "t.txt", text);
  test::WriteFile(dir / "u.txt", "second");
  const std::string completion = "über\n" + text;
  test::WriteFile(
      dir / "p.jsonl",
      nlohmann::json({{"prompt", "the prompt"}, {"completion", completion}}).dump() + "\n");
  std::vector<Document> docs;
  ReadDocuments(
      ListSources({dir / "t.txt", dir / "u.txt", dir / "p.jsonl"}),
      [&](Document& d) { docs.push_back(d); }, 64);
  size_t u = 0;
  while (u < docs.size() && docs[u].text != "second") ++u;
  ASSERT_LT(u, docs.size());
  ExpectPieces(std::vector<Document>(docs.begin(), docs.begin() + static_cast<long>(u)), text, 64);
  EXPECT_FALSE(docs[u].continuation);
  const std::vector<Document> p(docs.begin() + static_cast<long>(u) + 1, docs.end());
  ASSERT_GT(p.size(), 10u);
  EXPECT_EQ(p[0].prompt, "the prompt");
  ExpectPieces(p, completion, 64);

  // In the cache, the pieces make one document: BOS, each piece's tokens, EOS.
  std::string big;
  for (int i = 0; big.size() < 3 * kTextPieceBytes; ++i) {
    big += "the quick brown fox " + std::to_string(i) + (i % 7 == 0 ? "\n" : " ");
  }
  test::WriteFile(dir / "big.txt", big);
  std::vector<Document> pieces;
  ReadDocuments(ListSources({dir / "big.txt"}), [&](Document& d) { pieces.push_back(d); });
  ASSERT_GE(pieces.size(), 3u);
  ExpectPieces(pieces, big, kTextPieceBytes);
  const Tokenizer tok(TokenizerPath());
  std::vector<int32_t> want = {tok.bos_id()};
  for (const Document& d : pieces) {
    for (int id : tok.Encode(d.text, false)) want.push_back(id);
  }
  want.push_back(tok.eos_id());
  const DataCaches c = OpenOrBuild(Spec(dir, {dir / "big.txt"}));
  const Stream got = ReadAll(c.train);
  EXPECT_EQ(got.tokens, want);
  EXPECT_EQ(c.train.documents(), 1);
  EXPECT_EQ(std::count(got.mask.begin(), got.mask.end(), 0), 1);  // only the BOS
}

TEST(Sources, BadJsonlLinesNameFileAndLine) {
  test::TempDir dir;
  const auto error_for = [&](const std::string& content) {
    test::WriteFile(dir / "bad.jsonl", content);
    return ErrorOf([&] { ReadDocuments(ListSources({dir / "bad.jsonl"}), [](Document&) {}); });
  };
  const std::string ok = "{\"text\": \"fine\"}\n";
  const std::string where = dir / "bad.jsonl:3: ";
  struct Case {
    std::string line, message;
  };
  const Case cases[] = {
      {"{\"text\": \"unterminated}", "not valid JSON"},
      {"{\"text\": \"a\"} trailing", "not valid JSON"},
      {"[1, 2]", "expected a JSON object, got array"},
      {"\"text\"", "expected a JSON object, got string"},
      {"{\"body\": \"x\"}", "no \"text\" field and no \"prompt\" and \"completion\" fields"},
      {"{\"text\": 5}", "\"text\" must be a string, got number"},
      {"{\"text\": null}", "\"text\" must be a string, got null"},
      {"{\"prompt\": \"p\"}", "has \"prompt\" but no \"completion\""},
      {"{\"completion\": \"c\"}", "has \"completion\" but no \"prompt\""},
      {"{\"prompt\": \"p\", \"completion\": [\"c\"]}",
       "\"completion\" must be a string, got array"},
      {"{\"prompt\": 1, \"completion\": \"c\"}", "\"prompt\" must be a string, got number"},
      {"{\"text\": \"t\", \"prompt\": \"p\", \"completion\": \"c\"}", "has both \"text\""},
  };
  for (const Case& c : cases) {
    const std::string e = error_for(ok + "\n" + c.line + "\n" + ok);
    EXPECT_EQ(e.rfind(where, 0), 0u) << c.line << " -> " << e;
    EXPECT_NE(e.find(c.message), std::string::npos) << c.line << " -> " << e;
  }
  // Invalid UTF-8 passes through.
  EXPECT_EQ(error_for(ok + "{\"text\": \"bad \xff\xfe bytes \xc3\"}\n"), "");
  EXPECT_EQ(error_for(""), "");
}

TEST(Sources, MissingPathsEmptyFoldersAndNoData) {
  test::TempDir dir;
  EXPECT_EQ(ErrorOf([&] { ListSources({dir / "nope.txt"}); }),
            dir / "nope.txt: no such file or directory");
  ::mkdir((dir / "empty").c_str(), 0755);
  EXPECT_EQ(ErrorOf([&] { ListSources({dir / "empty"}); }), dir / "empty: folder holds no files");
  test::WriteFile(dir / "blank.txt", "");
  test::WriteFile(dir / "blank.jsonl", "\n\n{\"text\": \"\"}\n");
  const std::string e = ErrorOf([&] {
    OpenOrBuild(Spec(dir, {dir / "blank.txt", dir / "blank.jsonl"}));
  });
  EXPECT_EQ(e, "no training data in " + (dir / "blank.txt") + ", " + (dir / "blank.jsonl"));
  EXPECT_NE(ErrorOf([&] { OpenOrBuild(Spec(dir, {dir / "blank.txt"}, 0.6)); }).find("[0, 0.5]"),
            std::string::npos);
  CacheSpec spec = Spec(dir, {dir / "blank.txt"});
  spec.tokenizer_model = "not a model";
  spec.tokenizer_name = "bad.model";
  EXPECT_EQ(ErrorOf([&] { OpenOrBuild(spec); }).rfind("bad.model: not a SentencePiece model", 0),
            0u);
}

// ----------------------------------------------------------------------------------------------
// Token cache

TEST(TokenCache, ReadsHandWrittenU16AndU32) {
  test::TempDir dir;
  const std::vector<uint32_t> ids16 = {1, 65535, 300, 2};
  WriteCache(dir.path(), "a", ids16, {0, 1, 1, 1}, 65536);
  TokenCache a(dir.path(), "a");
  EXPECT_EQ(a.size(), 4);
  EXPECT_EQ(a.token(1), 65535);
  EXPECT_EQ(a.loss_tokens(), 3);
  const std::vector<uint32_t> ids32 = {1, 70000, 123456789, 2};
  WriteCache(dir.path(), "b", ids32, {0, 1, 1, 1}, 200000000, /*u32=*/true);
  TokenCache b(dir.path(), "b");
  EXPECT_EQ(b.token(1), 70000);
  EXPECT_EQ(b.token(2), 123456789);
  EXPECT_EQ(b.mask(0), 0);
  b.Validate(200000000);
  EXPECT_EQ(ErrorOf([&] { b.Validate(32000); }),
            dir /
                "b.tokens: token id 70000 at position 1 is outside the model's vocabulary of "
                "32000 (was the data tokenized for another model?)");
  WriteCache(dir.path(), "c", {1, 0x80000001u}, {0, 1}, 2147483647, /*u32=*/true);
  EXPECT_NE(ErrorOf([&] {
              TokenCache(dir.path(), "c").Validate(2147483647);
            }).find("token id 2147483649 at position 1"),
            std::string::npos);
}

TEST(TokenCache, TruncatedOrInconsistentFilesAreRefused) {
  test::TempDir dir;
  test::WriteFile(dir / "t.txt", "the quick brown fox jumps over the lazy dog");
  const DataCaches c = OpenOrBuild(Spec(dir, {dir / "t.txt"}));
  const int64_t n = c.train.size();
  const std::string cache = dir / "cache";
  const std::string tokens = Slurp(cache + "/train.tokens");
  test::WriteFile(cache + "/train.tokens", tokens.substr(0, tokens.size() - 2));
  std::string e = ErrorOf([&] { TokenCache(cache, "train"); });
  EXPECT_EQ(e.rfind(cache + "/train.tokens: holds " + std::to_string(2 * n - 2) + " bytes", 0), 0u)
      << e;
  EXPECT_NE(e.find("truncated"), std::string::npos);
  // OpenOrBuild trusts a matching header, so it reports the damage rather than hiding it.
  EXPECT_NE(ErrorOf([&] { OpenOrBuild(Spec(dir, {dir / "t.txt"})); }).find("truncated"),
            std::string::npos);
  test::WriteFile(cache + "/train.tokens", tokens);
  const std::string mask = Slurp(cache + "/train.mask");
  test::WriteFile(cache + "/train.mask", mask + "x");
  e = ErrorOf([&] { TokenCache(cache, "train"); });
  EXPECT_EQ(e.rfind(cache + "/train.mask: holds", 0), 0u) << e;
  test::WriteFile(cache + "/train.mask", mask);
  TokenCache ok(cache, "train");
  ok.Validate(300);

  ::unlink((cache + "/train.mask").c_str());
  EXPECT_EQ(
      ErrorOf([&] { TokenCache(cache, "train"); }).rfind(cache + "/train.mask: cannot open", 0),
      0u);
  test::WriteFile(cache + "/train.json", "{\"version\": 2}");
  EXPECT_EQ(ErrorOf([&] { TokenCache(cache, "train"); }),
            cache + "/train.json: unsupported version 2 (expected 1)");
  test::WriteFile(cache + "/train.json", "{\"version\": 1, \"dtype\": \"u16\"}");
  EXPECT_EQ(ErrorOf([&] { TokenCache(cache, "train"); }),
            cache + "/train.json: \"tokens\" is missing or not a non-negative integer");
  test::WriteFile(cache + "/train.json", "not json");
  EXPECT_EQ(ErrorOf([&] { TokenCache(cache, "train"); }), cache + "/train.json: not valid JSON");
  EXPECT_EQ(ErrorOf([&] { TokenCache(cache, "none"); }),
            cache + "/none.json: token cache header not found");
  // A damaged header is not trusted: OpenOrBuild rebuilds.
  EXPECT_TRUE(OpenOrBuild(Spec(dir, {dir / "t.txt"})).rebuilt);
  EXPECT_EQ(TokenCache(cache, "train").size(), n);
}

TEST(TokenCache, MaskBytesOtherThanZeroOrOneAreRefused) {
  test::TempDir dir;
  WriteCache(dir.path(), "m", {1, 5, 2}, {0, 7, 1}, 300);
  TokenCache c(dir.path(), "m");
  EXPECT_EQ(ErrorOf([&] { c.Validate(300); }), dir / "m.mask: byte 1 is 7, expected 0 or 1");
}

TEST(TokenCache, RebuildsOnlyWhenSomethingChanged) {
  test::TempDir dir;
  test::WriteFile(dir / "a.txt", "the quick brown fox");
  test::WriteFile(dir / "b.jsonl", "{\"text\": \"lazy dog\"}\n");
  const auto spec = Spec(dir, {dir / "a.txt", dir / "b.jsonl"});
  EXPECT_TRUE(OpenOrBuild(spec).rebuilt);
  const std::string first = Slurp(dir / "cache/train.tokens");
  EXPECT_FALSE(OpenOrBuild(spec).rebuilt);
  EXPECT_FALSE(OpenOrBuild(spec).rebuilt);

  test::WriteFile(dir / "a.txt", "the quick brown fox jumps");  // size and mtime change
  DataCaches c = OpenOrBuild(spec);
  EXPECT_TRUE(c.rebuilt);
  EXPECT_GT(c.train.size(), static_cast<int64_t>(first.size() / 2));
  EXPECT_FALSE(OpenOrBuild(spec).rebuilt);

  // Same size, new mtime.
  test::WriteFile(dir / "a.txt", "the quick brown cat jumps");
  struct utimbuf t = {1000000000, 1000000000};
  ::utime((dir / "a.txt").c_str(), &t);
  EXPECT_TRUE(OpenOrBuild(spec).rebuilt);
  EXPECT_FALSE(OpenOrBuild(spec).rebuilt);

  // A new file in the list, another val_fraction, another tokenizer.
  test::WriteFile(dir / "c.txt", "small tree");
  auto more = Spec(dir, {dir / "a.txt", dir / "b.jsonl", dir / "c.txt"});
  EXPECT_TRUE(OpenOrBuild(more).rebuilt);
  EXPECT_FALSE(OpenOrBuild(more).rebuilt);
  more.val_fraction = 0.25;
  EXPECT_TRUE(OpenOrBuild(more).rebuilt);
  EXPECT_FALSE(OpenOrBuild(more).rebuilt);
  test::TempDir other;
  more.tokenizer_name = test::TrainTinyTokenizer(other.path(), 320);
  more.tokenizer_model = ReadTextFile(more.tokenizer_name);
  c = OpenOrBuild(more);
  EXPECT_TRUE(c.rebuilt);
  EXPECT_EQ(c.train.vocab_size(), 320);
  EXPECT_FALSE(OpenOrBuild(more).rebuilt);
  ::unlink((dir / "cache/val.json").c_str());  // the validation header is part of the cache
  EXPECT_TRUE(OpenOrBuild(more).rebuilt);

  // No temporary files are left behind.
  for (const char* name : {"train", "val"}) {
    for (const char* ext : {".tokens", ".mask", ".json"}) {
      EXPECT_TRUE(FileExists(dir / "cache/" + std::string(name) + ext)) << name << ext;
    }
  }
  int files = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir / "cache")) {
    EXPECT_EQ(e.path().string().find(".tmp."), std::string::npos) << e.path();
    ++files;
  }
  EXPECT_EQ(files, 6);
}

// The documents of a cache, split at each BOS.
std::vector<Stream> SplitDocuments(const TokenCache& c, int bos) {
  std::vector<Stream> docs;
  const Stream s = ReadAll(c);
  for (size_t i = 0; i < s.tokens.size(); ++i) {
    if (s.tokens[i] == bos) docs.emplace_back();
    docs.back().tokens.push_back(s.tokens[i]);
    docs.back().mask.push_back(s.mask[i]);
  }
  return docs;
}

TEST(TokenCache, ValidationSplitIsDeterministicAndDisjoint) {
  test::TempDir dir;
  const Tokenizer tok(TokenizerPath());
  const char* words[] = {"the", "quick", "brown", "fox", "lazy", "dog", "tree", "leaf"};
  std::string jsonl;
  std::vector<Stream> want;
  for (int i = 0; i < 60; ++i) {
    const std::string text = std::string(words[i % 8]) + " " + words[(i * 3) % 8] + " " +
                             std::to_string(i);  // every document differs
    jsonl += "{\"text\": \"" + text + "\"}\n";
    want.emplace_back();
    AppendExpected(tok, "", text, &want.back());
  }
  test::WriteFile(dir / "d.jsonl", jsonl);
  const double fraction = 0.3;
  CacheSpec spec = Spec(dir, {dir / "d.jsonl"}, fraction);
  omp_set_num_threads(1);
  const DataCaches a = OpenOrBuild(spec);
  omp_set_num_threads(2);
  spec.dir = dir / "cache2";
  const DataCaches b = OpenOrBuild(spec);
  ASSERT_TRUE(a.val.has_value());
  for (const char* f : {"/train.tokens", "/train.mask", "/val.tokens", "/val.mask"}) {
    EXPECT_EQ(Slurp(dir / "cache" + f), Slurp(dir / "cache2" + f)) << f;
  }

  std::vector<Stream> want_train, want_val;
  for (int i = 0; i < 60; ++i) {
    (IsValidationDocument(i, fraction) ? want_val : want_train).push_back(want[i]);
  }
  ASSERT_GT(want_val.size(), 5u);
  ASSERT_GT(want_train.size(), 30u);
  const std::vector<Stream> got_train = SplitDocuments(a.train, tok.bos_id());
  const std::vector<Stream> got_val = SplitDocuments(*a.val, tok.bos_id());
  ASSERT_EQ(got_train.size(), want_train.size());
  ASSERT_EQ(got_val.size(), want_val.size());
  for (size_t i = 0; i < got_train.size(); ++i) {
    EXPECT_EQ(got_train[i].tokens, want_train[i].tokens);
    EXPECT_EQ(got_train[i].mask, want_train[i].mask);
  }
  for (size_t i = 0; i < got_val.size(); ++i) EXPECT_EQ(got_val[i].tokens, want_val[i].tokens);
  EXPECT_EQ(a.train.documents(), static_cast<int64_t>(want_train.size()));
  EXPECT_EQ(a.val->documents(), static_cast<int64_t>(want_val.size()));
  const nlohmann::json h = nlohmann::json::parse(Slurp(dir / "cache/val.json"));
  EXPECT_EQ(h["split"], "val");
  EXPECT_EQ(h["val_fraction"].get<double>(), fraction);

  // The split depends only on the document index and the fraction.
  int in_val = 0;
  for (int i = 0; i < 100000; ++i) in_val += IsValidationDocument(i, 0.1);
  EXPECT_NEAR(in_val / 100000.0, 0.1, 0.005);
  for (int i = 0; i < 1000; ++i) {
    EXPECT_FALSE(IsValidationDocument(i, 0.0));
    if (IsValidationDocument(i, 0.05)) {
      EXPECT_TRUE(IsValidationDocument(i, 0.2));
    }
  }
}

TEST(TokenCache, SmallDataStillGetsBothSplits) {
  test::TempDir dir;
  const Tokenizer tok(TokenizerPath());
  // With a tiny fraction, no document hashes to validation: the last one moves there.
  test::WriteFile(dir / "d.jsonl", "{\"text\": \"the fox\"}\n{\"text\": \"lazy dog\"}\n");
  ASSERT_FALSE(IsValidationDocument(0, 1e-12));
  ASSERT_FALSE(IsValidationDocument(1, 1e-12));
  DataCaches c = OpenOrBuild(Spec(dir, {dir / "d.jsonl"}, 1e-12));
  Stream want_train, want_val;
  AppendExpected(tok, "", "the fox", &want_train);
  AppendExpected(tok, "", "lazy dog", &want_val);
  EXPECT_EQ(ReadAll(c.train).tokens, want_train.tokens);
  EXPECT_EQ(ReadAll(*c.val).tokens, want_val.tokens);
  EXPECT_EQ(ReadAll(*c.val).mask, want_val.mask);
  EXPECT_EQ(c.train.documents(), 1);
  EXPECT_EQ(c.val->documents(), 1);
  int64_t loss = 0;
  for (uint8_t m : want_val.mask) loss += m;
  EXPECT_EQ(c.val->loss_tokens(), loss);

  // A single document always trains, even when it hashes to validation.
  int v = 0;
  while (!IsValidationDocument(0, 0.5 - 0.01 * v)) ++v;  // doc 0 must be in val at this fraction
  test::WriteFile(dir / "one.txt", "small fast tree");
  c = OpenOrBuild(Spec(dir, {dir / "one.txt"}, 0.5 - 0.01 * v));
  EXPECT_EQ(c.train.documents(), 1);
  EXPECT_EQ(c.val->size(), 0);
  EXPECT_EQ(c.val->documents(), 0);
}

// ----------------------------------------------------------------------------------------------
// Batch sampler

// A cache whose token i is i % 250 + 3 (mask i % 2), so positions can be read back.
std::vector<uint32_t> Ramp(int n) {
  std::vector<uint32_t> ids;
  for (int i = 0; i < n; ++i) ids.push_back(static_cast<uint32_t>(i % 250 + 3));
  return ids;
}
std::vector<uint8_t> Alternating(int n) {
  std::vector<uint8_t> m;
  for (int i = 0; i < n; ++i) m.push_back(static_cast<uint8_t>(i % 2));
  return m;
}

TEST(BatchSampler, EveryWindowOncePerEpochWithItsTargetsAndMask) {
  test::TempDir dir;
  const int n = 203, T = 8, B = 3;  // 25 windows, the last 2 tokens unused
  WriteCache(dir.path(), "r", Ramp(n), Alternating(n), 300);
  TokenCache data(dir.path(), "r");
  BatchSampler s(data, T, 42);
  ASSERT_EQ(s.windows_per_epoch(), 25);
  std::vector<int32_t> in(B * T), tgt(B * T);
  std::vector<uint8_t> mask(B * T);
  std::vector<std::set<int64_t>> seen(3);
  std::vector<std::vector<int64_t>> order(3);
  int sampled = 0;
  for (int step = 0; step < 25; ++step) {  // 75 windows = 3 epochs
    s.Next(B, in.data(), tgt.data(), mask.data());
    for (int b = 0; b < B; ++b) {
      const int32_t first = in[static_cast<size_t>(b * T)];
      const int64_t w = (first - 3) / T;  // the ramp tells which window this is
      for (int t = 0; t < T; ++t) {
        const int pos = static_cast<int>(w * T + t);
        EXPECT_EQ(in[static_cast<size_t>(b * T + t)], pos % 250 + 3);
        EXPECT_EQ(tgt[static_cast<size_t>(b * T + t)], (pos + 1) % 250 + 3);
        EXPECT_EQ(mask[static_cast<size_t>(b * T + t)], (pos + 1) % 2);
      }
      const size_t e = static_cast<size_t>(sampled++ / 25);  // 25 windows per epoch
      EXPECT_TRUE(seen[e].insert(w).second) << "window " << w << " twice in epoch " << e;
      order[e].push_back(w);
    }
  }
  for (int e = 0; e < 3; ++e) {
    EXPECT_EQ(seen[static_cast<size_t>(e)].size(), 25u) << e;
    EXPECT_EQ(order[static_cast<size_t>(e)], BatchSampler::Permutation(25, 42, e));
  }
  EXPECT_NE(order[0], order[1]);  // a new order each epoch
  EXPECT_EQ(s.state().epoch, 2);
  EXPECT_EQ(s.state().position, 25);
}

TEST(BatchSampler, PermutationIsFixed) {
  // Pinned so that a change of the shuffle (which would break resumed runs) is noticed.
  const std::vector<int64_t> p = BatchSampler::Permutation(10, 7, 0);
  std::vector<int64_t> sorted = p;
  std::sort(sorted.begin(), sorted.end());
  for (int i = 0; i < 10; ++i) EXPECT_EQ(sorted[static_cast<size_t>(i)], i);
  EXPECT_EQ(p, (std::vector<int64_t>{0, 7, 4, 9, 3, 1, 2, 8, 6, 5}));
  EXPECT_EQ(BatchSampler::Permutation(10, 7, 3),
            (std::vector<int64_t>{8, 7, 3, 1, 9, 5, 2, 0, 6, 4}));
  EXPECT_NE(p, BatchSampler::Permutation(10, 8, 0));
  EXPECT_EQ(BatchSampler::Permutation(10, 7, 1), BatchSampler::Permutation(10, 8, 0));
  EXPECT_EQ(BatchSampler::Permutation(1, 7, 0), std::vector<int64_t>{0});
  EXPECT_TRUE(BatchSampler::Permutation(0, 7, 0).empty());
}

TEST(BatchSampler, RestoredStateGivesTheSameBatches) {
  test::TempDir dir;
  const int n = 500, T = 16, B = 5;
  WriteCache(dir.path(), "r", Ramp(n), Alternating(n), 300);
  TokenCache data(dir.path(), "r");
  BatchSampler a(data, T, 9);
  std::vector<int32_t> in(B * T), tgt(B * T), in2(B * T), tgt2(B * T);
  std::vector<uint8_t> m(B * T), m2(B * T);
  for (int step = 0; step < 7; ++step) a.Next(B, in.data(), tgt.data(), m.data());
  const BatchSampler::State saved = a.state();
  EXPECT_EQ(saved.epoch, 1);  // 35 windows of 31 per epoch: into the second epoch
  BatchSampler b(data, T, 9);
  b.Restore(saved);
  for (int step = 0; step < 20; ++step) {  // across two more epoch ends
    a.Next(B, in.data(), tgt.data(), m.data());
    b.Next(B, in2.data(), tgt2.data(), m2.data());
    ASSERT_EQ(in, in2) << step;
    ASSERT_EQ(tgt, tgt2) << step;
    ASSERT_EQ(m, m2) << step;
    EXPECT_EQ(a.state().epoch, b.state().epoch);
    EXPECT_EQ(a.state().position, b.state().position);
  }
  // Restoring backwards works as well.
  b.Restore({0, 3});
  BatchSampler c(data, T, 9);
  c.Next(3, in.data(), tgt.data(), m.data());
  c.Next(B, in.data(), tgt.data(), m.data());
  b.Next(B, in2.data(), tgt2.data(), m2.data());
  EXPECT_EQ(in, in2);
  EXPECT_EQ(ErrorOf([&] { b.Restore({0, 32}); }).find("data position (epoch 0, window 32)"), 0u);
  EXPECT_NE(ErrorOf([&] { b.Restore({-1, 0}); }), "");
}

TEST(BatchSampler, RankShardsConcatenateToTheOneProcessBatch) {
  test::TempDir dir;
  const int n = 500, T = 16, B = 6, W = 3;  // 31 windows per epoch: batches straddle epochs
  WriteCache(dir.path(), "r", Ramp(n), Alternating(n), 300);
  TokenCache data(dir.path(), "r");
  BatchSampler whole(data, T, 9);
  std::vector<BatchSampler> ranks;
  for (int k = 0; k < W; ++k) ranks.emplace_back(data, T, 9, Shard{k, W});
  std::vector<int32_t> in(B * T), tgt(B * T), in_k(B / W * T), tgt_k(B / W * T);
  std::vector<uint8_t> m(B * T), m_k(B / W * T);
  for (int step = 0; step < 12; ++step) {
    whole.Next(B, in.data(), tgt.data(), m.data());
    std::vector<int32_t> cat_in, cat_tgt;
    std::vector<uint8_t> cat_m;
    for (BatchSampler& r : ranks) {
      r.Next(B, in_k.data(), tgt_k.data(), m_k.data());
      cat_in.insert(cat_in.end(), in_k.begin(), in_k.end());
      cat_tgt.insert(cat_tgt.end(), tgt_k.begin(), tgt_k.end());
      cat_m.insert(cat_m.end(), m_k.begin(), m_k.end());
      EXPECT_EQ(r.state().epoch, whole.state().epoch);
      EXPECT_EQ(r.state().position, whole.state().position);
    }
    ASSERT_EQ(cat_in, in) << step;
    ASSERT_EQ(cat_tgt, tgt) << step;
    ASSERT_EQ(cat_m, m) << step;
  }
  EXPECT_EQ(whole.state().epoch, 2);  // 72 windows: two epoch ends crossed
  EXPECT_EQ(ErrorOf([&] { ranks[0].Next(4, in.data(), tgt.data(), m.data()); }),
            "--batch-size 4 does not divide over 3 processes");
  EXPECT_EQ(ErrorOf([&] {
              BatchSampler(data, T, 9, Shard{3, 3});
            }),
            "rank 3 is outside a world of 3 processes");
}

TEST(BatchSampler, TooLittleDataIsRefused) {
  test::TempDir dir;
  WriteCache(dir.path(), "r", Ramp(16), Alternating(16), 300);
  TokenCache data(dir.path(), "r");
  EXPECT_EQ(ErrorOf([&] { BatchSampler(data, 16, 0); }),
            dir / "r: data has 16 tokens, fewer than --seq-len + 1 (17)");
  BatchSampler ok(data, 15, 0);
  EXPECT_EQ(ok.windows_per_epoch(), 1);
}

TEST(BatchSampler, WindowsCrossDocumentBoundaries) {
  test::TempDir dir;
  const Tokenizer tok(TokenizerPath());
  test::WriteFile(dir / "d.jsonl",
                  "{\"text\": \"the quick brown fox\"}\n"
                  "{\"prompt\": \"lazy dog\", \"completion\": \" jumps over\"}\n"
                  "{\"text\": \"small fast tree leaf router\"}\n");
  const DataCaches c = OpenOrBuild(Spec(dir, {dir / "d.jsonl"}));
  const Stream s = ReadAll(c.train);
  const int T = 4;
  BatchSampler sampler(c.train, T, 3);
  const int64_t W = sampler.windows_per_epoch();
  EXPECT_EQ(W, (c.train.size() - 1) / T);
  std::vector<int32_t> in(static_cast<size_t>(W * T)), tgt(in.size());
  std::vector<uint8_t> m(in.size());
  sampler.Next(static_cast<int>(W), in.data(), tgt.data(), m.data());
  // Every (input, target, mask) triple is the stream's (token i, token i+1, mask i+1).
  int boundaries = 0;
  for (size_t k = 0; k < in.size(); ++k) {
    bool found = false;
    for (size_t i = 0; i + 1 < s.tokens.size() && !found; i += T) {  // window starts
      found = in[k] == s.tokens[i + k % T] && tgt[k] == s.tokens[i + k % T + 1] &&
              m[k] == s.mask[i + k % T + 1];
    }
    EXPECT_TRUE(found) << k;
    if (in[k] == tok.eos_id()) {
      EXPECT_EQ(tgt[k], tok.bos_id());  // EOS, then the next document's BOS ...
      EXPECT_EQ(m[k], 0);               // ... which is never a target
      ++boundaries;
    }
    if (tgt[k] == tok.eos_id()) {
      EXPECT_EQ(m[k], 1);  // ending a document is learned
    }
  }
  EXPECT_EQ(boundaries, 2);

  // Evaluation windows: each target of the stream exactly once, in order.
  const std::vector<EvalWindow> ws = EvalWindows(c.train, T);
  std::vector<int32_t> targets;
  std::vector<uint8_t> masks;
  for (const EvalWindow& w : ws) {
    EXPECT_GE(w.length, 2);
    EXPECT_LE(w.length, T + 1);
    std::vector<int32_t> wi(static_cast<size_t>(w.length - 1)), wt(wi.size());
    std::vector<uint8_t> wm(wi.size());
    ReadWindow(c.train, w, wi.data(), wt.data(), wm.data());
    EXPECT_EQ(wi[0], s.tokens[static_cast<size_t>(w.begin)]);
    targets.insert(targets.end(), wt.begin(), wt.end());
    masks.insert(masks.end(), wm.begin(), wm.end());
  }
  EXPECT_EQ(targets, std::vector<int32_t>(s.tokens.begin() + 1, s.tokens.end()));
  EXPECT_EQ(masks, std::vector<uint8_t>(s.mask.begin() + 1, s.mask.end()));
}

TEST(BatchSampler, EvalWindowsKeepAPartialWindowOfTwoTokens) {
  test::TempDir dir;
  WriteCache(dir.path(), "r", Ramp(10), Alternating(10), 300);
  TokenCache data(dir.path(), "r");
  std::vector<EvalWindow> w = EvalWindows(data, 3);  // [0,4) [3,7) [6,10) [9,10): 1 token
  ASSERT_EQ(w.size(), 3u);
  EXPECT_EQ(w[2].begin, 6);
  EXPECT_EQ(w[2].length, 4);
  w = EvalWindows(data, 4);  // [0,5) [4,9) [8,10): 2 tokens
  ASSERT_EQ(w.size(), 3u);
  EXPECT_EQ(w[2].begin, 8);
  EXPECT_EQ(w[2].length, 2);
  w = EvalWindows(data, 100);
  ASSERT_EQ(w.size(), 1u);
  EXPECT_EQ(w[0].length, 10);
}

}  // namespace
}  // namespace tinylora
