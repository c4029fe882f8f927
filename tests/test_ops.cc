// Every kernel against its plain reference: matmul (both paths, F32 and BF16, every compiled
// SIMD target, odd sizes, misaligned rows), attention, and the 16-bit float conversions.
#include <gtest/gtest.h>
#include <hwy/targets.h>

#include <cmath>
#include <random>
#include <vector>

#include "ops/attention.h"
#include "ops/gemm.h"
#include "ops/lora_rows.h"
#include "ops/matmul.h"
#include "ops/ops.h"
#include "test_util.h"
#include "util/half.h"

namespace tinylora {
namespace {

using test::ForEachTarget;
using test::Random;

float MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  float m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

struct MatCase {
  int64_t T, out, in;
};
const MatCase kMatCases[] = {{1, 1, 1},   {1, 17, 33},  {3, 40, 64},   {4, 31, 100}, {5, 64, 257},
                             {8, 33, 16}, {9, 70, 130}, {33, 65, 129}, {64, 300, 96}};

void CheckMatMul(Format dtype, int64_t misalign) {
  for (const MatCase& mc : kMatCases) {
    std::vector<float> wf = Random(static_cast<size_t>(mc.out * mc.in + misalign), 1, 0.5f);
    std::vector<uint16_t> wb(wf.size());  // BF16 from the values; F16 bits with exponents ±5
    for (size_t i = 0; i < wf.size(); ++i) {
      wb[i] = dtype == Format::kF16
                  ? static_cast<uint16_t>(((i * 2654435761u) & 0x83ffu) | ((10 + i % 11) << 10))
                  : F32ToBf16(wf[i]);
    }
    std::vector<float> x = Random(static_cast<size_t>(mc.T * mc.in), 2);
    Tensor w{dtype, mc.out, mc.in,
             dtype == Format::kF32 ? static_cast<const void*>(wf.data() + misalign)
                                   : static_cast<const void*>(wb.data() + misalign)};
    std::vector<float> y(static_cast<size_t>(mc.T * mc.out)), ref(y.size()), rows(y.size());
    MatMul(w, x.data(), mc.T, y.data());
    MatMulReference(w, x.data(), mc.T, ref.data());
    MatVecRows(w, x.data(), mc.T, 0, mc.out, rows.data());
    const float tol = 1e-5f * std::sqrt(static_cast<float>(mc.in)) * 4;
    EXPECT_LT(MaxAbsDiff(y, ref), tol) << "T=" << mc.T << " out=" << mc.out << " in=" << mc.in;
    EXPECT_LT(MaxAbsDiff(rows, ref), tol) << "T=" << mc.T << " out=" << mc.out << " in=" << mc.in;
  }
}

TEST(MatMul, F32MatchesReferenceOnEveryTarget) {
  ForEachTarget([] { CheckMatMul(Format::kF32, 0); });
}
TEST(MatMul, Bf16MatchesReferenceOnEveryTarget) {
  ForEachTarget([] { CheckMatMul(Format::kBF16, 0); });
}
TEST(MatMul, F16MatchesReferenceOnEveryTarget) {
  ForEachTarget([] { CheckMatMul(Format::kF16, 0); });
}
TEST(MatMul, MisalignedWeights) {
  CheckMatMul(Format::kF32, 1);
  CheckMatMul(Format::kBF16, 3);
  CheckMatMul(Format::kF16, 5);
}

TEST(MatMul, ReferenceIsAPlainProduct) {  // guards the reference itself
  const float w[] = {1, 2, 3, 4, 5, 6};   // (2, 3)
  const float x[] = {1, 0, -1};           // (1, 3)
  float y[2];
  MatMulReference(Tensor{Format::kF32, 2, 3, w}, x, 1, y);
  EXPECT_FLOAT_EQ(y[0], -2.0f);
  EXPECT_FLOAT_EQ(y[1], -2.0f);
}

TEST(Gemm, EveryTransposeMatchesReference) {
  // odd sizes, row strides wider than the rows, overwrite (over NaN) and accumulate
  const int64_t M = 7, N = 13, K = 19, pad = 3;
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb)
      for (float beta : {0.0f, 1.0f}) {
        const int64_t lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
        std::vector<float> a = Random(static_cast<size_t>((ta ? K : M) * lda), 1);
        std::vector<float> b = Random(static_cast<size_t>((tb ? N : K) * ldb), 2);
        std::vector<float> c = Random(static_cast<size_t>(M * ldc), 3);
        if (beta == 0.0f) c[0] = NAN;
        std::vector<float> ref = c;
        Gemm(ta, tb, M, N, K, 0.5f, a.data(), lda, b.data(), ldb, beta, c.data(), ldc);
        GemmReference(ta, tb, M, N, K, 0.5f, a.data(), lda, b.data(), ldb, beta, ref.data(), ldc);
        EXPECT_LT(MaxAbsDiff(c, ref), 1e-5f) << "ta=" << ta << " tb=" << tb << " beta=" << beta;
      }
}

TEST(Gemm, ReferenceIsAPlainProduct) {  // [1 2; 3 4] · [5 6; 7 8]ᵀ = [17 23; 39 53]
  const float a[] = {1, 2, 3, 4}, b[] = {5, 6, 7, 8};
  float c[] = {1, 1, 1, 1};
  GemmReference(false, true, 2, 2, 2, 1.0f, a, 2, b, 2, 1.0f, c, 2);
  EXPECT_EQ(c[0], 18);
  EXPECT_EQ(c[1], 24);
  EXPECT_EQ(c[2], 40);
  EXPECT_EQ(c[3], 54);
}

TEST(LoraRows, MixedAdaptersAndLeavesMatchReferenceAndEachRowAlone) {
  // Two adapters (ranks 4 and 8, the second with 3 leaves) and rows without any, interleaved.
  const int64_t in = 67, out = 45, T = 40;
  std::vector<float> a1 = Random(4 * in, 1), b1 = Random(out * 4, 2);
  std::vector<float> a2 = Random(3 * 8 * in, 3), b2 = Random(3 * out * 8, 4);
  std::vector<LoraRow> rows(T);
  for (int64_t t = 0; t < T; ++t) {
    if (t % 5 == 0) continue;  // no adapter
    if (t % 2 == 0) {
      rows[t] = {a1.data(), b1.data(), 4, 0.5f};
    } else {
      const int64_t j = t % 3;
      rows[t] = {a2.data() + j * 8 * in, b2.data() + j * out * 8, 8, 0.25f + 0.01f * t};
    }
  }
  rows[0] = {};
  const std::vector<float> x = Random(T * in, 5), y0 = Random(T * out, 6);
  std::vector<float> y = y0, ref = y0;
  ForEachTarget([&] {
    y = y0;
    LoraRowsForward(rows.data(), T, in, out, x.data(), y.data());
    ref = y0;
    LoraRowsForwardReference(rows.data(), T, in, out, x.data(), ref.data());
    EXPECT_LT(MaxAbsDiff(y, ref), 1e-4f);
    for (int64_t t = 0; t < T; t += 7) {  // a row alone gives the same bits as in the batch
      std::vector<float> one(y0.begin() + t * out, y0.begin() + (t + 1) * out);
      LoraRowsForward(&rows[t], 1, in, out, x.data() + t * in, one.data());
      for (int64_t o = 0; o < out; ++o) ASSERT_EQ(one[o], y[t * out + o]) << t;
    }
  });
  for (int64_t o = 0; o < out; ++o) EXPECT_EQ(y[o], y0[o]);  // row 0 has no adapter
}

TEST(GatherRows, F32AndBf16RowsAsF32) {
  const int64_t V = 5, C = 19;
  const std::vector<float> f = Random(V * C, 7);
  std::vector<uint16_t> b(f.size());
  for (size_t i = 0; i < f.size(); ++i) b[i] = F32ToBf16(f[i]);
  const int32_t ids[] = {3, 0, 3, 4};
  std::vector<float> out(4 * C);
  GatherRows(Tensor{Format::kF32, V, C, f.data()}, ids, 4, out.data());
  for (int t = 0; t < 4; ++t)
    for (int64_t i = 0; i < C; ++i) ASSERT_EQ(out[t * C + i], f[ids[t] * C + i]);
  GatherRows(Tensor{Format::kBF16, V, C, b.data()}, ids, 4, out.data());
  for (int t = 0; t < 4; ++t)
    for (int64_t i = 0; i < C; ++i) ASSERT_EQ(out[t * C + i], Bf16ToF32(b[ids[t] * C + i]));
}

TEST(WidenBf16, EveryTargetIsExact) {
  std::vector<uint16_t> src(1000);
  for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<uint16_t>(i * 65u + 7u) & 0x7f7f;
  ForEachTarget([&] {
    std::vector<float> dst(src.size());
    WidenBf16(src.data(), static_cast<int64_t>(src.size()), dst.data());
    for (size_t i = 0; i < src.size(); ++i) ASSERT_EQ(dst[i], Bf16ToF32(src[i])) << i;
  });
}

struct AttnCase {
  int nh, kvh, hd;
  int64_t n, p0;
};

TEST(Attention, MatchesReference) {
  const AttnCase cases[] = {{4, 2, 8, 1, 0},  {4, 2, 8, 7, 0},   {4, 4, 16, 5, 3},
                            {6, 1, 6, 1, 12}, {8, 2, 32, 40, 9}, {4, 2, 16, 150, 7}};
  for (const AttnCase& ac : cases) {
    const AttentionShape s{ac.nh, ac.kvh, ac.hd};
    const int64_t len = ac.p0 + ac.n, ldq = ac.nh * ac.hd, ldkv = ac.kvh * ac.hd;
    std::vector<float> q = Random(static_cast<size_t>(ac.n * ldq), 3);
    std::vector<float> k = Random(static_cast<size_t>(len * ldkv), 4);
    std::vector<float> v = Random(static_cast<size_t>(len * ldkv), 5);
    std::vector<float> out(q.size()), ref(q.size()), scratch(static_cast<size_t>(ac.n * len));
    for (int h = 0; h < ac.nh; ++h) {
      AttentionHead(s, h, q.data(), ldq, k.data(), v.data(), ldkv, ac.n, ac.p0, out.data(), ldq,
                    scratch.data());
    }
    AttentionReference(s, q.data(), ldq, k.data(), v.data(), ldkv, ac.n, ac.p0, ref.data(), ldq);
    EXPECT_LT(MaxAbsDiff(out, ref), 1e-5f) << "nh=" << ac.nh << " n=" << ac.n << " p0=" << ac.p0;
  }
}

TEST(Attention, GroupDecodeMatchesReference) {
  for (const AttentionShape s :
       {AttentionShape{8, 2, 16}, AttentionShape{4, 4, 8}, AttentionShape{6, 1, 6}}) {
    for (int64_t p0 : {0, 1, 37}) {
      const int64_t ldq = s.n_heads * s.head_dim, ldkv = s.n_kv_heads * s.head_dim, len = p0 + 1;
      std::vector<float> q = Random(static_cast<size_t>(ldq), 31),
                         k = Random(static_cast<size_t>(len * ldkv), 32);
      std::vector<float> v = Random(static_cast<size_t>(len * ldkv), 33), out(q.size()),
                         ref(q.size());
      std::vector<float> scratch(static_cast<size_t>(s.n_heads / s.n_kv_heads * len));
      for (int g = 0; g < s.n_kv_heads; ++g) {
        AttentionGroupDecode(s, g, q.data(), k.data(), v.data(), ldkv, p0, out.data(),
                             scratch.data());
      }
      AttentionReference(s, q.data(), ldq, k.data(), v.data(), ldkv, 1, p0, ref.data(), ldq);
      EXPECT_LT(MaxAbsDiff(out, ref), 1e-5f) << "heads " << s.n_heads << " p0 " << p0;
    }
  }
}

// Batch invariance: a row's product is the same bits whatever T, its place in the batch, the
// tiles that computed it (4-row groups or leftovers) and the SIMD target's vector tail.
TEST(MatMul, BatchInvariantRowsDoNotDependOnTheBatch) {
  for (Format dtype : {Format::kF32, Format::kBF16}) {
    const int64_t out = 37, in = 133;
    std::vector<float> wf = Random(static_cast<size_t>(out * in), 1, 0.5f);
    std::vector<uint16_t> wb(wf.size());
    for (size_t i = 0; i < wf.size(); ++i) wb[i] = F32ToBf16(wf[i]);
    Tensor w{dtype, out, in,
             dtype == Format::kBF16 ? static_cast<const void*>(wb.data())
                                    : static_cast<const void*>(wf.data())};
    const int64_t T = 23;
    const std::vector<float> x = Random(static_cast<size_t>(T * in), 2);
    ForEachTarget([&] {
      std::vector<float> all(static_cast<size_t>(T * out)), ref(all.size());
      MatMulBatchInvariant(w, x.data(), T, all.data());
      MatMulReference(w, x.data(), T, ref.data());
      EXPECT_LT(MaxAbsDiff(all, ref), 1e-4f);
      for (int64_t first : {0, 5, 19}) {
        for (int64_t n : {1, 3, 4}) {
          if (first + n > T) continue;
          std::vector<float> part(static_cast<size_t>(n * out));
          MatMulBatchInvariant(w, x.data() + first * in, n, part.data());
          for (int64_t i = 0; i < n * out; ++i)
            ASSERT_EQ(part[i], all[first * out + i]) << "rows " << first << "+" << n;
        }
      }
    });
  }
}

TEST(Attention, BatchInvariantMatchesReferenceInAnyChunks) {
  const AttentionShape s{4, 2, 16};
  const int64_t P = 21, ldq = s.n_heads * s.head_dim, ldkv = s.n_kv_heads * s.head_dim;
  const std::vector<float> q = Random(P * ldq, 1), k = Random(P * ldkv, 2), v = Random(P * ldkv, 3);
  std::vector<float> whole(P * ldq), ref(P * ldq), scratch(P);
  ForEachTarget([&] {
    for (int g = 0; g < s.n_kv_heads; ++g)
      AttentionGroupInvariant(s, g, q.data(), ldq, k.data(), v.data(), ldkv, P, 0, whole.data(),
                              ldq, scratch.data());
    AttentionReference(s, q.data(), ldq, k.data(), v.data(), ldkv, P, 0, ref.data(), ldq);
    EXPECT_LT(MaxAbsDiff(whole, ref), 1e-5f);
    // The same queries cut into runs of 1, 7 and 13: the same bits.
    std::vector<float> chunked(P * ldq);
    for (int64_t p0 : {int64_t{0}, int64_t{1}, int64_t{8}}) {
      const int64_t n = p0 == 0 ? 1 : p0 == 1 ? 7 : 13;
      for (int g = 0; g < s.n_kv_heads; ++g)
        AttentionGroupInvariant(s, g, q.data() + p0 * ldq, ldq, k.data(), v.data(), ldkv, n, p0,
                                chunked.data() + p0 * ldq, ldq, scratch.data());
    }
    for (size_t i = 0; i < whole.size(); ++i) ASSERT_EQ(chunked[i], whole[i]) << i;
  });
}

TEST(Attention, FirstTokenCopiesItsValue) {  // one visible key: output = that value, any query
  const AttentionShape s{2, 1, 4};
  std::vector<float> q = Random(8, 6), k = Random(4, 7), v = Random(4, 8), out(8), scratch(1);
  for (int h = 0; h < 2; ++h)
    AttentionHead(s, h, q.data(), 8, k.data(), v.data(), 4, 1, 0, out.data(), 8, scratch.data());
  for (int i = 0; i < 8; ++i)
    EXPECT_FLOAT_EQ(out[static_cast<size_t>(i)], v[static_cast<size_t>(i % 4)]);
}

TEST(RmsNorm, UnitRmsTimesWeight) {
  std::vector<float> x = Random(3 * 10, 9), w = Random(10, 10), y(x.size());
  RmsNorm(x.data(), w.data(), 3, 10, 1e-6f, y.data());
  for (int t = 0; t < 3; ++t) {
    double ss = 0;
    for (int i = 0; i < 10; ++i) ss += x[t * 10 + i] * x[t * 10 + i];
    const double rms = std::sqrt(ss / 10 + 1e-6);
    for (int i = 0; i < 10; ++i) EXPECT_NEAR(y[t * 10 + i], x[t * 10 + i] / rms * w[i], 1e-6);
  }
}

TEST(Rope, RotatesPairsHalfApart) {
  RopeTable table(4, 8, 10000.0);
  std::vector<float> x = {1, 2, 3, 4};  // one head, HD 4: pairs (0,2), (1,3)
  const int32_t pos = 3;
  Rope(x.data(), &pos, 1, 1, table);
  const double a0 = 3.0, a1 = 3.0 * std::pow(10000.0, -0.5);
  EXPECT_NEAR(x[0], 1 * std::cos(a0) - 3 * std::sin(a0), 1e-6);
  EXPECT_NEAR(x[2], 3 * std::cos(a0) + 1 * std::sin(a0), 1e-6);
  EXPECT_NEAR(x[1], 2 * std::cos(a1) - 4 * std::sin(a1), 1e-6);
  EXPECT_NEAR(x[3], 4 * std::cos(a1) + 2 * std::sin(a1), 1e-6);
}

TEST(SwiGlu, MatchesReferenceOnEveryTarget) {
  std::vector<float> g = Random(1000, 11, 4.0f), u = Random(1000, 12);
  g[0] = -200.0f, g[1] = 200.0f, g[2] = 0.0f;  // saturated and zero gates
  std::vector<float> ref(g.size());
  SwiGluReference(g.data(), u.data(), 1000, ref.data());
  EXPECT_NEAR(ref[0], 0.0f, 1e-30f);
  EXPECT_NEAR(ref[1], 200.0f * u[1], 1e-4f);
  ForEachTarget([&] {
    for (int64_t n : {1, 7, 16, 1000}) {
      std::vector<float> y(static_cast<size_t>(n));
      SwiGlu(g.data(), u.data(), n, y.data());
      for (int64_t i = 0; i < n; ++i)
        ASSERT_NEAR(y[i], ref[i], 1e-5f * (1 + std::fabs(ref[i]))) << i;
    }
  });
}

TEST(SwiGluBackward, MatchesReferenceOnEveryTarget) {
  std::vector<float> g = Random(1000, 21, 4.0f), u = Random(1000, 22), d = Random(1000, 23);
  g[0] = -200.0f, g[1] = 200.0f;
  std::vector<float> rg(1000), ru(1000);
  SwiGluBackwardReference(d.data(), g.data(), u.data(), 1000, rg.data(), ru.data());
  ForEachTarget([&] {
    std::vector<float> dg(1000), du(1000);
    SwiGluBackward(d.data(), g.data(), u.data(), 1000, dg.data(), du.data());
    for (int i = 0; i < 1000; ++i) {
      ASSERT_NEAR(dg[i], rg[i], 1e-5f * (1 + std::fabs(rg[i]))) << i;
      ASSERT_NEAR(du[i], ru[i], 1e-5f * (1 + std::fabs(ru[i]))) << i;
    }
  });
}

TEST(Softmax, MatchesReferenceOnEveryTarget) {
  ForEachTarget([] {
    for (int64_t n : {1, 3, 16, 17, 300}) {
      std::vector<float> x = Random(static_cast<size_t>(n), 13, 5.0f), ref = x;
      if (n > 2) x[1] = ref[1] = -1000.0f;  // far below the max: exactly 0
      SoftmaxReference(ref.data(), n);
      Softmax(x.data(), n);
      double sum = 0;
      for (int64_t i = 0; i < n; ++i) {
        ASSERT_NEAR(x[i], ref[i], 1e-6f) << "n=" << n << " i=" << i;
        sum += x[i];
      }
      EXPECT_NEAR(sum, 1.0, 1e-5);
    }
  });
}

TEST(Half, F16AllValuesMatchLdexp) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const uint32_t e = (h >> 10) & 31, m = h & 1023;
    const float sign = (h & 0x8000) ? -1.0f : 1.0f;
    const float f = F16ToF32(static_cast<uint16_t>(h));
    if (e == 31) {
      EXPECT_TRUE(m ? std::isnan(f) : std::isinf(f)) << h;
      continue;
    }
    const double expect =
        e == 0 ? std::ldexp(m, -24) : std::ldexp(1024 + m, static_cast<int>(e) - 25);
    ASSERT_EQ(f, sign * static_cast<float>(expect)) << h;
  }
}

TEST(Half, Bf16RoundsToNearestEven) {
  EXPECT_EQ(F32ToBf16(1.0f), 0x3f80);
  EXPECT_EQ(Bf16ToF32(0x3f80), 1.0f);
  // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1.0).
  EXPECT_EQ(F32ToBf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);
  EXPECT_EQ(F32ToBf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);
  EXPECT_TRUE(std::isnan(Bf16ToF32(F32ToBf16(NAN))));
}

}  // namespace
}  // namespace tinylora
