// bitsandbytes 4-bit directories: written by `tinylora quantize --format nf4`, laid out as Hugging
// Face saves them, read back as the in-memory --quantize nf4 base, and refused part by part when
// the state is missing or inconsistent.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <nlohmann/json.hpp>

#include "formats/safetensors.h"
#include "model/llama.h"
#include "model/weights.h"
#include "ops/quantize.h"
#include "test_util.h"
#include "util/error.h"
#include "util/file.h"

namespace tinylora {
namespace {

using test::RunCli;

// A random F32 model whose rows are whole NF4 blocks.
std::string MakeModel(const test::TempDir& tmp) {
  nlohmann::json c = {{"model_type", "llama"},    {"hidden_size", 64},
                      {"intermediate_size", 128}, {"num_hidden_layers", 2},
                      {"num_attention_heads", 4}, {"num_key_value_heads", 2},
                      {"vocab_size", 80},         {"max_position_embeddings", 32},
                      {"rms_norm_eps", 1e-5},     {"tie_word_embeddings", false}};
  test::WriteFile(tmp / "config.json", c.dump());
  test::CliResult r =
      RunCli({"init", "--config", tmp / "config.json", "--out", tmp / "m", "--seed", "3"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  return tmp / "m";
}

std::vector<float> Logits(const ModelWeights& w) {
  LlamaModel model(w);
  return test::Logits(model, {1, 7, 20, 33, 79, 2, 5});
}

std::string Bytes(const Tensor& t) {
  return std::string(static_cast<const char*>(t.data), static_cast<size_t>(t.nbytes()));
}

TEST(Bnb, WrittenDirectoryReadsBackAsQuantizeOnLoad) {
  test::TempDir tmp;
  const std::string m = MakeModel(tmp);
  for (bool dq : {false, true}) {
    SCOPED_TRACE(dq ? "double quantisation" : "plain absmax");
    const std::string out = tmp / (dq ? "nf4-dq" : "nf4");
    std::vector<std::string> args = {"quantize", "--model", m, "--format", "nf4", "--out", out};
    if (dq) args.push_back("--double-quant");
    test::CliResult r = RunCli(args);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    QuantizeOnLoad q;
    q.enabled = true;
    q.format = Format::kNF4;
    q.double_quant = dq;
    auto expected = ModelWeights::Load(m, q);
    auto read = ModelWeights::Load(out);
    for (size_t l = 0; l < read->layers.size(); ++l) {
      for (int k = 0; k < kNumModules; ++k) {
        const Module mod = static_cast<Module>(k);
        EXPECT_EQ(read->layers[l].weight(mod).format, Format::kNF4);
        EXPECT_EQ(Bytes(read->layers[l].weight(mod)), Bytes(expected->layers[l].weight(mod)))
            << "layer " << l << " " << ModuleName(mod);
      }
    }
    EXPECT_EQ(read->embed.format, Format::kF32);  // the embedding and head are kept
    EXPECT_EQ(Logits(*read), Logits(*expected));
    // the CLI agrees: eval of the directory is the in-memory --quantize run, to the last digit
    test::WriteFile(tmp / "ids", "1 4 9 16 25 36 49 64 3 2 1");
    std::vector<std::string> e = {"eval",      "--model",    m,    "--token-ids",
                                  tmp / "ids", "--quantize", "nf4"};
    if (dq) e.push_back("--double-quant");
    r = RunCli(e);
    test::CliResult r2 = RunCli({"eval", "--model", out, "--token-ids", tmp / "ids"});
    ASSERT_EQ(r2.exit_code, 0) << r2.err;
    EXPECT_EQ(r.out, r2.out);
  }
}

// The bytes as Hugging Face's bitsandbytes saves them, checked against the source weights.
TEST(Bnb, LayoutIsHuggingFaces) {
  test::TempDir tmp;
  const std::string m = MakeModel(tmp);
  ASSERT_EQ(
      RunCli({"quantize", "--model", m, "--format", "nf4", "--double-quant", "--out", tmp / "q"})
          .exit_code,
      0);
  auto cfg = nlohmann::json::parse(ReadTextFile(tmp / "q/config.json"));
  const auto& qc = cfg["quantization_config"];
  EXPECT_EQ(qc["quant_method"], "bitsandbytes");
  EXPECT_EQ(qc["load_in_4bit"], true);
  EXPECT_EQ(qc["bnb_4bit_quant_type"], "nf4");
  EXPECT_EQ(qc["bnb_4bit_use_double_quant"], true);
  SafetensorsFile src(m + "/model.safetensors"), q(tmp / "q/model.safetensors");
  const std::string name = "model.layers.1.mlp.up_proj.weight";  // (128, 64)
  const TensorInfo* w = src.Find(name);
  std::vector<float> v(static_cast<size_t>(w->numel()));
  std::memcpy(v.data(), src.Data(*w), v.size() * 4);
  const TensorInfo* packed = q.Find(name);
  ASSERT_NE(packed, nullptr);
  EXPECT_EQ(packed->dtype, DType::kU8);
  EXPECT_EQ(packed->shape, (std::vector<int64_t>{128 * 64 / 2, 1}));
  // block 5: its absmax, and each pair of codes high nibble first
  const int b = 5;
  float absmax = 0;
  for (int j = 0; j < 64; ++j) absmax = std::max(absmax, std::fabs(v[b * 64 + j]));
  for (int j = 0; j < 64; j += 2) {
    const uint8_t byte = q.Data(*packed)[b * 32 + j / 2];
    EXPECT_EQ(byte >> 4, NF4Code(v[b * 64 + j] / absmax)) << j;
    EXPECT_EQ(byte & 15, NF4Code(v[b * 64 + j + 1] / absmax)) << j;
  }
  // double quantisation: codes, the nested absmax per 256 blocks, the maps, the JSON state
  const TensorInfo* codes = q.Find(name + ".absmax");
  ASSERT_NE(codes, nullptr);
  EXPECT_EQ(codes->dtype, DType::kU8);
  EXPECT_EQ(codes->numel(), 128);
  EXPECT_EQ(q.Find(name + ".nested_absmax")->numel(), 1);
  EXPECT_EQ(q.Find(name + ".nested_quant_map")->numel(), 256);
  const TensorInfo* map = q.Find(name + ".quant_map");
  EXPECT_EQ(0, std::memcmp(q.Data(*map), kNF4Levels, 64));
  const TensorInfo* st = q.Find(name + ".quant_state.bitsandbytes__nf4");
  ASSERT_NE(st, nullptr);
  auto state =
      nlohmann::json::parse(std::string(reinterpret_cast<const char*>(q.Data(*st)), st->nbytes));
  EXPECT_EQ(state["quant_type"], "nf4");
  EXPECT_EQ(state["blocksize"], 64);
  EXPECT_EQ(state["shape"], nlohmann::json::array({128, 64}));
  EXPECT_EQ(state["nested_blocksize"], 256);
  EXPECT_TRUE(state["nested_offset"].is_number());
  // absmax · level, dequantised through the nested state, is what the loaded weight holds
  auto read = ModelWeights::Load(tmp / "q");
  const auto* blocks = static_cast<const BlockNF4*>(read->layers[1].w_up.data);
  float a2, m2;  // safetensors tensors after uint8 ones need not be aligned: copied
  std::memcpy(&a2, q.Data(*q.Find(name + ".nested_absmax")), 4);
  std::memcpy(&m2, q.Data(*q.Find(name + ".nested_quant_map")) + 4 * q.Data(*codes)[b], 4);
  volatile float product = m2 * a2;  // two roundings, as bitsandbytes (no fused multiply-add)
  const float want = product + state["nested_offset"].get<float>();
  EXPECT_EQ(blocks[b].absmax, want);
  EXPECT_NEAR(blocks[b].absmax, absmax, 0.02 * absmax);
}

// Rewrites DIR/model.safetensors, each tensor through `edit` (false drops it).
void Rewrite(const std::string& dir,
             const std::function<bool(const std::string&, TensorToWrite*, std::string*)>& edit) {
  std::vector<TensorToWrite> out;
  std::vector<std::string> keep;
  keep.reserve(1000);
  {
    SafetensorsFile f(dir + "/model.safetensors");
    for (const TensorInfo& t : f.header().tensors) {
      TensorToWrite w{t.name, t.dtype, t.shape, nullptr, nullptr};
      std::string bytes(reinterpret_cast<const char*>(f.Data(t)), t.nbytes);
      if (!edit(t.name, &w, &bytes)) continue;
      keep.push_back(bytes);
      w.data = keep.back().data();
      out.push_back(w);
    }
  }
  WriteSafetensors(dir + "/model.safetensors", out);
}

TEST(Bnb, BadStatesAreRefusedWithOneLine) {
  test::TempDir tmp;
  const std::string m = MakeModel(tmp);
  ASSERT_EQ(
      RunCli({"quantize", "--model", m, "--format", "nf4", "--double-quant", "--out", tmp / "good"})
          .exit_code,
      0);
  const std::string q = "model.layers.0.self_attn.q_proj.weight";
  auto expect =
      [&](const std::string& label,
          const std::function<bool(const std::string&, TensorToWrite*, std::string*)>& edit,
          const std::string& needle, const std::string& config = "") {
        SCOPED_TRACE(label);
        const std::string d = tmp / label;
        ASSERT_EQ(std::system(("rm -rf " + d + " && cp -r " + tmp / "good " + d).c_str()), 0);
        if (edit) Rewrite(d, edit);
        if (!config.empty()) test::WriteFile(d + "/config.json", config);
        test::CliResult r = RunCli({"eval", "--model", d, "--token-ids", tmp / "ids"});
        EXPECT_EQ(r.exit_code, 2) << r.err;
        EXPECT_NE(r.err.find(needle), std::string::npos)
            << "expected '" << needle << "' in " << r.err;
        EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
      };
  test::WriteFile(tmp / "ids", "1 2 3");
  auto drop = [&](const std::string& name) {
    return [name](const std::string& n, TensorToWrite*, std::string*) { return n != name; };
  };
  expect("no-absmax", drop(q + ".absmax"), "has no tensor '" + q + ".absmax'");
  expect("no-nested", drop(q + ".nested_absmax"), "has no tensor '" + q + ".nested_absmax'");
  expect("no-map", drop(q + ".quant_map"), "has no tensor '" + q + ".quant_map'");
  auto state_edit = [&](const std::function<void(nlohmann::json&)>& f) {
    return [q, f](const std::string& n, TensorToWrite* w, std::string* b) {
      if (n != q + ".quant_state.bitsandbytes__nf4") return true;
      auto j = nlohmann::json::parse(*b);
      f(j);
      *b = j.dump();
      w->shape = {static_cast<int64_t>(b->size())};
      return true;
    };
  };
  expect("block-128", state_edit([](nlohmann::json& j) { j["blocksize"] = 128; }),
         "blocksize 128 (tinylora's NF4 blocks are 64)");
  expect("fp4-state", state_edit([](nlohmann::json& j) { j["quant_type"] = "fp4"; }),
         "quant_type is not nf4");
  expect("shape", state_edit([](nlohmann::json& j) {
           j["shape"] = {32, 128};
         }),
         "shape [32,128], but the model's config implies [64, 64]");
  expect(
      "map",
      [&](const std::string& n, TensorToWrite*, std::string* b) {
        if (n == q + ".quant_map") (*b)[0] ^= 1;
        return true;
      },
      "quant_map: not NF4's 16 levels");
  expect(
      "short-codes",
      [&](const std::string& n, TensorToWrite* w, std::string* b) {
        if (n == q) {
          b->resize(b->size() - 2);
          w->shape = {static_cast<int64_t>(b->size()), 1};
        }
        return true;
      },
      "needs U8 of 2048");
  auto cfg = nlohmann::json::parse(ReadTextFile(tmp / "good/config.json"));
  auto with = [&](const char* key, const nlohmann::json& v) {
    auto c = cfg;
    c["quantization_config"][key] = v;
    return c.dump();
  };
  expect("int8", nullptr, "8-bit (LLM.int8) weights are not supported", with("load_in_8bit", true));
  expect("fp4", nullptr, "bnb_4bit_quant_type 'fp4' is not supported",
         with("bnb_4bit_quant_type", "fp4"));
  expect("gptq", nullptr, "quant_method 'gptq' is not supported", with("quant_method", "gptq"));
  // writing: rows that are not whole blocks, nf4 to GGUF, a q format without --gguf
  test::CliResult r = RunCli({"quantize", "--model", test::FixturePath("forward/gqa"), "--format",
                              "nf4", "--out", tmp / "odd"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("down_proj.weight' has rows of 96 weights"), std::string::npos) << r.err;
  EXPECT_FALSE(FileExists(tmp / "odd/model.safetensors"));
  r = RunCli({"quantize", "--model", m, "--format", "q8_0", "--out", tmp / "x"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("give --gguf"), std::string::npos) << r.err;
  r = RunCli({"quantize", "--model", m, "--format", "nf4", "--out", tmp / "good"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("already holds a model"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace tinylora
