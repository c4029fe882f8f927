// The AMX BF16 GEMM against its plain reference: the packed layout, odd shapes (tile, chunk
// and thread edges), accumulation, both packings, and MatMul / MatMulBackwardX routing a
// packed weight through it. Kernel tests skip on a CPU without AMX-BF16.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "model/weights.h"
#include "ops/gemm_bf16.h"
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

#define SKIP_WITHOUT_AMX()                       \
  do {                                           \
    if (!AmxBf16Available()) {                   \
      GTEST_SKIP() << "no AMX-BF16 on this CPU"; \
    }                                            \
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

TEST(GemmBf16, MatchesReferenceOnOddShapes) {
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
    GemmBf16(b, a.data(), s.m, c.data(), false);
    GemmBf16Reference(b, a.data(), s.m, ref.data(), false);
    ExpectNear(c, ref, bound, "overwrite");
    // Accumulate onto values already there.
    std::vector<float> c0 = Random(c.size(), 4);
    c = c0, ref = c0;
    GemmBf16(b, a.data(), s.m, c.data(), true);
    GemmBf16Reference(b, a.data(), s.m, ref.data(), true);
    ExpectNear(c, ref, bound, "accumulate");
  }
}

TEST(GemmBf16, ReferenceRoundsAToBf16) {  // guards the reference the kernel is held to
  const uint16_t w[2] = {F32ToBf16(1.0f), F32ToBf16(1.0f)};
  const PackedBf16 b = PackedBf16::Transposed(Tensor{Format::kBF16, 1, 2, w});
  const float a[2] = {1.0f + 1.0f / 512, 3.0f};  // 1 + 2^-9 rounds to 1 in BF16
  float c = 0;
  GemmBf16Reference(b, a, 1, &c, false);
  EXPECT_EQ(c, 4.0f);
}

TEST(GemmBf16, MatMulAndBackwardUseThePacking) {
  SKIP_WITHOUT_AMX();
  const int64_t T = 40, out = 48, in = 80;
  std::vector<uint16_t> w = RandomBf16(static_cast<size_t>(out * in), 5);
  PackedWeight p{PackedBf16::Transposed(Tensor{Format::kBF16, out, in, w.data()}),
                 PackedBf16::AsIs(Tensor{Format::kBF16, out, in, w.data()})};
  Tensor t{Format::kBF16, out, in, w.data()};
  std::vector<float> x = Random(static_cast<size_t>(T * in), 6), dy = Random(T * out, 7);
  // Forward: x rounded to BF16, so it differs from the f32 product and equals the BF16 one.
  std::vector<float> y(static_cast<size_t>(T * out)), y32(y.size()), yref(y.size());
  MatMul(t, x.data(), T, y32.data());
  t.packed = &p;
  MatMul(t, x.data(), T, y.data());
  GemmBf16Reference(p.forward, x.data(), T, yref.data(), false);
  double diff32 = 0, diff_ref = 0;
  for (size_t i = 0; i < y.size(); ++i) {
    diff32 = std::max(diff32, static_cast<double>(std::fabs(y[i] - y32[i])));
    diff_ref = std::max(diff_ref, static_cast<double>(std::fabs(y[i] - yref[i])));
  }
  EXPECT_LT(diff_ref, 1e-4);
  EXPECT_GT(diff32, 1e-3);  // the rounding of x is visible: this was not the f32 path
  // Backward: dx += dy · W, against the plain product on BF16-rounded dy.
  std::vector<float> dx = Random(static_cast<size_t>(T * in), 8), dx0 = dx;
  MatMulBackwardX(t, dy.data(), T, dx.data(), /*accumulate=*/true);
  for (int64_t r = 0; r < T; ++r) {
    for (int64_t i = 0; i < in; ++i) {
      double want = dx0[r * in + i];
      for (int64_t o = 0; o < out; ++o)
        want +=
            static_cast<double>(Bf16ToF32(F32ToBf16(dy[r * out + o]))) * Bf16ToF32(w[o * in + i]);
      ASSERT_NEAR(dx[r * in + i], want, 1e-4) << r << "," << i;
    }
  }
  // Few rows (decode) keep the f32 streaming kernel on the original weight.
  std::vector<float> y1(static_cast<size_t>(out)), y1ref(y1.size());
  MatMul(t, x.data(), 1, y1.data());
  t.packed = nullptr;
  MatMul(t, x.data(), 1, y1ref.data());
  EXPECT_EQ(y1, y1ref);
}

TEST(PackBf16, ASecondCallAddsOnlyTheMissingBackwardPackings) {
  SKIP_WITHOUT_AMX();
  auto w = ModelWeights::Load(test::FixturePath("forward/bf16"));
  const int64_t forward_bytes = w->PackBf16(/*backward=*/false);
  EXPECT_GT(forward_bytes, 0);
  const PackedWeight* head = w->lm_head.packed;
  ASSERT_NE(head, nullptr);
  EXPECT_TRUE(head->backward.empty());                       // eval packs only Wᵀ
  EXPECT_EQ(w->PackBf16(/*backward=*/true), forward_bytes);  // W has the same padded size here
  EXPECT_EQ(w->lm_head.packed, head);  // the forward packing is kept, not redone
  EXPECT_FALSE(head->backward.empty());
  EXPECT_FALSE(w->layers[0].w_down.packed->backward.empty());
  EXPECT_EQ(w->PackBf16(/*backward=*/true), 0);  // nothing left to pack
}

}  // namespace
}  // namespace tinylora
