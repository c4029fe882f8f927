// Training against the PyTorch reference (tests/reference/make_train_fixtures.py, float64):
// loss, logits-derived gradients of every trainable tensor, and ten AdamW steps, for
// pretraining (untied and tied head) and LoRA (q/v and all seven projections).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>

#include "adapters/lora.h"
#include "formats/safetensors.h"
#include "test_util.h"
#include "train/optimizer.h"
#include "train/trainable.h"
#include "util/file.h"

namespace tinylora {
namespace {

struct Fixture {
  std::string dir;
  std::vector<int32_t> in, tgt;
  std::vector<uint8_t> mask;
  int B = 0, T = 0;
  double count = 0;
  explicit Fixture(const std::string& name) : dir(test::FixturePath("train/" + name)) {
    auto j = nlohmann::json::parse(ReadTextFile(dir + "/batch.json"));
    B = static_cast<int>(j["inputs"].size());
    T = static_cast<int>(j["inputs"][0].size());
    for (int b = 0; b < B; ++b) {
      for (int t = 0; t < T; ++t) {
        in.push_back(j["inputs"][b][t].get<int32_t>());
        tgt.push_back(j["targets"][b][t].get<int32_t>());
        mask.push_back(j["mask"][b][t].get<uint8_t>());
        count += mask.back();
      }
    }
  }
};

// Runs one forward/backward and compares loss and every gradient with the reference.
void CompareGradients(TrainModel& model, ParamBlock& params, const Fixture& fx) {
  SafetensorsFile expected(fx.dir + "/expected.safetensors");
  params.ZeroGrads();
  const double loss = model.ForwardBackward(fx.in.data(), fx.tgt.data(), fx.mask.data(),
                                            static_cast<float>(1.0 / fx.count), 0) /
                      fx.count;
  EXPECT_NEAR(loss, test::ReadF64(expected, "loss")[0], 1e-5);
  test::ExpectGradientsMatch(params, expected);
}

// Ten AdamW steps on the same batch: the loss before each step matches the reference.
void CompareSteps(TrainModel& model, ParamBlock& params, const Fixture& fx) {
  auto j = nlohmann::json::parse(ReadTextFile(fx.dir + "/steps.json"));
  const auto& o = j["optimizer"];
  AdamWOptions ao;
  ao.beta1 = o["betas"][0].get<double>();
  ao.beta2 = o["betas"][1].get<double>();
  ao.eps = o["eps"].get<double>();
  ao.weight_decay = o["weight_decay"].get<double>();
  ao.decay_vectors = true;  // torch.optim.AdamW decays every tensor
  AdamW adam(&params);
  const std::vector<double> losses = j["losses"].get<std::vector<double>>();
  const std::vector<double> norms = j["grad_norms"].get<std::vector<double>>();
  for (size_t step = 0; step < losses.size(); ++step) {
    params.ZeroGrads();
    const double loss = model.ForwardBackward(fx.in.data(), fx.tgt.data(), fx.mask.data(),
                                              static_cast<float>(1.0 / fx.count), 0) /
                        fx.count;
    EXPECT_NEAR(loss, losses[step], 1e-4 * std::max(1.0, losses[step])) << "step " << step;
    const double norm = ClipGradNorm(params, o["grad_clip"].get<double>());
    EXPECT_NEAR(norm, norms[step], 1e-4 * norms[step]) << "step " << step;
    adam.Step(ao, o["lr"].get<double>(), static_cast<int64_t>(step) + 1);
  }
}

class PretrainFixture : public ::testing::TestWithParam<std::string> {};

TEST_P(PretrainFixture, GradientsAndStepsMatchPyTorch) {
  const Fixture fx(GetParam());
  auto src = ModelWeights::Load(fx.dir);
  auto base = MakeTrainable(*src);
  TrainModel model(base->weights, &base->grads, nullptr, fx.B, fx.T, false);
  CompareGradients(model, base->params, fx);
  CompareSteps(model, base->params, fx);
}
INSTANTIATE_TEST_SUITE_P(Train, PretrainFixture, ::testing::Values("pretrain", "pretrain_tied"));

class LoraFixture : public ::testing::TestWithParam<std::string> {};

TEST_P(LoraFixture, GradientsAndStepsMatchPyTorch) {
  const Fixture fx(GetParam());
  auto base = ModelWeights::Load(fx.dir);
  auto adapter = Adapter::Load(fx.dir + "/adapter", base->config, /*with_grads=*/true);
  TrainModel model(*base, nullptr, adapter.get(), fx.B, fx.T,
                   /*checkpoint=*/GetParam() == "lora_all");
  CompareGradients(model, adapter->params(), fx);
  CompareSteps(model, adapter->params(), fx);
}
INSTANTIATE_TEST_SUITE_P(Train, LoraFixture, ::testing::Values("lora", "lora_all"));

TEST(PeftFiles, SavedAdapterRoundTripsThroughPeftNames) {
  test::TempDir tmp;
  const Fixture fx("lora_all");
  auto base = ModelWeights::Load(fx.dir);
  auto a = Adapter::Load(fx.dir + "/adapter", base->config, false);
  a->Save(tmp / "copy");
  auto b = Adapter::Load(tmp / "copy", base->config, false);
  ASSERT_EQ(a->params().total(), b->params().total());
  test::ExpectSameValues(a->params(), b->params());
  EXPECT_EQ(b->config().r, 2);
  EXPECT_DOUBLE_EQ(b->config().alpha, 6.0);
  auto cfg = nlohmann::json::parse(ReadTextFile(tmp / "copy/adapter_config.json"));
  EXPECT_EQ(cfg["peft_type"], "LORA");
  EXPECT_EQ(cfg["target_modules"].size(), 7u);
}

}  // namespace
}  // namespace tinylora
