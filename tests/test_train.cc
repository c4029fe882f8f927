// The training backward pass: whole-model gradients against central finite differences
// (pretraining and LoRA), activation checkpointing equal to storing, blocked attention. The
// per-op gradient checks are in test_backend_ops.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "adapters/lora.h"
#include "ops/attention.h"
#include "ops/loss.h"
#include "ops/ops.h"
#include "test_util.h"
#include "train/optimizer.h"
#include "train/trainable.h"
#include "util/error.h"

namespace tinylora {
namespace {

struct Batch2 {
  int B = 2, T = 7;
  std::vector<int32_t> in, tgt;
  std::vector<uint8_t> mask;
};

Batch2 MakeBatch(int vocab, uint32_t seed) {
  Batch2 b;
  std::mt19937 rng(seed);
  for (int i = 0; i < b.B * (b.T + 1); ++i) b.in.push_back(static_cast<int32_t>(rng() % vocab));
  std::vector<int32_t> stream = b.in;
  b.in.clear();
  for (int s = 0; s < b.B; ++s) {
    for (int t = 0; t < b.T; ++t) {
      b.in.push_back(stream[static_cast<size_t>(s * (b.T + 1) + t)]);
      b.tgt.push_back(stream[static_cast<size_t>(s * (b.T + 1) + t + 1)]);
      b.mask.push_back(s == 0 && t < 2 ? 0 : 1);  // a prompt: no loss on its targets
    }
  }
  return b;
}

double Count(const Batch2& b) {
  double n = 0;
  for (uint8_t m : b.mask) n += m;
  return n;
}

// Mean masked loss plus the routing losses, forward only.
double Loss(TrainModel& m, const Batch2& b) {
  const double task = m.ForwardLoss(b.in.data(), b.tgt.data(), b.mask.data()) / Count(b);
  return task + m.last_aux_loss();
}

// Every block's hard leaves, to notice a finite-difference step that flips a routing decision.
std::vector<int32_t> Leaves(const TrainModel& m, int layers, bool tree) {
  std::vector<int32_t> all;
  for (int l = 0; tree && l < layers; ++l) {
    all.insert(all.end(), m.routing(l).leaf.begin(), m.routing(l).leaf.end());
  }
  return all;
}

// Compares analytic gradients of `params` with central differences on `samples` coordinates
// of every tensor: relative error of the sampled vectors, per tensor.
void CheckGradients(TrainModel& model, ParamBlock& params, const Batch2& b, int samples,
                    int tree_layers = 0) {
  params.ZeroGrads();
  const double loss = model.ForwardBackward(b.in.data(), b.tgt.data(), b.mask.data(),
                                            static_cast<float>(1.0 / Count(b)), 0) /
                          Count(b) +
                      model.last_aux_loss();
  EXPECT_NEAR(loss, Loss(model, b), 1e-5);
  const std::vector<int32_t> leaves = Leaves(model, tree_layers, tree_layers > 0);
  int skipped = 0;
  std::mt19937 rng(5);
  for (int i = 0; i < params.size(); ++i) {
    const std::vector<float> grad = params.DenseGrad(i);
    double num2 = 0, diff2 = 0;
    for (int s = 0; s < samples; ++s) {
      const int64_t k = static_cast<int64_t>(rng() % static_cast<uint32_t>(params.numel(i)));
      float* p = params.value(i) + k;
      const float orig = *p, h = 1e-2f * std::max(1.0f, std::fabs(orig));
      *p = orig + h;
      const double up = Loss(model, b);
      const bool flip_up = Leaves(model, tree_layers, tree_layers > 0) != leaves;
      *p = orig - h;
      const double down = Loss(model, b);
      const bool flip_down = Leaves(model, tree_layers, tree_layers > 0) != leaves;
      *p = orig;
      if (flip_up || flip_down) {  // hard routing is piecewise constant: not differentiable here
        ++skipped;
        continue;
      }
      const double fd = (up - down) / (2.0 * h);
      const double an = grad[static_cast<size_t>(k)];
      num2 += fd * fd;
      diff2 += (fd - an) * (fd - an);
    }
    if (num2 > 1e-12) {
      EXPECT_LT(std::sqrt(diff2 / num2), 2e-2) << params.name(i);
    } else {
      EXPECT_LT(std::sqrt(diff2), 1e-5) << params.name(i);
    }
  }
  EXPECT_LT(skipped, params.size() * samples / 4) << "too many routing flips to judge";
}

// A tree adapter with random leaves (B non-zero) on the gqa fixture model.
std::unique_ptr<Adapter> RandomTree(const LlamaConfig& c, int depth, const std::string& gate,
                                    const std::string& targets) {
  AdapterConfig ac;
  ac.r = 2;
  ac.alpha = 4;
  ac.tree_depth = depth;
  ac.gate = gate;
  ac.targets = ParseTargets(targets, "test");
  auto a = Adapter::Create(c, ac, 11, true);
  std::mt19937 rng(12);
  std::normal_distribution<float> nd(0.0f, 0.3f);
  for (int i = 0; i < a->params().size(); ++i) {
    const std::string& name = a->params().name(i);
    if (name.find("lora_B") == std::string::npos &&
        name.find("tree_router.bias") == std::string::npos)
      continue;
    for (int64_t k = 0; k < a->params().numel(i); ++k) a->params().value(i)[k] = nd(rng);
  }
  return a;
}

TEST(TreeGradients, HardRoutingMatchesFiniteDifferences) {
  auto base = ModelWeights::Load(test::FixturePath("forward/gqa"));
  // The "unit" gate is a straight-through estimator (value 1, gradient of log p): finite
  // differences cannot see it; the PyTorch tree fixtures check it.
  for (const char* gate : {"path"}) {
    SCOPED_TRACE(gate);
    auto adapter = RandomTree(base->config, 2, gate, "q_proj,v_proj,down_proj");
    TrainModel model(*base, nullptr, adapter.get(), 2, 7, false);
    model.SetRouting(false, AuxLoss{0.1, 0.05, 1});
    CheckGradients(model, adapter->params(), MakeBatch(base->config.vocab, 4), 5,
                   base->config.n_layers);
  }
}

TEST(TreeGradients, SoftRoutingMatchesFiniteDifferences) {
  auto base = ModelWeights::Load(test::FixturePath("forward/gqa"));
  auto adapter = RandomTree(base->config, 2, "path", "q_proj,o_proj,up_proj");
  TrainModel model(*base, nullptr, adapter.get(), 2, 7, false, /*soft_capable=*/true);
  model.SetRouting(true, AuxLoss{0.1, 0.05, 1});
  CheckGradients(model, adapter->params(), MakeBatch(base->config.vocab, 5), 5,
                 base->config.n_layers);
}

TEST(TrainGradients, PretrainMatchesFiniteDifferences) {
  for (const char* name : {"gqa", "tied"}) {
    SCOPED_TRACE(name);
    auto src = ModelWeights::Load(test::FixturePath(std::string("forward/") + name));
    auto base = MakeTrainable(*src);
    TrainModel model(base->weights, &base->grads, nullptr, 2, 7, false);
    CheckGradients(model, base->params, MakeBatch(src->config.vocab, 1), 6);
  }
}

TEST(TrainGradients, LoraMatchesFiniteDifferences) {
  auto base = ModelWeights::Load(test::FixturePath("forward/gqa"));
  AdapterConfig ac;
  ac.r = 3;
  ac.alpha = 6;
  ac.targets = ParseTargets("all-linear", "test");
  auto adapter = Adapter::Create(base->config, ac, 3, true);
  std::mt19937 rng(9);
  std::normal_distribution<float> nd(0.0f, 0.3f);
  for (int i = 1; i < adapter->params().size(); i += 2) {  // B non-zero, or dA would be 0
    for (int64_t k = 0; k < adapter->params().numel(i); ++k)
      adapter->params().value(i)[k] = nd(rng);
  }
  TrainModel model(*base, nullptr, adapter.get(), 2, 7, false);
  CheckGradients(model, adapter->params(), MakeBatch(base->config.vocab, 2), 5);
}

TEST(TrainGradients, CheckpointingEqualsStoring) {
  auto src = ModelWeights::Load(test::FixturePath("forward/gqa"));
  auto a = MakeTrainable(*src), b = MakeTrainable(*src);
  const Batch2 batch = MakeBatch(src->config.vocab, 3);
  TrainModel stored(a->weights, &a->grads, nullptr, 2, 7, false);
  TrainModel recomputed(b->weights, &b->grads, nullptr, 2, 7, true);
  EXPECT_LT(recomputed.ActivationBytes(), stored.ActivationBytes());
  const double la =
      stored.ForwardBackward(batch.in.data(), batch.tgt.data(), batch.mask.data(), 1, 0);
  const double lb =
      recomputed.ForwardBackward(batch.in.data(), batch.tgt.data(), batch.mask.data(), 1, 0);
  EXPECT_EQ(la, lb);
  for (int i = 0; i < a->params.size(); ++i) {
    for (int64_t k = 0; k < a->params.numel(i); ++k)
      ASSERT_EQ(a->params.grad(i)[k], b->params.grad(i)[k]) << a->params.name(i) << " " << k;
  }
}

TEST(TrainGradients, SeqLenOverContextIsRefused) {
  auto src = ModelWeights::Load(test::FixturePath("forward/gqa"));
  EXPECT_THROW(TrainModel(*src, nullptr, nullptr, 1, 65, false), Error);
}

std::vector<float> Randn(size_t n, uint32_t seed) { return test::Random(n, seed); }

}  // namespace
}  // namespace tinylora

namespace tinylora {
namespace {

// Causal attention over several query blocks (T = 150: blocks of 64, 64, 22) against plain
// double loops, forward and backward: the blocks skip only keys no query of theirs sees.
TEST(Training, BlockedAttentionMatchesPlainLoops) {
  const AttentionShape s{4, 2, 8};
  const int64_t T = 150, ldq = 32, ldkv = 16, hd = 8;
  std::vector<float> q = Randn(T * ldq, 21), k = Randn(T * ldkv, 22), v = Randn(T * ldkv, 23);
  std::vector<float> dout = Randn(T * ldq, 24);
  std::vector<float> out(T * ldq), probs(4 * T * T), scratch(T * T), dq(q.size());
  std::vector<float> dk(k.size(), 0.0f), dv(v.size(), 0.0f);
  for (int h = 0; h < 4; ++h) {
    AttentionTrainHead(s, h, q.data(), ldq, k.data(), v.data(), ldkv, T, &probs[h * T * T],
                       out.data(), ldq);
  }
  for (int h = 0; h < 4; ++h) {
    AttentionTrainHeadBackward(s, h, q.data(), ldq, k.data(), v.data(), ldkv, T, &probs[h * T * T],
                               dout.data(), ldq, dq.data(), dk.data(), dv.data(), scratch.data());
  }
  std::vector<double> rout(out.size()), rdq(dq.size()), rdk(dk.size(), 0), rdv(dv.size(), 0);
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  for (int h = 0; h < 4; ++h) {
    const int64_t g = h / 2, qo = h * hd, ko = g * hd;
    std::vector<double> P(T * T, 0.0), dS(T * T, 0.0);
    for (int64_t i = 0; i < T; ++i) {
      double mx = -1e300, sum = 0, dot = 0;
      for (int64_t j = 0; j <= i; ++j) {
        double d = 0;
        for (int64_t e = 0; e < hd; ++e) d += double{q[i * ldq + qo + e]} * k[j * ldkv + ko + e];
        P[i * T + j] = d * scale;
        mx = std::max(mx, P[i * T + j]);
      }
      for (int64_t j = 0; j <= i; ++j) sum += (P[i * T + j] = std::exp(P[i * T + j] - mx));
      for (int64_t j = 0; j <= i; ++j) P[i * T + j] /= sum;
      for (int64_t e = 0; e < hd; ++e) {
        double o = 0;
        for (int64_t j = 0; j <= i; ++j) o += P[i * T + j] * v[j * ldkv + ko + e];
        rout[i * ldq + qo + e] = o;
      }
      for (int64_t j = 0; j <= i; ++j) {
        double dp = 0;
        for (int64_t e = 0; e < hd; ++e)
          dp += double{dout[i * ldq + qo + e]} * v[j * ldkv + ko + e];
        dS[i * T + j] = dp;
        dot += P[i * T + j] * dp;
        for (int64_t e = 0; e < hd; ++e)
          rdv[j * ldkv + ko + e] += P[i * T + j] * dout[i * ldq + qo + e];
      }
      for (int64_t j = 0; j <= i; ++j) dS[i * T + j] = P[i * T + j] * (dS[i * T + j] - dot);
    }
    for (int64_t i = 0; i < T; ++i) {
      for (int64_t j = 0; j <= i; ++j) {
        for (int64_t e = 0; e < hd; ++e) {
          rdq[i * ldq + qo + e] += scale * dS[i * T + j] * k[j * ldkv + ko + e];
          rdk[j * ldkv + ko + e] += scale * dS[i * T + j] * q[i * ldq + qo + e];
        }
      }
    }
  }
  auto expect_close = [](const std::vector<float>& got, const std::vector<double>& want,
                         const char* what) {
    double mx = 0, err = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      mx = std::max(mx, std::fabs(want[i]));
      err = std::max(err, std::fabs(got[i] - want[i]));
    }
    EXPECT_LT(err, 1e-5 * mx) << what;
  };
  expect_close(out, rout, "out");
  expect_close(dq, rdq, "dq");
  expect_close(dk, rdk, "dk");
  expect_close(dv, rdv, "dv");
}

TEST(Training, TinyModelOverfitsOneBatch) {
  auto src = ModelWeights::Load(test::FixturePath("forward/gqa"));
  auto base = MakeTrainable(*src);
  TrainModel model(base->weights, &base->grads, nullptr, 2, 7, false);
  AdamW adam(&base->params);
  AdamWOptions o;
  std::vector<int32_t> in = {5, 9, 14, 2, 77, 31, 8, 40, 41, 42, 43, 44, 45, 46};
  std::vector<int32_t> tgt = {9, 14, 2, 77, 31, 8, 60, 41, 42, 43, 44, 45, 46, 47};
  std::vector<uint8_t> mask(14, 1);
  double first = 0, last = 0;
  for (int step = 1; step <= 150; ++step) {
    base->params.ZeroGrads();
    last = model.ForwardBackward(in.data(), tgt.data(), mask.data(), 1.0f / 14, 0) / 14;
    if (step == 1) first = last;
    ClipGradNorm(base->params, 1.0);
    adam.Step(o, 1e-2, step);
  }
  EXPECT_GT(first, 3.0);
  EXPECT_LT(last, 0.05);
}

TEST(Training, ScheduleWarmsUpThenDecays) {
  Schedule s;
  s.lr = 1.0;
  s.warmup = 10;
  s.total = 110;
  EXPECT_DOUBLE_EQ(s.At(5), 0.5);
  EXPECT_DOUBLE_EQ(s.At(10), 1.0);
  EXPECT_NEAR(s.At(60), 0.5, 1e-12);  // cosine midpoint
  EXPECT_NEAR(s.At(110), 0.0, 1e-12);
  s.kind = "linear";
  s.min_lr_ratio = 0.1;
  EXPECT_NEAR(s.At(60), 0.55, 1e-12);
  EXPECT_NEAR(s.At(110), 0.1, 1e-12);
}

// The trainer finds a non-finite gradient through the norm (it passes over the gradients once):
// an inf or NaN anywhere, dense or in a segment, makes the norm non-finite, and the tensor is
// named.
TEST(Training, NonFiniteGradientMakesTheNormNonFiniteAndIsNamed) {
  for (float bad : {INFINITY, NAN}) {
    ParamBlock p;
    p.Add("dense", {4, 3});
    p.Add("bank", {8, 3}, /*segments=*/4);
    p.Allocate(/*with_grads=*/true);
    p.grad(0)[5] = 2.0f;
    p.SegmentGrad(1, 2)[1] = 3.0f;
    EXPECT_NEAR(GradNorm(p), std::sqrt(13.0), 1e-12);
    EXPECT_EQ(FirstNonFiniteGrad(p), "");
    p.SegmentGrad(1, 3)[4] = bad;
    EXPECT_FALSE(std::isfinite(GradNorm(p)));
    EXPECT_EQ(FirstNonFiniteGrad(p), "bank");
  }
}

}  // namespace
}  // namespace tinylora
