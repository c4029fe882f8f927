// The safetensors reader and writer: round trip, and every malformed header refused.
#include <gtest/gtest.h>

#include <cstring>

#include "formats/safetensors.h"
#include "test_util.h"
#include "util/error.h"

namespace tinylora {
namespace {

// A file with the given header text and `data_bytes` zero bytes of data.
std::string MakeFile(const std::string& header, size_t data_bytes) {
  std::string s(8, '\0');
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) s[static_cast<size_t>(i)] = static_cast<char>(n >> (8 * i));
  return s + header + std::string(data_bytes, '\0');
}

std::string ParseError(const std::string& file) {
  try {
    ParseSafetensors(reinterpret_cast<const uint8_t*>(file.data()), file.size(), "x.safetensors");
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::kBadInput);
    return e.what();
  }
  return "";
}

TEST(Safetensors, RoundTrip) {
  test::TempDir dir;
  const float a[] = {1.5f, -2.0f, 3.25f, 0.0f, 7.0f, 8.0f};
  const uint16_t b[] = {0x3f80, 0x4000, 0x4040};
  WriteSafetensors(dir / "m.safetensors",
                   {{"a", DType::kF32, {2, 3}, a},
                    {"b.weight", DType::kBF16, {3}, b},
                    {"empty", DType::kF32, {0}, a},
                    {"z", DType::kF32, {1}, a}},
                   {{"format", "pt"}});
  SafetensorsFile f(dir / "m.safetensors");
  EXPECT_EQ(f.header().data_start % 8, 0u);
  EXPECT_EQ(f.header().metadata.at("format"), "pt");
  const TensorInfo* ta = f.Find("a");
  ASSERT_NE(ta, nullptr);
  EXPECT_EQ(ta->dtype, DType::kF32);
  EXPECT_EQ(ta->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(std::memcmp(f.Data(*ta), a, sizeof(a)), 0);
  const TensorInfo* tb = f.Find("b.weight");
  ASSERT_NE(tb, nullptr);
  EXPECT_EQ(std::memcmp(f.Data(*tb), b, sizeof(b)), 0);
  EXPECT_EQ(f.Find("missing"), nullptr);
}

TEST(Safetensors, ReadsFixtureWithMetadataFirst) {  // written by the Python reference
  SafetensorsFile f(test::FixturePath("forward/odd/model-00001-of-00002.safetensors"));
  EXPECT_FALSE(f.header().tensors.empty());
  for (const auto& t : f.header().tensors) EXPECT_EQ(t.dtype, DType::kF16) << t.name;
}

TEST(Safetensors, RefusesMalformedHeaders) {
  const std::string ok = R"({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})";
  EXPECT_EQ(ParseError(MakeFile(ok, 8)), "");
  EXPECT_NE(ParseError("abc").find("not a safetensors file"), std::string::npos);
  std::string past = MakeFile(ok, 8);
  past[0] = static_cast<char>(0xff);
  past[5] = 1;
  EXPECT_NE(ParseError(past).find("runs past the end"), std::string::npos);
  EXPECT_NE(ParseError(MakeFile("{not json", 0)).find("not valid JSON"), std::string::npos);
  EXPECT_NE(ParseError(MakeFile("[1, 2]", 0)).find("not a JSON object"), std::string::npos);
  EXPECT_NE(
      ParseError(MakeFile(R"({"t": {"dtype": "Q7", "shape": [2], "data_offsets": [0, 8]}})", 8))
          .find("unknown dtype 'Q7'"),
      std::string::npos);
  EXPECT_NE(
      ParseError(MakeFile(R"({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 16]}})", 8))
          .find("out of range"),
      std::string::npos);
  EXPECT_NE(
      ParseError(MakeFile(R"({"t": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})", 12))
          .find("need 12"),
      std::string::npos);
  EXPECT_NE(
      ParseError(MakeFile(R"({"t": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}})", 8))
          .find("negative"),
      std::string::npos);
  EXPECT_NE(ParseError(MakeFile(R"({"t": {"dtype": "F32", "shape": [2]}})", 8))
                .find("missing data_offsets"),
            std::string::npos);
  EXPECT_NE(
      ParseError(MakeFile(R"({"t": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}})", 8))
          .find("out of range"),
      std::string::npos);
  EXPECT_NE(ParseError(MakeFile(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                   "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
                                12))
                .find("overlap"),
            std::string::npos);
  // A shape whose byte count overflows 64 bits must not wrap around to a small number.
  EXPECT_NE(
      ParseError(
          MakeFile(
              R"({"t": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 0]}})",
              8))
          .find("larger than the file"),
      std::string::npos);
}

TEST(Safetensors, MissingFileNamesThePath) {
  try {
    SafetensorsFile f("/nonexistent/model.safetensors");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/model.safetensors"), std::string::npos);
  }
}

}  // namespace
}  // namespace tinylora
