// The BF16 products of --bf16 (ops/gemm_bf16.h): every kernel the CPU has (amx, avx512bf16,
// fallback) against the one plain reference — odd shapes (tile, chunk and thread edges),
// accumulation, forward and dx — and MatMul / MatMulBackwardX routing a prepared weight
// through it; the AMX packing and kernel against their packed reference; the oneDNN wrapper in
// F32 (so its layouts and accumulation are tested on every CPU). A kernel the CPU lacks is
// skipped by name.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "model/weights.h"
#include "ops/gemm.h"
#include "ops/gemm_bf16.h"
#include "ops/gemm_onednn.h"
#include "ops/matmul.h"
#include "test_util.h"
#include "util/error.h"
#include "util/half.h"

namespace tinylora {
namespace {

using test::Random;

std::vector<uint16_t> RandomBf16(size_t n, uint32_t seed) {
  std::vector<float> f = Random(n, seed);
  std::vector<uint16_t> b(n);
  for (size_t i = 0; i < n; ++i) b[i] = F32ToBf16(f[i]);
  return b;
}

#define SKIP_WITHOUT_AMX()                            \
  do {                                                \
    if (!AmxBf16Available()) {                        \
      GTEST_SKIP() << "amx: no AMX-BF16 on this CPU"; \
    }                                                 \
  } while (0)

TEST(PackedBf16, LayoutHoldsTheWeightAndZeroPadding) {
  const int64_t out = 19, in = 45;  // neither a multiple of 16 nor of 32
  std::vector<uint16_t> w = RandomBf16(static_cast<size_t>(out * in), 1);
  const Tensor t{Format::kBF16, out, in, w.data()};
  const PackedBf16 fwd = PackedBf16::Transposed(t), bwd = PackedBf16::AsIs(t);
  ASSERT_EQ(fwd.k(), in);
  ASSERT_EQ(fwd.n(), out);
  ASSERT_EQ(bwd.k(), out);
  ASSERT_EQ(bwd.n(), in);
  EXPECT_EQ(fwd.k_pad(), 64);
  EXPECT_EQ(fwd.n_pad(), 32);
  for (int64_t o = 0; o < 32; ++o) {
    for (int64_t i = 0; i < 64; ++i) {
      const uint16_t want = (o < out && i < in) ? w[static_cast<size_t>(o * in + i)] : 0;
      EXPECT_EQ(fwd.At(i, o), want) << o << "," << i;
      if (i < bwd.n_pad() && o < bwd.k_pad()) {
        EXPECT_EQ(bwd.At(o, i), want) << o << "," << i;
      }
    }
  }
  // The pair layout itself: B(2kp + j, c) sits at panel c/16, pair-row kp, slot 2(c%16) + j.
  EXPECT_EQ(fwd.data()[1 * 64 * 16 + 3 * 32 + 2 * 2 + 1], w[static_cast<size_t>(18 * in + 7)]);
}

TEST(PackedBf16, RefusesANonBf16Weight) {
  std::vector<float> w(4);
  EXPECT_THROW(PackedBf16::Transposed(Tensor{Format::kF32, 2, 2, w.data()}), Error);
}

// |c - ref| within f32 summation error of Σ|a·b| for every element.
void ExpectNear(const std::vector<float>& c, const std::vector<float>& ref,
                const std::vector<float>& bound, const char* what) {
  for (size_t i = 0; i < c.size(); ++i) {
    ASSERT_NEAR(c[i], ref[i], 1e-5 * bound[i] + 1e-30) << what << " at " << i;
  }
}

struct Shape {
  int64_t m, n, k;
};

double MaxDiff(const std::vector<float>& a, const std::vector<float>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i)
    m = std::max(m, static_cast<double>(std::fabs(a[i] - b[i])));
  return m;
}

TEST(GemmAmx, MatchesItsPackedReferenceOnOddShapes) {
  SKIP_WITHOUT_AMX();
  // Tile edges (m, n, k off 16/32), two K chunks (k > 2048), several M chunks (m > 256),
  // both at once, one row, and fewer columns than one block per thread.
  const Shape shapes[] = {{1, 16, 32},   {37, 50, 70},    {64, 96, 2100},
                          {300, 33, 64}, {290, 40, 2090}, {5, 8, 2}};
  for (const Shape& s : shapes) {
    SCOPED_TRACE(testing::Message() << "m=" << s.m << " n=" << s.n << " k=" << s.k);
    std::vector<uint16_t> w = RandomBf16(static_cast<size_t>(s.n * s.k), 2);
    const PackedBf16 b = PackedBf16::Transposed(Tensor{Format::kBF16, s.n, s.k, w.data()});
    std::vector<float> a = Random(static_cast<size_t>(s.m * s.k), 3);
    std::vector<float> c(static_cast<size_t>(s.m * s.n)), ref(c.size()), bound(c.size());
    for (int64_t i = 0; i < s.m; ++i) {
      for (int64_t j = 0; j < s.n; ++j) {
        double sum = 0;
        for (int64_t kk = 0; kk < s.k; ++kk)
          sum += std::fabs(a[i * s.k + kk] * Bf16ToF32(w[j * s.k + kk]));
        bound[i * s.n + j] = static_cast<float>(sum) + 1.0f;  // + the accumulated c below
      }
    }
    GemmAmx(b, a.data(), s.m, c.data(), false);
    GemmAmxReference(b, a.data(), s.m, ref.data(), false);
    ExpectNear(c, ref, bound, "overwrite");
    // Accumulate onto values already there.
    std::vector<float> c0 = Random(c.size(), 4);
    c = c0, ref = c0;
    GemmAmx(b, a.data(), s.m, c.data(), true);
    GemmAmxReference(b, a.data(), s.m, ref.data(), true);
    ExpectNear(c, ref, bound, "accumulate");
  }
}

TEST(GemmAmx, ReferenceRoundsAToBf16) {  // guards the reference the kernel is held to
  const uint16_t w[2] = {F32ToBf16(1.0f), F32ToBf16(1.0f)};
  const PackedBf16 b = PackedBf16::Transposed(Tensor{Format::kBF16, 1, 2, w});
  const float a[2] = {1.0f + 1.0f / 512, 3.0f};  // 1 + 2^-9 rounds to 1 in BF16
  float c = 0;
  GemmAmxReference(b, a, 1, &c, false);
  EXPECT_EQ(c, 4.0f);
}

// Σ|a·b| per element of a (m, k) · bᵀ with b (n, k) BF16, plus `extra`: the scale of f32
// summation error.
std::vector<float> Bound(const std::vector<float>& a, const std::vector<uint16_t>& b, int64_t m,
                         int64_t n, int64_t k, bool b_transposed, float extra) {
  std::vector<float> bound(static_cast<size_t>(m * n));
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double sum = extra;
      for (int64_t kk = 0; kk < k; ++kk) {
        const uint16_t w = b_transposed ? b[j * k + kk] : b[kk * n + j];
        sum += std::fabs(a[i * k + kk] * Bf16ToF32(w));
      }
      bound[i * n + j] = static_cast<float>(sum);
    }
  }
  return bound;
}

class OnKernel : public testing::TestWithParam<Bf16Kernel> {
 protected:
  void SetUp() override {
    if (!Bf16KernelAvailable(GetParam())) {
      GTEST_SKIP() << Bf16KernelName(GetParam()) << ": this CPU (or kernel) lacks it";
    }
  }
};

TEST_P(OnKernel, ForwardAndDxMatchTheReferenceOnOddShapes) {
  const Shape shapes[] = {{9, 16, 32},   {37, 50, 70},    {64, 96, 2100},
                          {300, 33, 64}, {290, 40, 2090}, {12, 8, 2}};
  for (const Shape& s : shapes) {
    SCOPED_TRACE(testing::Message() << "m=" << s.m << " n=" << s.n << " k=" << s.k);
    // W (n, k): the forward is (m, k) · Wᵀ, dx is (m, n) · W.
    std::vector<uint16_t> w = RandomBf16(static_cast<size_t>(s.n * s.k), 2);
    const Tensor t{Format::kBF16, s.n, s.k, w.data()};
    const Bf16Weight b(GetParam(), t, /*backward=*/true);
    std::vector<float> x = Random(static_cast<size_t>(s.m * s.k), 3);
    std::vector<float> y(static_cast<size_t>(s.m * s.n)), ref(y.size());
    b.Forward(x.data(), s.m, y.data());
    Bf16MatMulReference(t, x.data(), s.m, ref.data());
    ExpectNear(y, ref, Bound(x, w, s.m, s.n, s.k, true, 0), "forward");
    std::vector<float> dy = Random(static_cast<size_t>(s.m * s.n), 4);
    const std::vector<float> bound = Bound(dy, w, s.m, s.k, s.n, false, 1);
    std::vector<float> dx(static_cast<size_t>(s.m * s.k)), dref(dx.size());
    b.BackwardX(dy.data(), s.m, dx.data(), false);
    Bf16MatMulBackwardXReference(t, dy.data(), s.m, dref.data(), false);
    ExpectNear(dx, dref, bound, "dx");
    dx = Random(dx.size(), 5), dref = dx;  // accumulate onto values already there
    b.BackwardX(dy.data(), s.m, dx.data(), true);
    Bf16MatMulBackwardXReference(t, dy.data(), s.m, dref.data(), true);
    ExpectNear(dx, dref, bound, "dx accumulated");
  }
}

TEST_P(OnKernel, MatMulAndBackwardRouteThroughThePreparedWeight) {
  const int64_t T = 40, out = 48, in = 80;
  std::vector<uint16_t> w = RandomBf16(static_cast<size_t>(out * in), 5);
  Tensor t{Format::kBF16, out, in, w.data()};
  const Bf16Weight p(GetParam(), t, /*backward=*/false);
  std::vector<float> x = Random(static_cast<size_t>(T * in), 6), dy = Random(T * out, 7);
  // Forward: x rounded to BF16, so it differs from the f32 product and equals the BF16 one.
  std::vector<float> y(static_cast<size_t>(T * out)), y32(y.size()), yref(y.size());
  MatMul(t, x.data(), T, y32.data());
  t.bf16_compute = &p;
  MatMul(t, x.data(), T, y.data());
  Bf16MatMulReference(t, x.data(), T, yref.data());
  double diff32 = 0, diff_ref = 0;
  for (size_t i = 0; i < y.size(); ++i) {
    diff32 = std::max(diff32, static_cast<double>(std::fabs(y[i] - y32[i])));
    diff_ref = std::max(diff_ref, static_cast<double>(std::fabs(y[i] - yref[i])));
  }
  EXPECT_LT(diff_ref, 1e-4);
  EXPECT_GT(diff32, 1e-3);  // the rounding of x is visible: this was not the f32 path
  // dx without a backward preparation stays on the f32 path; with it, BF16.
  std::vector<float> dx(static_cast<size_t>(T * in)), dx32(dx.size()), dref(dx.size());
  MatMulBackwardX(t, dy.data(), T, dx.data(), false);
  MatMulBackwardXReference(t, dy.data(), T, dx32.data(), false);
  EXPECT_LT(MaxDiff(dx, dx32), 1e-4);
  Bf16Weight q(GetParam(), t, /*backward=*/true);
  t.bf16_compute = &q;
  MatMulBackwardX(t, dy.data(), T, dx.data(), false);
  Bf16MatMulBackwardXReference(t, dy.data(), T, dref.data(), false);
  EXPECT_LT(MaxDiff(dx, dref), 1e-4);
  EXPECT_GT(MaxDiff(dx, dx32), 1e-3);
  // Few rows (decode) keep the f32 streaming kernel on the original weight.
  std::vector<float> y1(static_cast<size_t>(out)), y1ref(y1.size());
  MatMul(t, x.data(), 1, y1.data());
  t.bf16_compute = nullptr;
  MatMul(t, x.data(), 1, y1ref.data());
  EXPECT_EQ(y1, y1ref);
}

INSTANTIATE_TEST_SUITE_P(Bf16, OnKernel, testing::ValuesIn(kBf16Kernels),
                         [](const testing::TestParamInfo<Bf16Kernel>& i) {
                           return std::string(Bf16KernelName(i.param));
                         });

TEST(Bf16Weight, RefusesANonBf16Weight) {
  std::vector<float> w(4);
  EXPECT_THROW(Bf16Weight(Bf16Kernel::kFallback, Tensor{Format::kF32, 2, 2, w.data()}, false),
               Error);
}

TEST(Bf16Kernel, TheBestAvailableIsInUseAndTheFallbackIsEverywhere) {
  EXPECT_TRUE(Bf16KernelAvailable(Bf16Kernel::kFallback));
  if (std::getenv("TINYLORA_BF16_KERNEL") == nullptr) {
    EXPECT_EQ(Bf16KernelInUse(), BestBf16Kernel());
  }
  EXPECT_EQ(BestBf16Kernel() == Bf16Kernel::kAmx, AmxBf16Available());
}

// The oneDNN wrapper on F32 (oneDNN has F32 on every x86 CPU): layouts, accumulation, shapes.
TEST(Onednn, F32MatMulMatchesSgemmInBothLayoutsAndAccumulates) {
  for (const Shape& s : {Shape{1, 7, 5}, Shape{37, 50, 70}, Shape{300, 33, 129}}) {
    SCOPED_TRACE(testing::Message() << "m=" << s.m << " n=" << s.n << " k=" << s.k);
    std::vector<float> a = Random(static_cast<size_t>(s.m * s.k), 1);
    std::vector<float> w = Random(static_cast<size_t>(s.n * s.k), 2);  // (n, k) or (k, n)
    for (bool transposed : {true, false}) {
      std::vector<float> c = Random(static_cast<size_t>(s.m * s.n), 3), ref = c;
      for (bool accumulate : {false, true}) {
        OnednnMatMul(OnednnType::kF32, a.data(), w.data(), transposed, s.m, s.n, s.k, c.data(),
                     accumulate);
        GemmReference(false, transposed, s.m, s.n, s.k, 1.0f, a.data(), s.k, w.data(),
                      transposed ? s.k : s.n, accumulate ? 1.0f : 0.0f, ref.data(), s.n);
        EXPECT_LT(MaxDiff(c, ref), 1e-4) << transposed << accumulate;
      }
    }
  }
}

TEST(PrepareBf16, ASecondCallAddsOnlyTheMissingBackward) {
  auto w = ModelWeights::Load(test::FixturePath("forward/bf16"));
  const Bf16Kernel k = Bf16KernelInUse();
  const int64_t forward_bytes = w->PrepareBf16(/*backward=*/false);
  const Bf16Weight* head = w->lm_head.bf16_compute;
  ASSERT_NE(head, nullptr);
  EXPECT_EQ(head->kernel(), k);
  EXPECT_FALSE(head->has_backward());  // eval prepares only the forward
  // AMX packs W a second time (here of the same padded size); the others' one copy serves both.
  EXPECT_EQ(w->PrepareBf16(/*backward=*/true), k == Bf16Kernel::kAmx ? forward_bytes : 0);
  EXPECT_EQ(w->lm_head.bf16_compute, head);  // the forward preparation is kept, not redone
  EXPECT_TRUE(head->has_backward());
  EXPECT_TRUE(w->layers[0].w_down.bf16_compute->has_backward());
  EXPECT_EQ(w->PrepareBf16(/*backward=*/true), 0);  // nothing left to add
  if (k == Bf16Kernel::kFallback) {                 // an F32 copy of every BF16 matrix
    EXPECT_EQ(forward_bytes, 2 * w->MatrixBytes());
  }
}

}  // namespace
}  // namespace tinylora
