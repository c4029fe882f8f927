// The block formats (ops/quantize.h): the reference quantisers byte for byte against the Python
// reference's fixture (written from GGML's and bitsandbytes' definitions), the fast dequantisers
// and streaming kernels against the references, and a quantised model against the F32 model of
// its dequantised weights.
#include <gtest/gtest.h>
#include <immintrin.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "model/llama.h"
#include "model/weights.h"
#include "ops/format.h"
#include "ops/matmul.h"
#include "ops/matvec_int8.h"
#include "ops/quantize.h"
#include "test_util.h"
#include "util/half.h"

namespace tinylora {
namespace {

nlohmann::json Fixture() {
  std::ifstream f(test::FixturePath("quant/quant.json"));
  return nlohmann::json::parse(f);
}

std::vector<uint8_t> Hex(const std::string& s) {
  std::vector<uint8_t> out(s.size() / 2);
  for (size_t i = 0; i < out.size(); ++i) out[i] = std::stoi(s.substr(2 * i, 2), nullptr, 16);
  return out;
}

std::vector<float> Floats(const nlohmann::json& j) { return j.get<std::vector<float>>(); }

__attribute__((target("f16c"))) uint16_t HardwareF16(float f) {
  return static_cast<uint16_t>(_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT));
}

TEST(Quantize, F32ToF16RoundsAsF16CDoes) {
  if (!__builtin_cpu_supports("f16c")) GTEST_SKIP() << "this CPU has no F16C to compare with";
  std::mt19937 rng(7);
  std::vector<float> xs = {0.0f,     -0.0f,   65504.0f, 65519.99f, 65520.0f, 1e-8f, 5.96e-8f,
                           2.98e-8f, 6.1e-5f, -6.1e-5f, 1e30f,     INFINITY, NAN};
  for (int i = 0; i < 200000; ++i) {
    uint32_t bits = rng();
    float f;
    std::memcpy(&f, &bits, 4);
    xs.push_back(f);
    // and values near F16's range, where rounding and subnormals matter
    xs.push_back(std::ldexp(static_cast<float>(rng() % 4096) / 4096.0f + 0.5f,
                            static_cast<int>(rng() % 44) - 28));
  }
  for (float f : xs) {
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(F16ToF32(F32ToF16(f))));
      continue;
    }
    ASSERT_EQ(F32ToF16(f), HardwareF16(f)) << f;
  }
}

TEST(Quantize, DynamicMapIsBitsandbytes) {
  const auto map = Floats(Fixture()["dynamic_map"]);
  ASSERT_EQ(map.size(), 256u);
  for (int i = 0; i < 256; ++i) EXPECT_EQ(kDynamicMap8[i], map[i]) << i;
  // dQuantize<0>'s outcomes, independent of the Python reference: every value of the map is
  // its own code (the ends included), and a value goes to the nearer neighbour, a midpoint to
  // the final index of the search.
  for (int i = 0; i < 256; ++i) EXPECT_EQ(DynamicMap8Code(kDynamicMap8[i]), i) << i;
  EXPECT_EQ(DynamicMap8Code(1.0f), 255);
  EXPECT_EQ(DynamicMap8Code(-1.0f), 0);
  EXPECT_EQ(DynamicMap8Code(2.0f), 255);
  for (int i : {3, 100, 127, 128, 200, 253}) {
    const float lo = kDynamicMap8[i], hi = kDynamicMap8[i + 1], mid = (lo + hi) * 0.5f;
    EXPECT_EQ(DynamicMap8Code(std::nextafter(mid, lo)), i) << i;
    EXPECT_EQ(DynamicMap8Code(std::nextafter(mid, hi)), i + 1) << i;
  }
}

struct Case {
  Format format;
  void (*quantize)(const float*, int64_t, void*);
  const char* key;
};
const Case kCases[] = {{Format::kQ8_0, QuantizeQ8_0Reference, "q8_0"},
                       {Format::kQ4_0, QuantizeQ4_0Reference, "q4_0"},
                       {Format::kNF4, QuantizeNF4Reference, "nf4"}};

TEST(Quantize, ReferenceBytesAndValuesMatchThePythonReference) {
  const auto fx = Fixture();
  for (const auto& c : fx["cases"]) {
    const auto x = Floats(c["x"]);
    for (const Case& k : kCases) {
      SCOPED_TRACE(c["name"].get<std::string>() + " " + k.key);
      const auto expected = Hex(c[k.key].get<std::string>());
      std::vector<uint8_t> got(static_cast<size_t>(FormatBytes(k.format, x.size())));
      ASSERT_EQ(got.size(), expected.size());
      k.quantize(x.data(), x.size(), got.data());
      EXPECT_EQ(got, expected);
      // the format table's quantiser is the reference
      std::vector<uint8_t> table(got.size());
      Traits(k.format).quantize(x.data(), x.size(), table.data());
      EXPECT_EQ(table, expected);
      const auto values = Floats(c[std::string(k.key) + "_values"]);
      std::vector<float> ref(x.size()), fast(x.size());
      Traits(k.format).dequantize_reference(expected.data(), x.size(), ref.data());
      Traits(k.format).dequantize(expected.data(), x.size(), fast.data());
      for (size_t i = 0; i < x.size(); ++i) {
        ASSERT_EQ(ref[i], values[i]) << i;
        ASSERT_EQ(std::memcmp(&fast[i], &ref[i], 4), 0) << i;
      }
    }
  }
}

TEST(Quantize, EdgeBlocks) {
  // all zeros: zero scales, every weight dequantises to zero
  std::vector<float> zeros(64, 0.0f), out(64);
  for (const Case& k : kCases) {
    std::vector<uint8_t> b(static_cast<size_t>(FormatBytes(k.format, 64)));
    k.quantize(zeros.data(), 64, b.data());
    Traits(k.format).dequantize_reference(b.data(), 64, out.data());
    for (float v : out) EXPECT_EQ(v, 0.0f) << k.key;
  }
  // the largest magnitude of a block is kept exactly by nf4 (level ±1 · absmax)
  std::vector<float> x(64, 0.001f);
  x[5] = -3.25f;
  std::vector<uint8_t> b(static_cast<size_t>(FormatBytes(Format::kNF4, 64)));
  QuantizeNF4Reference(x.data(), 64, b.data());
  DequantizeNF4Reference(b.data(), 64, out.data());
  EXPECT_EQ(out[5], -3.25f);
  EXPECT_EQ(NF4Code(0.03979014977812767f), 7);  // a midpoint goes to the lower level
  EXPECT_EQ(NF4Code(std::nextafter(0.03979014977812767f, 1.0f)), 8);
  EXPECT_EQ(NF4Code(NAN), 0);
}

TEST(Quantize, DoubleQuantisationMatchesThePythonReference) {
  const auto dq = Fixture()["double_quant"];
  const auto x = Floats(dq["x"]);
  const int64_t blocks = static_cast<int64_t>(x.size()) / 64;
  std::vector<uint8_t> nf4(static_cast<size_t>(FormatBytes(Format::kNF4, x.size())));
  QuantizeNF4Reference(x.data(), x.size(), nf4.data());
  std::vector<float> absmax(static_cast<size_t>(blocks));
  for (int64_t i = 0; i < blocks; ++i)
    std::memcpy(&absmax[i], nf4.data() + i * sizeof(BlockNF4), 4);
  std::vector<uint8_t> codes(absmax.size());
  std::vector<float> absmax2((absmax.size() + 255) / 256);
  const float offset = DoubleQuantizeAbsmax(absmax.data(), blocks, codes.data(), absmax2.data());
  EXPECT_EQ(offset, dq["offset"].get<float>());
  EXPECT_EQ(codes, dq["codes"].get<std::vector<uint8_t>>());
  EXPECT_EQ(absmax2, Floats(dq["absmax2"]));
  EXPECT_EQ(absmax, Floats(dq["absmax"]));
  DoubleQuantizeNF4(nf4.data(), x.size());
  EXPECT_EQ(nf4, Hex(dq["nf4"].get<std::string>()));
}

// A random (rows, cols) matrix quantised to `f`.
std::vector<uint8_t> RandomMatrix(Format f, int64_t rows, int64_t cols, uint32_t seed) {
  const auto x = test::Random(static_cast<size_t>(rows * cols), seed, 0.05f);
  std::vector<uint8_t> b(static_cast<size_t>(FormatBytes(f, rows * cols)));
  Traits(f).quantize(x.data(), rows * cols, b.data());
  return b;
}

// On every SIMD target: the streaming kernel over the blocks gives, bit for bit, what the F32
// streaming kernel gives over the dequantised matrix (the same fixed order of sums), so a row's
// result does not depend on the others of its batch either.
TEST(Quantize, StreamingKernelIsTheDequantisedProductAndBatchInvariant) {
  test::ForEachTarget([] {
    for (const Case& k : kCases) {
      SCOPED_TRACE(k.key);
      const int64_t rows = 37, cols = 320, T = 7;  // odd rows: every tile shape
      const auto bytes = RandomMatrix(k.format, rows, cols, 3);
      Tensor w{k.format, rows, cols, bytes.data()};
      std::vector<float> deq(static_cast<size_t>(rows * cols)), fast(deq.size());
      Traits(k.format).dequantize_reference(bytes.data(), rows * cols, deq.data());
      Traits(k.format).dequantize(bytes.data(), rows * cols, fast.data());
      ASSERT_EQ(std::memcmp(deq.data(), fast.data(), deq.size() * 4), 0);
      Tensor wf{Format::kF32, rows, cols, deq.data()};
      const auto x = test::Random(static_cast<size_t>(T * cols), 4);
      std::vector<float> y(T * rows), yf(T * rows), ref(T * rows), one(rows);
      MatVecRows(w, x.data(), T, 0, rows, y.data());
      MatVecRows(wf, x.data(), T, 0, rows, yf.data());
      MatMulReference(w, x.data(), T, ref.data());
      for (int64_t t = 0; t < T; ++t) {
        MatVecRows(w, x.data() + t * cols, 1, 0, rows, one.data());
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t i = t * rows + r;
          ASSERT_EQ(std::memcmp(&y[i], &yf[i], 4), 0) << t << " " << r;
          ASSERT_NEAR(y[i], ref[i], 1e-5f) << t << " " << r;
          ASSERT_EQ(std::memcmp(&y[i], &one[r], 4), 0) << t << " " << r;
        }
      }
    }
  });
}

// --int8-activations: the VNNI kernel is its plain reference (integer sums exact, F32 block
// sums in another order), batch-invariant, and close to the exact product (the activations'
// rounding to 8 bits is the whole difference).
TEST(Quantize, Int8ActivationKernelsFollowTheirReference) {
  if (!Int8ActivationsUseVnni())
    std::fprintf(stderr, "no AVX512-VNNI: the fast path is the reference\n");
  const struct {
    Format format, int8;
    void (*reference)(const void*, int64_t, int64_t, const float*, int64_t, int64_t, int64_t,
                      float*);
  } cases[] = {{Format::kQ8_0, Format::kQ8_0I8, MatVecQ8_0Int8Reference},
               {Format::kQ4_0, Format::kQ4_0I8, MatVecQ4_0Int8Reference}};
  for (const auto& k : cases) {
    SCOPED_TRACE(Traits(k.format).name);
    const int64_t rows = 37, cols = 320, T = 3;
    const auto bytes = RandomMatrix(k.format, rows, cols, 5);
    Tensor w{k.int8, rows, cols, bytes.data()}, exact{k.format, rows, cols, bytes.data()};
    const auto x = test::Random(static_cast<size_t>(T * cols), 6);
    std::vector<float> y(T * rows), ref(T * rows), ex(T * rows), one(rows);
    MatVecRows(w, x.data(), T, 0, rows, y.data());
    k.reference(bytes.data(), cols, rows, x.data(), T, 0, rows, ref.data());
    MatVecRows(exact, x.data(), T, 0, rows, ex.data());
    double err = 0, norm = 0;
    for (int64_t t = 0; t < T; ++t) {
      MatVecRows(w, x.data() + t * cols, 1, 0, rows, one.data());
      for (int64_t r = 0; r < rows; ++r) {
        const size_t i = static_cast<size_t>(t * rows + r);
        ASSERT_NEAR(y[i], ref[i], 1e-5f * (1 + std::fabs(ref[i]))) << t << " " << r;
        ASSERT_EQ(y[i], one[static_cast<size_t>(r)]) << t << " " << r;
        err += (y[i] - ex[i]) * (y[i] - ex[i]);
        norm += ex[i] * ex[i];
      }
    }
    EXPECT_LT(std::sqrt(err / norm), 0.02);  // 8-bit activations: about 1 % relative error
    EXPECT_GT(std::sqrt(err / norm), 1e-5);  // and not the exact product
  }
}

TEST(Quantize, GemmPathAndBackwardMatchTheReference) {
  for (const Case& k : kCases) {
    SCOPED_TRACE(k.key);
    const int64_t rows = 300, cols = 192, T = 33;  // more than one panel of rows
    const auto bytes = RandomMatrix(k.format, rows, cols, 5);
    Tensor w{k.format, rows, cols, bytes.data()};
    const auto x = test::Random(static_cast<size_t>(T * cols), 6);
    std::vector<float> y(T * rows), ref(T * rows);
    MatMul(w, x.data(), T, y.data());
    MatMulReference(w, x.data(), T, ref.data());
    for (size_t i = 0; i < y.size(); ++i) ASSERT_NEAR(y[i], ref[i], 1e-5f) << i;
    const auto dy = test::Random(static_cast<size_t>(T * rows), 7);
    std::vector<float> dx(T * cols, 1.0f), dref(T * cols, 1.0f);
    MatMulBackwardX(w, dy.data(), T, dx.data(), /*accumulate=*/true);
    MatMulBackwardXReference(w, dy.data(), T, dref.data(), /*accumulate=*/true);
    for (size_t i = 0; i < dx.size(); ++i) ASSERT_NEAR(dx[i], dref[i], 1e-4f) << i;
  }
}

}  // namespace
}  // namespace tinylora
