// The forward pass against the PyTorch reference fixtures (tests/reference), and the
// properties serving relies on: batched = one at a time, cached decode = recomputation.
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "model/llama.h"
#include "model/tokenizer.h"
#include "ops/matmul.h"
#include "test_util.h"
#include "util/error.h"
#include "util/file.h"

namespace tinylora {
namespace {

struct Expected {
  std::vector<std::vector<int>> ids;
  std::vector<std::vector<float>> logits;  // per sequence (T, V)
};

Expected LoadExpected(const std::string& dir) {
  auto j = nlohmann::json::parse(ReadTextFile(dir + "/expected.json"));
  Expected e;
  for (const auto& s : j["sequences"]) {
    e.ids.push_back(s["input_ids"].get<std::vector<int>>());
    std::vector<float> flat;
    for (const auto& row : s["logits"])
      for (const auto& v : row) flat.push_back(v.get<float>());
    e.logits.push_back(flat);
  }
  return e;
}

float MaxAbsDiff(const float* a, const float* b, size_t n) {
  float m = 0;
  for (size_t i = 0; i < n; ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

using test::Logits;

class Fixture : public ::testing::TestWithParam<std::string> {};

TEST_P(Fixture, LogitsMatchPyTorchReference) {
  const std::string dir = test::FixturePath("forward/" + GetParam());
  auto w = ModelWeights::Load(dir);
  LlamaModel model(*w);
  Expected e = LoadExpected(dir);
  ASSERT_EQ(e.ids.size(), 3u);
  for (size_t s = 0; s < e.ids.size(); ++s) {
    std::vector<float> logits = Logits(model, e.ids[s]);
    ASSERT_EQ(logits.size(), e.logits[s].size());
    EXPECT_LE(MaxAbsDiff(logits.data(), e.logits[s].data(), logits.size()), 1e-4f)
        << "sequence " << s;
  }
}

TEST_P(Fixture, BatchedEqualsOneAtATime) {
  const std::string dir = test::FixturePath("forward/" + GetParam());
  auto w = ModelWeights::Load(dir);
  LlamaModel model(*w);
  Expected e = LoadExpected(dir);
  // All three sequences in one forward: different lengths, interleaved cache slots.
  KvCache cache(model.config(), 3, 16);
  Batch b;
  for (size_t s = 0; s < e.ids.size(); ++s)
    for (size_t i = 0; i < e.ids[s].size(); ++i)
      b.Add(e.ids[s][i], static_cast<int>(2 - s), static_cast<int>(i), true);
  std::vector<float> logits;
  model.Forward(b, cache, &logits);
  const size_t V = static_cast<size_t>(model.config().vocab);
  size_t row = 0;
  for (size_t s = 0; s < e.ids.size(); ++s) {
    std::vector<float> single = Logits(model, e.ids[s]);
    EXPECT_LE(MaxAbsDiff(&logits[row * V], single.data(), single.size()), 1e-5f)
        << "sequence " << s;
    row += e.ids[s].size();
  }
}

TEST_P(Fixture, CachedDecodeEqualsRecomputation) {
  const std::string dir = test::FixturePath("forward/" + GetParam());
  auto w = ModelWeights::Load(dir);
  LlamaModel model(*w);
  const int V = model.config().vocab;
  std::vector<int> ids = LoadExpected(dir).ids[2];
  ids.resize(12);  // prompt of 12 (sgemm path), then 10 greedy steps (streaming path)
  KvCache cache(model.config(), 1, 32);
  Batch b;
  for (size_t i = 0; i < ids.size(); ++i)
    b.Add(ids[i], 0, static_cast<int>(i), i + 1 == ids.size());
  std::vector<float> logits;
  model.Forward(b, cache, &logits);
  for (int step = 0; step < 10; ++step) {
    const std::vector<float> full = Logits(model, ids);
    const float* last = &full[full.size() - static_cast<size_t>(V)];
    EXPECT_LE(MaxAbsDiff(logits.data(), last, static_cast<size_t>(V)), 1e-5f) << "step " << step;
    const int next =
        static_cast<int>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    EXPECT_EQ(next, static_cast<int>(std::max_element(last, last + V) - last)) << "step " << step;
    ids.push_back(next);
    b.Clear();
    b.Add(next, 0, static_cast<int>(ids.size()) - 1, true);
    model.Forward(b, cache, &logits);
  }
}

INSTANTIATE_TEST_SUITE_P(Forward, Fixture, ::testing::Values("gqa", "tied", "bf16", "odd"));

TEST(Model, F16AndBf16MatricesKeptInTheirFormatNormsF32) {
  auto odd = ModelWeights::Load(test::FixturePath("forward/odd"));
  EXPECT_EQ(odd->layers[0].wq.format, Format::kF16);
  EXPECT_EQ(odd->layers[0].attn_norm.format, Format::kF32);
  auto bf = ModelWeights::Load(test::FixturePath("forward/bf16"));
  EXPECT_EQ(bf->layers[0].wq.format, Format::kBF16);
  EXPECT_EQ(bf->layers[0].attn_norm.format, Format::kF32);
}

TEST(Model, TiedHeadIsTheEmbedding) {
  auto w = ModelWeights::Load(test::FixturePath("forward/tied"));
  EXPECT_EQ(w->lm_head.data, w->embed.data);
}

TEST(Model, BadBatchesAreRefused) {
  auto w = ModelWeights::Load(test::FixturePath("forward/gqa"));
  LlamaModel model(*w);
  KvCache cache(model.config(), 2, 8);
  std::vector<float> logits;
  auto fails = [&](const Batch& b, const std::string& needle) {
    try {
      model.Forward(b, cache, &logits);
      ADD_FAILURE() << "no error for " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  Batch b;
  fails(b, "empty batch");
  b.Add(101, 0, 0, true);
  fails(b, "outside the vocabulary");
  b.Clear();
  b.Add(1, 0, 8, true);
  fails(b, "past the context");
  b.Clear();
  b.Add(1, 0, 0, true);
  b.Add(1, 0, 2, true);
  fails(b, "non-consecutive");
  b.Clear();
  b.Add(1, 1, 3, true);
  fails(b, "only 0 are cached");
  b.Clear();
  b.Add(1, 5, 0, true);
  fails(b, "no cache slot");
}

}  // namespace
}  // namespace tinylora

namespace tinylora {
namespace {

TEST(TextStreamer, ByteFallbackCharactersArriveWhole) {
  test::TempDir tmp;
  Tokenizer tok(test::TrainTinyTokenizer(tmp.path(), 300));
  const std::vector<int> prompt = tok.Encode("the fox", true);
  const std::vector<int> more = tok.Encode(" 😀 dog 中 café", false);  // emoji, CJK: byte pieces
  TextStreamer s(tok);
  s.Prime(prompt);
  std::string streamed;
  for (int id : more) {
    const std::string piece = s.Push(id);
    EXPECT_EQ(piece.find("\xEF\xBF\xBD"), std::string::npos) << "a replacement character leaked";
    streamed += piece;
  }
  streamed += s.Finish();
  std::vector<int> all = prompt;
  all.insert(all.end(), more.begin(), more.end());
  EXPECT_EQ(tok.Decode(prompt) + streamed, tok.Decode(all));
  EXPECT_NE(streamed.find("😀"), std::string::npos);
}

}  // namespace
}  // namespace tinylora
