// GGUF files: built by hand here (llama.cpp's layout written out independently of
// src/formats/gguf.cc and src/model/gguf_llama.cc), written by `tinylora quantize --gguf`, read
// back; the tokenizer rebuilt from them; and every kind of bad file refused with one line.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>

#include "adapters/lora.h"
#include "formats/gguf.h"
#include "model/llama.h"
#include "model/tokenizer.h"
#include "model/weights.h"
#include "ops/format.h"
#include "test_util.h"
#include "util/error.h"
#include "util/file.h"

namespace tinylora {
namespace {

using test::RunCli;

// ---- a GGUF file written byte by byte ---------------------------------------------------------

struct Bytes {
  std::string b;
  template <class T>
  void Put(T x) {
    b.append(reinterpret_cast<const char*>(&x), sizeof(T));
  }
  void Str(const std::string& s) {
    Put<uint64_t>(s.size());
    b += s;
  }
};

struct HandTensor {
  std::string name;
  uint32_t type;
  std::vector<int64_t> ne;
  std::string data;
};

struct HandGguf {
  uint32_t version = 3;
  uint64_t n_kv = 0;
  Bytes kv;
  std::vector<HandTensor> tensors;
  void KeyString(const std::string& k, const std::string& v) {
    kv.Str(k);
    kv.Put<uint32_t>(8);
    kv.Str(v);
    ++n_kv;
  }
  void KeyU32(const std::string& k, uint32_t v) {
    kv.Str(k);
    kv.Put<uint32_t>(4);
    kv.Put<uint32_t>(v);
    ++n_kv;
  }
  void KeyF32(const std::string& k, float v) {
    kv.Str(k);
    kv.Put<uint32_t>(6);
    kv.Put<float>(v);
    ++n_kv;
  }
  // The file; `offsets` (when given) replace the tensors' packed, 32-aligned offsets.
  std::string Build(const std::vector<uint64_t>& offsets = {}) const {
    Bytes f;
    f.b = "GGUF";
    f.Put<uint32_t>(version);
    f.Put<uint64_t>(tensors.size());
    f.Put<uint64_t>(n_kv);
    f.b += kv.b;
    uint64_t off = 0;
    std::vector<uint64_t> at;
    for (size_t i = 0; i < tensors.size(); ++i) {
      const HandTensor& t = tensors[i];
      f.Str(t.name);
      f.Put<uint32_t>(static_cast<uint32_t>(t.ne.size()));
      for (int64_t d : t.ne) f.Put<int64_t>(d);
      f.Put<uint32_t>(t.type);
      at.push_back(i < offsets.size() ? offsets[i] : off);
      f.Put<uint64_t>(at.back());
      off = (off + t.data.size() + 31) / 32 * 32;
    }
    f.b.resize((f.b.size() + 31) / 32 * 32, '\0');
    const size_t start = f.b.size();
    for (size_t i = 0; i < tensors.size(); ++i) {
      if (f.b.size() < start + at[i] + tensors[i].data.size())
        f.b.resize(start + at[i] + tensors[i].data.size(), '\0');
      std::memcpy(&f.b[start + at[i]], tensors[i].data.data(), tensors[i].data.size());
    }
    return f.b;
  }
};

// GGML's type id and our format of each type a test file is built in.
struct TypeCase {
  const char* name;
  uint32_t ggml;
  Format format;
};
constexpr TypeCase kTypes[] = {{"f32", 0, Format::kF32},
                               {"f16", 1, Format::kF16},
                               {"bf16", 30, Format::kBF16},
                               {"q8_0", 8, Format::kQ8_0},
                               {"q4_0", 2, Format::kQ4_0}};

// The F32 values of a loaded tensor.
std::vector<float> Values(const Tensor& t) {
  std::vector<float> v(static_cast<size_t>(t.numel()));
  Traits(t.format).dequantize_reference(t.data, t.numel(), v.data());
  return v;
}

// `rows` rows of F32 `v` encoded in format f.
std::string Encode(const std::vector<float>& v, int64_t cols, Format f) {
  std::string out(static_cast<size_t>(FormatBytes(f, static_cast<int64_t>(v.size()))), '\0');
  for (size_t r = 0; r < v.size() / static_cast<size_t>(cols); ++r) {
    Traits(f).quantize(v.data() + r * static_cast<size_t>(cols), cols,
                       &out[static_cast<size_t>(FormatBytes(f, static_cast<int64_t>(r) * cols))]);
  }
  return out;
}

// llama.cpp's converter on q and k: w.reshape(n_head, 2, rows / n_head / 2, cols)
// .swapaxes(1, 2).reshape(rows, cols) — row (h, s, j) of the input becomes row (h, j, s).
std::vector<float> PermuteLikeLlamaCpp(const std::vector<float>& w, int64_t rows, int64_t cols,
                                       int n_head) {
  const int64_t per = rows / n_head / 2;
  std::vector<float> out(w.size());
  for (int64_t h = 0; h < n_head; ++h)
    for (int64_t s = 0; s < 2; ++s)
      for (int64_t j = 0; j < per; ++j) {
        const int64_t from = (h * 2 + s) * per + j, to = (h * per + j) * 2 + s;
        std::memcpy(&out[static_cast<size_t>(to * cols)], &w[static_cast<size_t>(from * cols)],
                    static_cast<size_t>(cols) * 4);
      }
  return out;
}

// A hand-built GGUF of a model directory's weights: projections (and, for float types, the
// embedding and head) in `type`, norms in F32, q and k permuted, llama.cpp's names and keys.
HandGguf HandBuild(const ModelWeights& w, const TypeCase& type) {
  const LlamaConfig& c = w.config;
  HandGguf g;
  g.KeyString("general.architecture", "llama");
  g.KeyU32("llama.block_count", static_cast<uint32_t>(c.n_layers));
  g.KeyU32("llama.context_length", static_cast<uint32_t>(c.max_pos));
  g.KeyU32("llama.embedding_length", static_cast<uint32_t>(c.hidden));
  g.KeyU32("llama.feed_forward_length", static_cast<uint32_t>(c.intermediate));
  g.KeyU32("llama.attention.head_count", static_cast<uint32_t>(c.n_heads));
  g.KeyU32("llama.attention.head_count_kv", static_cast<uint32_t>(c.n_kv_heads));
  g.KeyF32("llama.attention.layer_norm_rms_epsilon", static_cast<float>(c.rms_eps));
  g.KeyF32("llama.rope.freq_base", static_cast<float>(c.rope_theta));
  const bool quantized = Traits(type.format).quantized();
  // a matrix in `f`, a norm (1-D) in F32; q and k permuted over their heads
  auto add = [&](const std::string& name, const Tensor& t, Format f, bool norm = false,
                 int permute_heads = 0) {
    HandTensor h;
    h.name = name;
    if (norm) f = Format::kF32;
    for (const TypeCase& c : kTypes)
      if (c.format == f) h.type = c.ggml;
    h.ne = norm ? std::vector<int64_t>{t.cols} : std::vector<int64_t>{t.cols, t.rows};
    std::vector<float> v = Values(t);
    if (permute_heads > 0) v = PermuteLikeLlamaCpp(v, t.rows, t.cols, permute_heads);
    h.data = Encode(v, t.cols, f);
    g.tensors.push_back(h);
  };
  const Format head = quantized ? Format::kF32 : type.format, f = type.format;
  add("token_embd.weight", w.embed, head);
  add("output_norm.weight", w.final_norm, f, true);
  if (!c.tie_embeddings) add("output.weight", w.lm_head, head);
  for (int l = 0; l < c.n_layers; ++l) {
    const LayerWeights& L = w.layers[static_cast<size_t>(l)];
    const std::string b = "blk." + std::to_string(l) + ".";
    add(b + "attn_norm.weight", L.attn_norm, f, true);
    add(b + "ffn_norm.weight", L.mlp_norm, f, true);
    add(b + "attn_q.weight", L.wq, f, false, c.n_heads);
    add(b + "attn_k.weight", L.wk, f, false, c.n_kv_heads);
    add(b + "attn_v.weight", L.wv, f);
    add(b + "attn_output.weight", L.wo, f);
    add(b + "ffn_gate.weight", L.w_gate, f);
    add(b + "ffn_up.weight", L.w_up, f);
    add(b + "ffn_down.weight", L.w_down, f);
  }
  return g;
}

std::vector<float> Logits(const ModelWeights& w, const std::vector<int>& ids) {
  LlamaModel model(w);
  return test::Logits(model, ids);
}

// Every matrix of `a` holds the same values as the same matrix of `b`.
void ExpectSameMatrices(const ModelWeights& a, const ModelWeights& b) {
  auto same = [](const Tensor& x, const Tensor& y, const std::string& what) {
    EXPECT_EQ(x.format, y.format) << what;
    EXPECT_EQ(Values(x), Values(y)) << what;
  };
  same(a.embed, b.embed, "embed");
  same(a.lm_head, b.lm_head, "lm_head");
  same(a.final_norm, b.final_norm, "final_norm");
  for (size_t l = 0; l < a.layers.size(); ++l) {
    same(a.layers[l].attn_norm, b.layers[l].attn_norm, "attn_norm");
    same(a.layers[l].mlp_norm, b.layers[l].mlp_norm, "mlp_norm");
    for (int m = 0; m < kNumModules; ++m) {
      const Module mod = static_cast<Module>(m);
      same(a.layers[l].weight(mod), b.layers[l].weight(mod),
           "layer " + std::to_string(l) + " " + ModuleName(mod));
    }
  }
}

void ExpectSameConfig(const LlamaConfig& a, const LlamaConfig& b) {
  EXPECT_EQ(a.hidden, b.hidden);
  EXPECT_EQ(a.intermediate, b.intermediate);
  EXPECT_EQ(a.n_layers, b.n_layers);
  EXPECT_EQ(a.n_heads, b.n_heads);
  EXPECT_EQ(a.n_kv_heads, b.n_kv_heads);
  EXPECT_EQ(a.head_dim, b.head_dim);
  EXPECT_EQ(a.vocab, b.vocab);
  EXPECT_EQ(a.max_pos, b.max_pos);
  EXPECT_EQ(a.rms_eps, b.rms_eps);  // 1e-5 stored as F32 reads back as 1e-5
  EXPECT_EQ(a.rope_theta, b.rope_theta);
  EXPECT_EQ(a.tie_embeddings, b.tie_embeddings);
}

const std::vector<int> kIds = {1, 5, 9, 33, 47, 2, 44, 30, 12, 3};

// Hand-built files of every type, and the files tinylora writes, load as the directory they came
// from: F32 exactly (PyTorch's logits within 1e-4 too), the others as the directory's values in
// that type (block formats: the same bytes --quantize makes, so the same logits bit for bit).
TEST(Gguf, HandBuiltAndWrittenFilesLoadAsTheirDirectory) {
  test::TempDir tmp;
  for (const char* fixture : {"gqa", "tied"}) {
    const std::string dir = test::FixturePath(std::string("forward/") + fixture);
    auto src = ModelWeights::Load(dir);
    const std::vector<float> f32_logits = Logits(*src, kIds);
    for (const TypeCase& type : kTypes) {
      SCOPED_TRACE(std::string(fixture) + " " + type.name);
      // the directory as it should come out: quantised on load, or its values in the type
      QuantizeOnLoad q;
      q.enabled = Traits(type.format).quantized();
      q.format = type.format;
      auto expected = ModelWeights::Load(dir, q);
      const std::string hand = tmp / (std::string(fixture) + "-hand-" + type.name + ".gguf");
      test::WriteFile(hand, HandBuild(*src, type).Build());
      const std::string written = tmp / (std::string(fixture) + "-" + type.name + ".gguf");
      test::CliResult r =
          RunCli({"quantize", "--model", dir, "--format", type.name, "--gguf", "--out", written});
      ASSERT_EQ(r.exit_code, 0) << r.err;
      for (const std::string& file : {hand, written}) {
        SCOPED_TRACE(file);
        auto g = ModelWeights::Load(file);
        ExpectSameConfig(g->config, src->config);
        if (type.format == Format::kF32) {
          ExpectSameMatrices(*g, *src);
          EXPECT_EQ(Logits(*g, kIds), f32_logits);
        } else if (q.enabled) {
          ExpectSameMatrices(*g, *expected);
          EXPECT_EQ(Logits(*g, kIds), Logits(*expected, kIds));
        } else {  // f16, bf16: every matrix is the directory's rounded to the type
          EXPECT_EQ(g->layers[0].wq.format, type.format);
          const std::vector<float> v = Values(src->layers[1].wk);
          EXPECT_EQ(Encode(v, src->layers[1].wk.cols, type.format),
                    std::string(static_cast<const char*>(g->layers[1].wk.data),
                                static_cast<size_t>(g->layers[1].wk.nbytes())));
        }
      }
      // tinylora writes the tensors as llama.cpp's converter lays them out
      GgufFile h(hand), w(written);
      for (const GgufTensor& t : h.header().tensors) {
        const GgufTensor* u = w.header().FindTensor(t.name);
        ASSERT_NE(u, nullptr) << t.name;
        EXPECT_EQ(u->ne, t.ne) << t.name;
        EXPECT_EQ(u->type, t.type) << t.name;
        EXPECT_EQ(0, std::memcmp(h.Data(t), w.Data(*u), t.nbytes)) << t.name;
      }
      EXPECT_EQ(w.header().tensors.size(), h.header().tensors.size());
    }
  }
  // F32 from a GGUF file gives PyTorch's logits.
  auto g = ModelWeights::Load(tmp / "gqa-f32.gguf");
  const auto expected =
      nlohmann::json::parse(ReadTextFile(test::FixturePath("forward/gqa") + "/expected.json"));
  const auto& seq = expected["sequences"].back();  // the longest
  std::vector<float> logits = Logits(*g, seq["input_ids"].get<std::vector<int>>());
  size_t k = 0;
  float worst = 0;
  for (const auto& row : seq["logits"])
    for (const auto& v : row) worst = std::max(worst, std::fabs(logits[k++] - v.get<float>()));
  EXPECT_EQ(k, logits.size());
  EXPECT_LE(worst, 1e-4f);
}

// The tokenizer a GGUF file carries encodes and decodes as the tokenizer.model it came from,
// normalisation (NFKC) and byte fallback included.
TEST(Gguf, RebuiltTokenizerEncodesAsTheOriginal) {
  test::TempDir tmp;
  const std::string tok = test::TrainTinyTokenizer(tmp.path(), 300);
  ASSERT_EQ(RunCli({"init", "--preset", "tiny", "--out", tmp / "m", "--tokenizer", tok}).exit_code,
            0);
  test::CliResult r = RunCli(
      {"quantize", "--model", tmp / "m", "--format", "q8_0", "--gguf", "--out", tmp / "m.gguf"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto g = ModelWeights::Load(tmp / "m.gguf");
  ASSERT_FALSE(g->tokenizer_model.empty()) << g->no_tokenizer;
  Tokenizer original(tok), rebuilt(g->tokenizer_model, g->tokenizer_name);
  EXPECT_EQ(rebuilt.vocab_size(), original.vocab_size());
  EXPECT_EQ(rebuilt.bos_id(), original.bos_id());
  EXPECT_EQ(rebuilt.eos_id(), original.eos_id());
  const std::string text =
      "The quick brown fox — jumps!  Über den Zaun, ça va? El niño comió piñas. "
      "Привет, мир. 日本語のテキスト。 한국어 🙂 "
      "ＦＵＬＬＷＩＤＴＨ "
      "ﬁne "
      "①\ttab\nnew "
      "line";
  const std::vector<int> ids = original.Encode(text, true);
  EXPECT_EQ(rebuilt.Encode(text, true), ids);
  EXPECT_EQ(rebuilt.Decode(ids), original.Decode(ids));
  // text commands take it: generate from the GGUF file alone
  r = RunCli({"generate", "--model", tmp / "m.gguf", "--prompt", "the quick", "--greedy",
              "--max-new-tokens", "3"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  r = RunCli({"inspect", tmp / "m.gguf"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out)["tokenizer"]["vocab"].get<int>(), 300);
  EXPECT_NE(r.err.find("blk.0.attn_q.weight"), std::string::npos) << r.err;
}

// A LoRA as a GGUF LoRA file: llama.cpp's keys, A as stored, B with q's and k's rows in
// llama.cpp's order; a tree adapter is refused.
TEST(Gguf, LoraAdapterExportsAsLlamaCppsLoraFile) {
  test::TempDir tmp;
  const std::string dir = test::FixturePath("forward/gqa");
  auto base = ModelWeights::Load(dir);
  const LlamaConfig& c = base->config;
  AdapterConfig ac;
  ac.r = 4;
  ac.alpha = 6;
  ac.targets = ParseTargets("all-linear", "test");
  auto adapter = Adapter::Create(c, ac, 1, /*with_grads=*/false);
  for (int i = 0; i < adapter->params().size(); ++i) {  // B is zero when created
    const std::vector<float> v =
        test::Random(static_cast<size_t>(adapter->params().numel(i)), 10 + i, 0.1f);
    std::memcpy(adapter->params().value(i), v.data(), v.size() * 4);
  }
  adapter->Save(tmp / "ad");
  test::CliResult r =
      RunCli({"export-lora", "--model", dir, "--adapter", tmp / "ad", "--out", tmp / "ad.gguf"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  GgufFile g(tmp / "ad.gguf");
  const GgufHeader& h = g.header();
  EXPECT_EQ(h.Find("general.type")->str, "adapter");
  EXPECT_EQ(h.Find("general.architecture")->str, "llama");
  EXPECT_EQ(h.Find("adapter.type")->str, "lora");
  EXPECT_EQ(h.Find("adapter.lora.alpha")->AsDouble(), 6.0);
  EXPECT_EQ(h.tensors.size(), static_cast<size_t>(2 * kNumModules * c.n_layers));
  auto floats = [&](const GgufTensor& t) {
    std::vector<float> v(static_cast<size_t>(t.numel()));
    std::memcpy(v.data(), g.Data(t), v.size() * 4);
    return v;
  };
  for (int l = 0; l < c.n_layers; ++l) {
    for (const Module m : {Module::kQ, Module::kK, Module::kV, Module::kDown}) {
      const LoraWeights* w = adapter->Get(l, m);
      const std::string name = "blk." + std::to_string(l) + "." +
                               (m == Module::kQ   ? "attn_q"
                                : m == Module::kK ? "attn_k"
                                : m == Module::kV ? "attn_v"
                                                  : "ffn_down") +
                               ".weight";
      const GgufTensor* a = h.FindTensor(name + ".lora_a");
      const GgufTensor* b = h.FindTensor(name + ".lora_b");
      ASSERT_TRUE(a != nullptr && b != nullptr) << name;
      EXPECT_EQ(a->ne, (std::vector<int64_t>{w->in, 4})) << name;
      EXPECT_EQ(b->ne, (std::vector<int64_t>{4, w->out})) << name;
      EXPECT_EQ(floats(*a), std::vector<float>(w->A, w->A + 4 * w->in)) << name;
      std::vector<float> want(w->B, w->B + w->out * 4);
      if (m == Module::kQ) want = PermuteLikeLlamaCpp(want, w->out, 4, c.n_heads);
      if (m == Module::kK) want = PermuteLikeLlamaCpp(want, w->out, 4, c.n_kv_heads);
      EXPECT_EQ(floats(*b), want) << name;
    }
  }
  ac.tree_depth = 1;
  Adapter::Create(c, ac, 1, false)->Save(tmp / "tree");
  r = RunCli({"export-lora", "--model", dir, "--adapter", tmp / "tree", "--out", tmp / "t.gguf"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("only a LoRA (tree_depth 0) does"), std::string::npos) << r.err;
  EXPECT_FALSE(FileExists(tmp / "t.gguf"));
}

using test::ErrorOf;

// Bad files: one line naming the file and what is wrong, exit 2.
TEST(Gguf, BadFilesAreRefusedWithOneLine) {
  test::TempDir tmp;
  auto src = ModelWeights::Load(test::FixturePath("forward/gqa"));
  const HandGguf good = HandBuild(*src, kTypes[3]);  // q8_0
  const std::string file = tmp / "bad.gguf";
  auto load_error = [&](const std::string& bytes) {
    test::WriteFile(file, bytes);
    return ErrorOf([&] { ModelWeights::Load(file); });
  };
  auto expect = [&](const std::string& bytes, const std::string& needle) {
    const std::string e = load_error(bytes);
    EXPECT_NE(e.find(needle), std::string::npos) << "expected '" << needle << "' in: " << e;
    EXPECT_EQ(e.rfind(file, 0), 0u) << e;  // the file is named first
  };
  ASSERT_EQ(load_error(good.Build()), "");
  const std::string bytes = good.Build();
  const size_t n_tensors_at = 8, n_kv_at = 16, first_key_len_at = 24;
  // the magic, the version
  expect("GGUX" + bytes.substr(4), "not a model directory or GGUF file");
  EXPECT_EQ(ErrorOf([&] { ParseGguf(reinterpret_cast<const uint8_t*>("GGUX"), 4, "f"); }),
            "f: not a GGUF file (no 'GGUF' magic)");
  {
    HandGguf v = good;
    v.version = 4;
    expect(v.Build(), "GGUF version 4");
  }
  // counts and lengths past the end
  std::string b = bytes;
  const uint64_t huge = uint64_t{1} << 40;
  std::memcpy(&b[n_tensors_at], &huge, 8);
  expect(b, "cannot fit in the file");
  b = bytes;
  std::memcpy(&b[n_kv_at], &huge, 8);
  expect(b, "cannot fit in the file");
  b = bytes;
  std::memcpy(&b[first_key_len_at], &huge, 8);
  expect(b, "runs past the end of the file");
  expect(bytes.substr(0, 200), "cannot fit in the file (200 bytes)");
  expect(bytes.substr(0, 20), "the key-value count (8 bytes at offset 16) runs past the end");
  {  // an array claiming more elements than the file holds
    HandGguf a = good;
    a.kv.Str("tokenizer.ggml.scores");
    a.kv.Put<uint32_t>(9);
    a.kv.Put<uint32_t>(6);
    a.kv.Put<uint64_t>(huge);
    ++a.n_kv;
    expect(a.Build(), "past the end of the file");
  }
  {  // an unknown value type
    HandGguf a = good;
    a.kv.Str("x.y");
    a.kv.Put<uint32_t>(77);
    ++a.n_kv;
    expect(a.Build(), "key 'x.y' has unknown type 77");
  }
  {  // a duplicate key
    HandGguf a = good;
    a.KeyU32("llama.block_count", 2);
    expect(a.Build(), "key 'llama.block_count' appears twice");
  }
  // tensors: past the end, overlapping, misaligned
  std::vector<uint64_t> offsets;
  {
    HandGguf t = good;
    offsets.assign(t.tensors.size(), 0);
    uint64_t off = 0;
    for (size_t i = 0; i < t.tensors.size(); ++i) {
      offsets[i] = off;
      off = (off + t.tensors[i].data.size() + 31) / 32 * 32;
    }
    std::string packed = t.Build(offsets);
    EXPECT_EQ(packed, bytes);
    expect(packed.substr(0, packed.size() - 64), "runs past the end of the data");
    std::vector<uint64_t> o = offsets;
    o[2] = o[1];
    expect(t.Build(o), "overlap");
    o = offsets;
    o[1] += 2;
    expect(t.Build(o), "not a multiple of the alignment 32");
  }
  {  // tensor types: unknown, a K-quant, a row that is not whole blocks
    HandGguf t = good;
    t.tensors[4].type = 99;
    expect(t.Build(), "tensor '" + t.tensors[4].name + "' has unknown type 99");
    t.tensors[4].type = 14;
    expect(t.Build(), "tensor '" + t.tensors[4].name + "' is q6_k, which tinylora does not read");
    t = good;
    t.tensors[5].ne = {t.tensors[5].ne[0] - 16, t.tensors[5].ne[1]};
    expect(t.Build(), "not a whole number of q8_0 blocks");
  }
  {  // a shape the metadata disagrees with, a missing tensor, another architecture
    HandGguf t = good;
    t.tensors[6].ne = {t.tensors[6].ne[1], t.tensors[6].ne[0]};  // k: (32, 64) for (64, 32)
    expect(t.Build(), "but the file's llama.* keys imply");
    t = good;
    t.tensors.pop_back();
    expect(t.Build(), "tensor 'blk.1.ffn_down.weight' is missing");
    HandGguf a;
    a.KeyString("general.architecture", "gpt2");
    a.tensors = good.tensors;
    expect(a.Build(), "tinylora reads Llama models ('llama') only");
  }
  // the CLI: one error line, exit 2
  test::WriteFile(file, "GGUF\x03");
  test::CliResult r = RunCli({"eval", "--model", file, "--token-ids", file});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(r.err.rfind("error: " + file + ": the version", 0), 0u) << r.err;
  r = RunCli({"quantize", "--model", test::FixturePath("forward/gqa"), "--format", "nf4", "--gguf",
              "--out", tmp / "x.gguf"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("GGUF has no NF4 type"), std::string::npos) << r.err;
  EXPECT_FALSE(FileExists(tmp / "x.gguf"));
}

}  // namespace
}  // namespace tinylora
