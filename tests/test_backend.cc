// The backend seam: a whole forward (a forest of adapters over a ragged batch) and whole
// training steps (pretraining with clipping and AdamW; LoRA and tree adapters with dropout,
// hard and soft routing) run on the reference backend, the ops' plain references, and agree
// with the CPU backend's fast kernels. So everything the model and training compute goes
// through the op table, and a new backend can be checked the same way.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>

#include "adapters/lora.h"
#include "backend/backend.h"
#include "model/llama.h"
#include "test_util.h"
#include "train/optimizer.h"
#include "train/train_model.h"
#include "train/trainable.h"
#include "util/error.h"

namespace tinylora {
namespace {

// Largest |a − b| over the largest |b|; and whether any element differs at all.
struct Agreement {
  double rel = 0;
  bool any_bit_differs = false;
};
Agreement Compare(const float* a, const float* b, int64_t n) {
  double diff = 0, mag = 0;
  Agreement out;
  for (int64_t i = 0; i < n; ++i) {
    diff = std::max(diff, std::fabs(double{a[i]} - b[i]));
    mag = std::max(mag, std::fabs(double{b[i]}));
    out.any_bit_differs |= a[i] != b[i];
  }
  out.rel = mag > 0 ? diff / mag : diff;
  return out;
}

std::unique_ptr<Adapter> RandomAdapter(const LlamaConfig& c, int depth, double dropout) {
  AdapterConfig ac;
  ac.r = 3;
  ac.alpha = 6;
  ac.tree_depth = depth;
  ac.dropout = dropout;
  ac.targets = ParseTargets("all-linear", "test");
  auto a = Adapter::Create(c, ac, 31, /*with_grads=*/true);
  std::mt19937 rng(32);
  std::normal_distribution<float> nd(0.0f, 0.3f);
  for (int i = 0; i < a->params().size(); ++i)  // B (and routers) non-zero
    if (a->params().name(i).find("lora_A") == std::string::npos)
      for (int64_t k = 0; k < a->params().numel(i); ++k) a->params().value(i)[k] = nd(rng);
  return a;
}

TEST(ReferenceBackend, ForwardOfAForestMatchesTheCpu) {
  auto base = ModelWeights::Load(test::FixturePath("forward/gqa"));
  auto lora = RandomAdapter(base->config, 0, 0), tree = RandomAdapter(base->config, 2, 0);
  const std::vector<const Adapter*> forest = {nullptr, lora.get(), tree.get()};
  std::vector<float> logits[2];
  for (int invariant = 0; invariant < 2; ++invariant) {
    for (int which = 0; which < 2; ++which) {
      LlamaModel model(*base, forest, which == 0 ? CpuBackend() : ReferenceBackend());
      model.SetBatchInvariant(invariant == 1);
      KvCache cache(model.config(), 3, 16);
      // Two forwards: prompts of 9, 1 and 5 tokens, then one token each (decode over the cache).
      const int lengths[3] = {9, 1, 5};
      logits[which].clear();
      for (int step = 0; step < 2; ++step) {
        Batch b;
        for (int s = 0; s < 3; ++s) {
          const int n = step == 0 ? lengths[s] : 1, p0 = step == 0 ? 0 : lengths[s];
          for (int i = 0; i < n; ++i) b.Add((7 * s + 3 * (p0 + i)) % 90 + 1, s, p0 + i, true, s);
        }
        std::vector<float> out;
        model.Forward(b, cache, &out);
        logits[which].insert(logits[which].end(), out.begin(), out.end());
      }
    }
    ASSERT_EQ(logits[0].size(), logits[1].size());
    const Agreement a =
        Compare(logits[0].data(), logits[1].data(), static_cast<int64_t>(logits[0].size()));
    EXPECT_LT(a.rel, 1e-5) << "invariant " << invariant;
    EXPECT_TRUE(a.any_bit_differs) << "the reference ran the CPU's kernels";
  }
}

struct StepBatch {
  std::vector<int32_t> in, tgt;
  std::vector<uint8_t> mask;
};
StepBatch MakeStepBatch(int B, int T, int vocab) {
  StepBatch s;
  std::mt19937 rng(5);
  for (int i = 0; i < B * T; ++i) {
    s.in.push_back(static_cast<int32_t>(rng() % static_cast<uint32_t>(vocab)));
    s.tgt.push_back(static_cast<int32_t>(rng() % static_cast<uint32_t>(vocab)));
    s.mask.push_back(i % 5 == 0 ? 0 : 1);
  }
  return s;
}

// Every gradient of the two parameter sets agrees to within `tol` of its largest value.
void ExpectGradientsAgree(const ParamBlock& cpu, const ParamBlock& ref, double tol) {
  ASSERT_EQ(cpu.size(), ref.size());
  bool any_nonzero = false;
  for (int i = 0; i < cpu.size(); ++i) {
    const std::vector<float> a = cpu.DenseGrad(i), b = ref.DenseGrad(i);
    EXPECT_LT(Compare(a.data(), b.data(), cpu.numel(i)).rel, tol) << cpu.name(i);
    for (float g : b) any_nonzero |= g != 0;
  }
  EXPECT_TRUE(any_nonzero);
}

TEST(ReferenceBackend, PretrainingStepMatchesTheCpu) {
  for (const char* name : {"gqa", "tied"}) {
    SCOPED_TRACE(name);
    auto src = ModelWeights::Load(test::FixturePath(std::string("forward/") + name));
    auto cpu = MakeTrainable(*src), ref = MakeTrainable(*src);
    const StepBatch s = MakeStepBatch(2, 9, src->config.vocab);
    for (bool checkpoint : {false, true}) {
      TrainModel a(cpu->weights, &cpu->grads, nullptr, 2, 9, checkpoint, false, CpuBackend());
      TrainModel b(ref->weights, &ref->grads, nullptr, 2, 9, checkpoint, false, ReferenceBackend());
      const double la = a.ForwardBackward(s.in.data(), s.tgt.data(), s.mask.data(), 0.1f, 0);
      const double lb = b.ForwardBackward(s.in.data(), s.tgt.data(), s.mask.data(), 0.1f, 0);
      EXPECT_NEAR(la, lb, 1e-5 * std::fabs(lb));
      EXPECT_NEAR(a.ForwardLoss(s.in.data(), s.tgt.data(), s.mask.data()),
                  b.ForwardLoss(s.in.data(), s.tgt.data(), s.mask.data()), 1e-5 * std::fabs(lb));
    }
    ExpectGradientsAgree(cpu->params, ref->params, 1e-4);
    // The rest of the step: clipping and AdamW, each on its backend.
    const double na = ClipGradNorm(cpu->params, 0.5, CpuBackend().ops());
    const double nb = ClipGradNorm(ref->params, 0.5, ReferenceBackend().ops());
    EXPECT_NEAR(na, nb, 1e-4 * nb);
    AdamW opt_a(&cpu->params, CpuBackend()), opt_b(&ref->params, ReferenceBackend());
    opt_a.Step(AdamWOptions{}, 1e-3, 1);
    opt_b.Step(AdamWOptions{}, 1e-3, 1);
    for (int i = 0; i < cpu->params.size(); ++i) {
      EXPECT_LT(Compare(cpu->params.value(i), ref->params.value(i), cpu->params.numel(i)).rel, 1e-4)
          << cpu->params.name(i);
    }
  }
}

TEST(ReferenceBackend, AdapterStepsMatchTheCpu) {
  auto base = ModelWeights::Load(test::FixturePath("forward/gqa"));
  const StepBatch s = MakeStepBatch(2, 9, base->config.vocab);
  struct Case {
    int depth;
    bool soft;
    double dropout;
  };
  for (const Case& c : {Case{0, false, 0.1}, Case{2, false, 0.1}, Case{2, true, 0.0}}) {
    SCOPED_TRACE("depth " + std::to_string(c.depth) + (c.soft ? " soft" : " hard"));
    auto cpu = RandomAdapter(base->config, c.depth, c.dropout);
    auto ref = RandomAdapter(base->config, c.depth, c.dropout);
    TrainModel a(*base, nullptr, cpu.get(), 2, 9, false, c.soft, CpuBackend());
    TrainModel b(*base, nullptr, ref.get(), 2, 9, false, c.soft, ReferenceBackend());
    const AuxLoss aux{0.01, 0.02, 1};
    if (c.depth > 0) a.SetRouting(c.soft, aux), b.SetRouting(c.soft, aux);
    const double la = a.ForwardBackward(s.in.data(), s.tgt.data(), s.mask.data(), 0.1f, 77);
    const double lb = b.ForwardBackward(s.in.data(), s.tgt.data(), s.mask.data(), 0.1f, 77);
    EXPECT_NEAR(la, lb, 1e-5 * std::fabs(lb));
    EXPECT_NEAR(a.last_aux_loss(), b.last_aux_loss(), 1e-6);
    ExpectGradientsAgree(cpu->params(), ref->params(), 1e-4);
  }
}

TEST(Backends, AreNamedAndGiveZeroedAlignedHostBuffers) {
  EXPECT_STREQ(BackendNamed("cpu").name(), "cpu");
  EXPECT_STREQ(BackendNamed("reference").name(), "reference");
  EXPECT_THROW(BackendNamed("cuda"), Error);
  for (const Backend* b : {&CpuBackend(), &ReferenceBackend()}) {
    EXPECT_EQ(b->memory(), Memory::kHost);
    Buffer buf = b->Alloc(37);
    ASSERT_NE(buf.data(), nullptr);
    EXPECT_EQ(buf.size(), 37);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(buf.data()) % 64, 0u);
    for (int i = 0; i < 37; ++i) EXPECT_EQ(buf.data()[i], 0.0f);
    Buffer moved = std::move(buf);
    EXPECT_EQ(buf.data(), nullptr);
    EXPECT_EQ(moved.size(), 37);
  }
}

}  // namespace
}  // namespace tinylora
