// Tree-routed LoRA: against the PyTorch reference (tests/reference/make_tree_fixtures.py) in
// hard (path and unit gates), soft and depth-3 all-linear modes; grouped execution against the
// per-token loop; saturated soft routing against hard; routing independent of the batch.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>

#include "adapters/tree.h"
#include "backend/backend.h"
#include "formats/safetensors.h"
#include "model/llama.h"
#include "test_util.h"
#include "train/optimizer.h"
#include "train/train_model.h"
#include "util/error.h"
#include "util/file.h"

namespace tinylora {
namespace {

class TreeFixture : public ::testing::TestWithParam<std::string> {};

TEST_P(TreeFixture, LossesLeavesAndGradientsMatchPyTorch) {
  const std::string dir = test::FixturePath("tree/" + GetParam());
  auto base = ModelWeights::Load(dir);
  auto adapter = Adapter::Load(dir + "/adapter", base->config, /*with_grads=*/true);
  auto routing = nlohmann::json::parse(ReadTextFile(dir + "/routing.json"));
  auto batch = nlohmann::json::parse(ReadTextFile(dir + "/batch.json"));
  const int B = static_cast<int>(batch["inputs"].size()),
            T = static_cast<int>(batch["inputs"][0].size());
  std::vector<int32_t> in, tgt;
  std::vector<uint8_t> mask;
  double count = 0;
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < T; ++t) {
      in.push_back(batch["inputs"][b][t].get<int32_t>());
      tgt.push_back(batch["targets"][b][t].get<int32_t>());
      mask.push_back(batch["mask"][b][t].get<uint8_t>());
      count += mask.back();
    }
  const bool soft = routing["routing"] == "soft";
  TrainModel model(*base, nullptr, adapter.get(), B, T, false, soft);
  model.SetRouting(
      soft, AuxLoss{routing["hardening"].get<double>(), routing["balance"].get<double>(), 1});
  const double task = model.ForwardBackward(in.data(), tgt.data(), mask.data(),
                                            static_cast<float>(1.0 / count), 0) /
                      count;
  SafetensorsFile expected(dir + "/expected.safetensors");
  EXPECT_NEAR(task, test::ReadF64(expected, "loss_task")[0], 1e-5);
  EXPECT_NEAR(model.last_aux_loss(), test::ReadF64(expected, "loss_aux")[0], 1e-6);
  for (int l = 0; l < base->config.n_layers; ++l) {
    const std::vector<double> leaves = test::ReadF64(expected, "leaf." + std::to_string(l));
    ASSERT_EQ(leaves.size(), model.routing(l).leaf.size());
    for (size_t n = 0; n < leaves.size(); ++n)
      EXPECT_EQ(model.routing(l).leaf[n], static_cast<int>(leaves[n])) << l;
  }
  test::ExpectGradientsMatch(adapter->params(), expected, adapter.get());
}
INSTANTIATE_TEST_SUITE_P(Tree, TreeFixture,
                         ::testing::Values("hard_path", "hard_unit", "soft", "depth3_all"));

// A depth-3 adapter with every tensor random.
std::unique_ptr<Adapter> RandomTree(const LlamaConfig& c, int depth) {
  AdapterConfig ac;
  ac.r = 3;
  ac.alpha = 6;
  ac.tree_depth = depth;
  ac.targets = ParseTargets("all-linear", "test");
  auto a = Adapter::Create(c, ac, 21, false);
  std::mt19937 rng(22);
  std::normal_distribution<float> nd(0.0f, 0.3f);
  for (int i = 0; i < a->params().size(); ++i)
    if (a->params().name(i).find("lora_B") != std::string::npos)
      for (int64_t k = 0; k < a->params().numel(i); ++k) a->params().value(i)[k] = nd(rng);
  return a;
}

TEST(TreeKernels, GroupedEqualsPerTokenLoop) {
  auto base = ModelWeights::Load(test::FixturePath("forward/gqa"));
  auto adapter = RandomTree(base->config, 3);
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const int64_t N = 50, C = base->config.hidden;
  std::vector<float> x(static_cast<size_t>(N * C));
  for (float& v : x) v = nd(rng);
  Routing rt;
  RouteHard(*adapter->Router(0), x.data(), N, GateKind::kPath, &rt);
  int used = 0;
  for (int j = 0; j < 8; ++j)
    used += rt.offsets[static_cast<size_t>(j) + 1] > rt.offsets[static_cast<size_t>(j)];
  EXPECT_GE(used, 4);
  for (Module m : {Module::kQ, Module::kK}) {
    const LoraWeights& lw = *adapter->Get(0, m);
    std::vector<float> y(static_cast<size_t>(N * lw.out), 0.5f), ref = y,
                                                                 u(static_cast<size_t>(N * lw.r));
    TreeScratch sc;
    TreeLoraForwardHard(Gemm, lw, 2.0f, x.data(), N, rt, u.data(), y.data(), sc);
    TreeLoraForwardHardReference(lw, 2.0f, x.data(), N, rt, ref.data());
    for (size_t i = 0; i < y.size(); ++i) ASSERT_NEAR(y[i], ref[i], 1e-5) << i;
  }
}

TEST(TreeKernels, SaturatedSoftEqualsHard) {
  auto base = ModelWeights::Load(test::FixturePath("forward/gqa"));
  auto adapter = RandomTree(base->config, 2);
  for (int l = 0; l < base->config.n_layers; ++l) {  // σ(z) = 0 or 1: soft becomes hard
    const RouterWeights* r = adapter->Router(l);
    for (int64_t k = 0; k < r->nodes() * r->hidden; ++k) r->W[k] *= 1e4f;
  }
  std::vector<int32_t> in = {3, 17, 4, 99, 23, 8, 61, 5, 2, 40};
  std::vector<int32_t> tgt = {17, 4, 99, 23, 8, 61, 5, 2, 40, 7};
  std::vector<uint8_t> mask(10, 1);
  TrainModel hard(*base, nullptr, adapter.get(), 2, 5, false, true);
  hard.SetRouting(false, AuxLoss{});
  TrainModel soft(*base, nullptr, adapter.get(), 2, 5, false, true);
  soft.SetRouting(true, AuxLoss{});
  EXPECT_NEAR(hard.ForwardLoss(in.data(), tgt.data(), mask.data()),
              soft.ForwardLoss(in.data(), tgt.data(), mask.data()), 1e-4);
}

TEST(TreeKernels, RoutingOfATokenDoesNotDependOnItsBatch) {
  auto base = ModelWeights::Load(test::FixturePath("forward/gqa"));
  auto adapter = RandomTree(base->config, 3);
  LlamaModel model(*base, adapter.get());
  const std::vector<int> a = {5, 9, 14, 2, 77, 31}, b = {8, 40, 41};
  auto run = [&](const std::vector<std::vector<int>>& seqs) {
    KvCache cache(model.config(), static_cast<int>(seqs.size()), 16);
    Batch batch;
    for (size_t s = 0; s < seqs.size(); ++s)
      for (size_t i = 0; i < seqs[s].size(); ++i)
        batch.Add(seqs[s][i], static_cast<int>(s), static_cast<int>(i), true);
    std::vector<float> logits;
    model.Forward(batch, cache, &logits);
    return logits;
  };
  const std::vector<float> alone = run({a}), together = run({b, a});
  const size_t V = static_cast<size_t>(model.config().vocab), off = b.size() * V;
  for (size_t i = 0; i < alone.size(); ++i) ASSERT_EQ(alone[i], together[off + i]) << i;
  // Decoding token by token with the cache gives the same logits as the whole prompt.
  KvCache cache(model.config(), 1, 16);
  std::vector<float> logits;
  for (size_t i = 0; i < a.size(); ++i) {
    Batch one;
    one.Add(a[i], 0, static_cast<int>(i), true);
    model.Forward(one, cache, &logits);
    for (size_t k = 0; k < V; ++k) ASSERT_EQ(logits[k], alone[i * V + k]) << i;
  }
}

// A forest: one forward over sequences using the base, a LoRA and a tree (DESIGN.md §8), with
// the prompts cut into chunks of different sizes, gives each sequence, bit for bit, the logits
// it has alone in one piece (batch-invariant inference).
// Over a quantised base too: the forest changes nothing about the base's products.
void ExpectMixedAdaptersInOneBatchEqualEachSequenceAlone(const QuantizeOnLoad& quantize) {
  auto base = ModelWeights::Load(test::FixturePath("forward/gqa"), quantize);
  auto lora = RandomTree(base->config, 0), tree = RandomTree(base->config, 3);
  const std::vector<const Adapter*> forest = {nullptr, lora.get(), tree.get()};
  const std::vector<std::vector<int>> prompts = {{5, 9, 14, 2, 77, 31, 8, 40, 41, 3, 12},
                                                 {8, 40, 41, 6, 19, 4, 4, 90, 13},
                                                 {7, 1, 33, 60, 2, 9, 28}};
  const size_t V = static_cast<size_t>(base->config.vocab);
  // A prompt alone, in one piece, on a model holding one adapter (or none): every position's
  // logits.
  auto run_alone = [&](const Adapter* adapter, const std::vector<int>& prompt) {
    LlamaModel model(*base, adapter);
    KvCache cache(model.config(), 1, 16);
    Batch b;
    for (size_t i = 0; i < prompt.size(); ++i) b.Add(prompt[i], 0, static_cast<int>(i), true);
    std::vector<float> logits;
    model.Forward(b, cache, &logits);
    return logits;
  };
  std::vector<std::vector<float>> alone;
  for (size_t s = 0; s < prompts.size(); ++s) alone.push_back(run_alone(forest[s], prompts[s]));
  // The adapters matter: each sequence's logits differ from the base's on the same prompt.
  for (size_t s = 1; s < prompts.size(); ++s) {
    const std::vector<float> plain = run_alone(nullptr, prompts[s]);
    double diff = 0;
    for (size_t k = 0; k < plain.size(); ++k)
      diff = std::max(diff, std::fabs(double{plain[k]} - alone[s][k]));
    EXPECT_GT(diff, 1e-2) << s;
  }
  // All three together, each prompt in chunks: 3+5+3, 4+1+4, 2+2+3 tokens per forward.
  LlamaModel model(*base, forest);
  KvCache cache(model.config(), 3, 16);
  const std::vector<std::vector<int>> chunks = {{3, 5, 3}, {4, 1, 4}, {2, 2, 3}};
  std::vector<size_t> done(3, 0);
  for (size_t step = 0; step < 3; ++step) {
    Batch b;
    for (size_t s : {size_t{2}, size_t{0}, size_t{1}}) {  // not in slot order
      for (int i = 0; i < chunks[s][step]; ++i) {
        const size_t p = done[s] + static_cast<size_t>(i);
        b.Add(prompts[s][p], static_cast<int>(s), static_cast<int>(p), true, static_cast<int>(s));
      }
    }
    std::vector<float> logits;
    model.Forward(b, cache, &logits);
    size_t row = 0;
    for (size_t s : {size_t{2}, size_t{0}, size_t{1}}) {
      for (int i = 0; i < chunks[s][step]; ++i, ++row) {
        const size_t p = done[s] + static_cast<size_t>(i);
        for (size_t k = 0; k < V; ++k)
          ASSERT_EQ(logits[row * V + k], alone[s][p * V + k]) << "seq " << s << " pos " << p;
      }
      done[s] += static_cast<size_t>(chunks[s][step]);
    }
  }
  // Routing statistics come back per sequence: only the tree's sequence has them.
  EXPECT_TRUE(model.routing_stats(0).empty());
  EXPECT_TRUE(model.routing_stats(1).empty());
  const std::vector<RoutingStats> st = model.routing_stats(2);
  ASSERT_EQ(st.size(), static_cast<size_t>(base->config.n_layers));
  for (const RoutingStats& blk : st) {
    int64_t n = 0;
    for (int64_t u : blk.usage) n += u;
    EXPECT_EQ(n, static_cast<int64_t>(prompts[2].size()));
  }
  model.ResetRoutingStats(2);
  EXPECT_TRUE(model.routing_stats(2).empty());
  // A slot the model does not hold, or two slots in one sequence, are refused.
  Batch bad;
  bad.Add(5, 0, 11, true, 3);
  EXPECT_THROW(model.Forward(bad, cache, nullptr), Error);
  Batch split;
  split.Add(5, 0, 11, true, 0);
  split.Add(6, 0, 12, true, 1);
  EXPECT_THROW(model.Forward(split, cache, nullptr), Error);
}

TEST(Forest, MixedAdaptersInOneBatchEqualEachSequenceAlone) {
  ExpectMixedAdaptersInOneBatchEqualEachSequenceAlone({});
}

TEST(Forest, MixedAdaptersOverAQuantisedBase) {
  QuantizeOnLoad q;
  q.enabled = true;
  q.format = Format::kQ4_0;
  ExpectMixedAdaptersInOneBatchEqualEachSequenceAlone(q);
}

TEST(TreeFiles, DisagreeingAdapterIsRefused) {
  test::TempDir tmp;
  const std::string src = test::FixturePath("tree/hard_path");
  auto base = ModelWeights::Load(src);
  std::filesystem::copy(src + "/adapter", tmp / "a", std::filesystem::copy_options::recursive);
  auto cfg = nlohmann::json::parse(ReadTextFile(tmp / "a/adapter_config.json"));
  cfg["tree_depth"] = 3;  // the file holds depth-2 tensors
  test::WriteFile(tmp / "a/adapter_config.json", cfg.dump());
  try {
    Adapter::Load(tmp / "a", base->config, false);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("implies [16, 32]"), std::string::npos) << e.what();
  }
  cfg["tree_depth"] = 13;
  test::WriteFile(tmp / "a/adapter_config.json", cfg.dump());
  EXPECT_THROW(Adapter::Load(tmp / "a", base->config, false), Error);
}

// Large banks: a hard step gives gradients to, and moves, only the leaves its tokens used;
// the others keep their bytes and get no optimizer state.
TEST(TreeBank, OnlyRoutedLeavesGetGradientsAndUpdates) {
  auto base = ModelWeights::Load(test::FixturePath("forward/gqa"));
  AdapterConfig ac;
  ac.r = 2;
  ac.tree_depth = 6;  // 64 leaves, 10 tokens
  ac.targets = ParseTargets("q_proj,down_proj", "test");
  auto adapter = Adapter::Create(base->config, ac, 5, /*with_grads=*/true);
  ParamBlock& p = adapter->params();
  for (int i = 0; i < p.size(); ++i)  // B non-zero so that A gets gradients
    if (p.name(i).find("lora_B") != std::string::npos)
      for (int64_t k = 0; k < p.numel(i); ++k) p.value(i)[k] = 0.1f * static_cast<float>(k % 7);
  const std::vector<float> before = p.values();
  std::vector<int32_t> in = {3, 17, 4, 99, 23, 8, 61, 5, 2, 40};
  std::vector<int32_t> tgt = {17, 4, 99, 23, 8, 61, 5, 2, 40, 7};
  std::vector<uint8_t> mask(10, 1);
  TrainModel model(*base, nullptr, adapter.get(), 2, 5, false);
  model.SetRouting(false, AuxLoss{0, 0.01, 1});
  p.ZeroGrads();
  model.ForwardBackward(in.data(), tgt.data(), mask.data(), 0.1f, 0);
  AdamW adam(&p);
  AdamWOptions o;
  o.weight_decay = 0.1;
  adam.Step(o, 1e-2, 1);
  int64_t expected_touched = 0;
  for (int l = 0; l < base->config.n_layers; ++l) {
    std::vector<uint8_t> used(64, 0);
    for (int32_t j : model.routing(l).leaf) used[static_cast<size_t>(j)] = 1;
    int n_used = 0;
    for (uint8_t u : used) n_used += u;
    EXPECT_LE(n_used, 10);
    for (Module m : {Module::kQ, Module::kDown}) {
      for (char which : {'A', 'B'}) {
        const int i = p.Find(LoraTensorName(l, m, which));
        ASSERT_GE(i, 0);
        ASSERT_EQ(p.segments(i), 64);
        std::vector<int> with_state;
        for (int j = 0; j < 64; ++j) {
          EXPECT_EQ(p.TouchedSegmentGrad(i, j) != nullptr, used[static_cast<size_t>(j)] == 1)
              << p.name(i) << " leaf " << j;
          if (used[static_cast<size_t>(j)]) with_state.push_back(j);
          const int64_t n = p.segment_numel(i), off = p.value(i) - p.values().data() + j * n;
          const bool same = std::memcmp(p.value(i) + j * n, &before[static_cast<size_t>(off)],
                                        sizeof(float) * static_cast<size_t>(n)) == 0;
          EXPECT_EQ(same, !used[static_cast<size_t>(j)]) << p.name(i) << " leaf " << j;
        }
        EXPECT_EQ(adam.SegmentsWithState(i), with_state) << p.name(i);
        expected_touched += n_used;
      }
    }
  }
  // Router rows: only the nodes on the tokens' paths (at most 10·6 per block, of 63).
  for (int l = 0; l < base->config.n_layers; ++l) {
    const int i = p.Find(RouterTensorName(l, false));
    int visited = 0;
    for (int m = 0; m < 63; ++m) visited += p.TouchedSegmentGrad(i, m) != nullptr;
    EXPECT_GE(visited, 6);
    EXPECT_LE(visited, 60);
    expected_touched += visited;
  }
  EXPECT_EQ(p.touched_segments(), expected_touched);
  p.ZeroGrads();
  EXPECT_EQ(p.touched_segments(), 0);
}

// Lazy AdamW is torch's AdamW when every segment is used in every step.
TEST(TreeBank, LazyAdamEqualsDenseWhenEveryLeafIsUsed) {
  ParamBlock dense, lazy;
  dense.Add("w", {8, 3});
  lazy.Add("w", {8, 3}, 4);
  dense.Allocate(true);
  lazy.Allocate(true);
  for (int k = 0; k < 24; ++k) dense.value(0)[k] = lazy.value(0)[k] = 0.1f * static_cast<float>(k);
  AdamW a(&dense), b(&lazy);
  AdamWOptions o;
  o.weight_decay = 0.05;
  for (int step = 1; step <= 5; ++step) {
    dense.ZeroGrads();
    lazy.ZeroGrads();
    for (int s = 3; s >= 0; --s) {  // touched out of order on purpose
      float* g = lazy.SegmentGrad(0, s);
      for (int k = 0; k < 6; ++k) {
        const float v = std::sin(static_cast<float>(step * 31 + s * 6 + k));
        g[k] = v;
        dense.grad(0)[s * 6 + k] = v;
      }
    }
    EXPECT_DOUBLE_EQ(GradNorm(dense), GradNorm(lazy));
    a.Step(o, 1e-2, step);
    b.Step(o, 1e-2, step);
    for (int k = 0; k < 24; ++k) ASSERT_EQ(dense.value(0)[k], lazy.value(0)[k]) << step << " " << k;
  }
  EXPECT_EQ(b.SegmentSteps(0, 2), 5);
}

// In memory a leaf's B is one contiguous block; the file keeps PEFT's (out, leaves·r).
TEST(TreeFiles, SavedTreeHasPeftLayoutAndRoundTrips) {
  test::TempDir tmp;
  auto base = ModelWeights::Load(test::FixturePath("forward/gqa"));
  auto a = RandomTree(base->config, 2);
  a->Save(tmp / "a");
  SafetensorsFile f(tmp / "a/adapter_model.safetensors");
  const LoraWeights& lw = *a->Get(1, Module::kV);
  const TensorInfo* t = f.Find(LoraTensorName(1, Module::kV, 'B'));
  ASSERT_NE(t, nullptr);
  ASSERT_EQ(t->shape, (std::vector<int64_t>{lw.out, 4 * lw.r}));
  const float* file = reinterpret_cast<const float*>(f.Data(*t));
  for (int64_t o = 0; o < lw.out; ++o)
    for (int j = 0; j < 4; ++j)
      for (int k = 0; k < lw.r; ++k)
        ASSERT_EQ(file[o * 4 * lw.r + j * lw.r + k], lw.LeafB(j)[o * lw.r + k]) << o << j << k;
  auto back = Adapter::Load(tmp / "a", base->config, false);
  test::ExpectSameValues(back->params(), a->params());
  // Loaded for inference, A and the routers are used in place from the mapped file; only B
  // (made leaf-major) has storage of its own.
  int64_t b_elements = 0;
  for (int i = 0; i < back->params().size(); ++i)
    if (back->params().name(i).find("lora_B") != std::string::npos)
      b_elements += back->params().numel(i);
  EXPECT_EQ(static_cast<int64_t>(back->params().values().size()), b_elements);
  auto trainable = Adapter::Load(tmp / "a", base->config, true);
  test::ExpectSameValues(trainable->params(), a->params());
}

}  // namespace
}  // namespace tinylora
