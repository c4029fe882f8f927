// The binary as a user runs it: init → inspect → generate → eval, and bad input.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <sstream>

#include "model/tokenizer.h"
#include "test_util.h"
#include "util/file.h"

namespace tinylora {
namespace {

using test::RunCli;

int CountErrorLines(const std::string& err) {
  int n = 0;
  size_t pos = 0;
  while ((pos = err.find("error:", pos)) != std::string::npos) {
    if (pos == 0 || err[pos - 1] == '\n') ++n;
    pos += 6;
  }
  return n;
}

// Exit 2 and exactly one `error:` line containing `needle`.
void ExpectBadInput(const std::vector<std::string>& args, const std::string& needle) {
  test::CliResult r = RunCli(args);
  std::string cmd;
  for (const auto& a : args) cmd += a + " ";
  EXPECT_EQ(r.exit_code, 2) << cmd << "\n" << r.err;
  EXPECT_EQ(CountErrorLines(r.err), 1) << cmd << "\n" << r.err;
  EXPECT_NE(r.err.find(needle), std::string::npos)
      << cmd << "\nexpected '" << needle << "' in: " << r.err;
}

// A copy of a fixture model directory that a test may damage.
std::string CopyFixture(const test::TempDir& tmp, const std::string& name) {
  const std::string dst = tmp / name;
  std::filesystem::copy(test::FixturePath("forward/" + name), dst,
                        std::filesystem::copy_options::recursive);
  return dst;
}

void EditConfig(const std::string& dir, const std::function<void(nlohmann::json&)>& edit) {
  auto j = nlohmann::json::parse(ReadTextFile(dir + "/config.json"));
  edit(j);
  test::WriteFile(dir + "/config.json", j.dump());
}

// Rewrites model.safetensors with a replaced header (data bytes kept).
void ReplaceHeader(const std::string& dir, const std::string& header) {
  const std::string path = dir + "/model.safetensors";
  const std::string bytes = ReadTextFile(path);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(bytes[static_cast<size_t>(i)]);
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i)
    out[static_cast<size_t>(i)] = static_cast<char>(header.size() >> (8 * i));
  test::WriteFile(path, out + header + bytes.substr(8 + n));
}

nlohmann::json Header(const std::string& dir) {
  const std::string bytes = ReadTextFile(dir + "/model.safetensors");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(bytes[static_cast<size_t>(i)]);
  return nlohmann::json::parse(bytes.substr(8, n));
}

std::vector<std::vector<float>> ExpectedLogits(const std::string& name, size_t seq,
                                               std::vector<int>* ids) {
  auto j =
      nlohmann::json::parse(ReadTextFile(test::FixturePath("forward/" + name + "/expected.json")));
  *ids = j["sequences"][seq]["input_ids"].get<std::vector<int>>();
  return j["sequences"][seq]["logits"].get<std::vector<std::vector<float>>>();
}

std::string Join(const std::vector<int>& ids) {
  std::string s;
  for (int id : ids) s += (s.empty() ? "" : " ") + std::to_string(id);
  return s;
}

TEST(Cli, GreedyGenerateFollowsReferenceLogits) {
  std::vector<int> ids;
  auto logits = ExpectedLogits("gqa", 2, &ids);
  const auto& last = logits.back();
  const int expected = static_cast<int>(std::max_element(last.begin(), last.end()) - last.begin());
  test::CliResult r = RunCli({"generate", "--model", test::FixturePath("forward/gqa"),
                              "--prompt-ids", Join(ids), "--greedy", "--max-new-tokens", "4"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::vector<int> out;
  std::istringstream in(r.out);
  for (int v; in >> v;) out.push_back(v);
  ASSERT_FALSE(out.empty());
  EXPECT_EQ(out[0], expected);
  EXPECT_NE(r.err.find("tokens/s"), std::string::npos);
}

// generate --bf16: the prompt (more rows than the streaming kernel takes) through the BF16
// kernel, which is named; an F32 base is refused.
TEST(Cli, GenerateBf16RunsThePromptThroughTheBf16Kernel) {
  const std::string prompt = "1 5 9 13 17 21 25 29 33 37 41 45";
  test::CliResult r =
      RunCli({"generate", "--model", test::FixturePath("forward/bf16"), "--prompt-ids", prompt,
              "--greedy", "--max-new-tokens", "4", "--bf16"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("bf16 kernel: "), std::string::npos) << r.err;
  std::istringstream in(r.out);
  int n = 0;
  for (int v; in >> v; ++n) EXPECT_LT(v, 67);
  EXPECT_EQ(n, 4);
  r = RunCli({"generate", "--model", test::FixturePath("forward/gqa"), "--prompt-ids", prompt,
              "--max-new-tokens", "2", "--bf16"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("holds no BF16 matrix"), std::string::npos) << r.err;
}

TEST(Cli, EvalLossEqualsReferenceCrossEntropy) {
  std::vector<int> ids;
  auto logits = ExpectedLogits("gqa", 2, &ids);
  double loss = 0;
  for (size_t t = 0; t + 1 < ids.size(); ++t) {
    double mx = *std::max_element(logits[t].begin(), logits[t].end()), sum = 0;
    for (float v : logits[t]) sum += std::exp(v - mx);
    loss += std::log(sum) + mx - logits[t][static_cast<size_t>(ids[t + 1])];
  }
  loss /= static_cast<double>(ids.size() - 1);
  test::TempDir tmp;
  test::WriteFile(tmp / "ids.txt", Join(ids) + "\n");
  test::CliResult r =
      RunCli({"eval", "--model", test::FixturePath("forward/gqa"), "--token-ids", tmp / "ids.txt"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["tokens"].get<int>(), static_cast<int>(ids.size()) - 1);
  EXPECT_NEAR(j["loss"].get<double>(), loss, 1e-4);
  EXPECT_NEAR(j["ppl"].get<double>(), std::exp(loss), 1e-3 * std::exp(loss));
  // Short windows still score every token after the first exactly once.
  r = RunCli({"eval", "--model", test::FixturePath("forward/gqa"), "--token-ids", tmp / "ids.txt",
              "--context", "5"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out)["tokens"].get<int>(), static_cast<int>(ids.size()) - 1);
}

TEST(Cli, InitInspectGenerateEvalWithTokenizer) {
  test::TempDir tmp;
  const std::string tok = test::TrainTinyTokenizer(tmp.path(), 300);
  test::CliResult r =
      RunCli({"init", "--preset", "tiny", "--out", tmp / "m", "--tokenizer", tok, "--seed", "7"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // The preset took the tokenizer's vocabulary, and init says so.
  EXPECT_EQ(nlohmann::json::parse(r.out)["vocab"].get<int>(), 300);
  EXPECT_NE(r.err.find("vocab_size 4096 of preset tiny replaced by the tokenizer's 300"),
            std::string::npos)
      << r.err;
  r = RunCli({"inspect", tmp / "m"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto info = nlohmann::json::parse(r.out);
  EXPECT_EQ(info["config"]["vocab_size"].get<int>(), 300);
  EXPECT_EQ(info["tokenizer"]["vocab"].get<int>(), 300);
  EXPECT_EQ(info["params_by_dtype"]["F32"].get<int64_t>(), info["params"].get<int64_t>());
  const std::vector<std::string> gen = {"generate",
                                        "--model",
                                        tmp / "m",
                                        "--prompt",
                                        "the quick brown fox",
                                        "--max-new-tokens",
                                        "12",
                                        "--seed",
                                        "3",
                                        "--temperature",
                                        "1.5"};
  test::CliResult a = RunCli(gen), b = RunCli(gen);
  ASSERT_EQ(a.exit_code, 0) << a.err;
  EXPECT_GT(a.out.size(), 1u);
  EXPECT_EQ(a.out, b.out);  // same seed, same text
  test::WriteFile(tmp / "text.txt", "the lazy dog jumps over the quick brown fox\n");
  r = RunCli({"eval", "--model", tmp / "m", "--data", tmp / "text.txt"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  // A random model is close to uniform over the vocabulary: loss near log(300).
  EXPECT_NEAR(j["loss"].get<double>(), std::log(300.0), 0.5);
  // JSONL: each document is BOS + text + EOS, packed as training packs them.
  test::WriteFile(tmp / "docs.jsonl",
                  "{\"text\": \"the lazy dog\"}\n\n{\"text\": \"over the fox\"}\n");
  r = RunCli({"eval", "--model", tmp / "m", "--data", tmp / "docs.jsonl"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  Tokenizer tk(tok);
  const size_t expected =
      tk.Encode("the lazy dog", false).size() + tk.Encode("over the fox", false).size() + 4;
  EXPECT_EQ(nlohmann::json::parse(r.out)["tokens"].get<size_t>(), expected - 1);
  // init refuses to overwrite what a user saved
  ExpectBadInput({"init", "--preset", "tiny", "--out", tmp / "m"}, "already holds a model");
}

TEST(Cli, IntermediateSmallerThanHidden) {  // buffers sized for max(F, C), not F
  test::TempDir tmp;
  auto j = nlohmann::json::parse(ReadTextFile(test::FixturePath("forward/gqa/config.json")));
  j["intermediate_size"] = 16;
  test::WriteFile(tmp / "config.json", j.dump());
  ASSERT_EQ(RunCli({"init", "--config", tmp / "config.json", "--out", tmp / "m"}).exit_code, 0);
  std::string prompt;
  for (int i = 0; i < 12; ++i) prompt += std::to_string(i + 3) + " ";
  test::CliResult r =
      RunCli({"generate", "--model", tmp / "m", "--prompt-ids", prompt, "--max-new-tokens", "3"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
}

TEST(Cli, InitBf16FromConfigLoadsAsBf16) {
  test::TempDir tmp;
  test::CliResult r = RunCli({"init", "--config", test::FixturePath("forward/gqa/config.json"),
                              "--out", tmp / "m", "--dtype", "bf16"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = RunCli({"inspect", tmp / "m"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto info = nlohmann::json::parse(r.out);
  EXPECT_EQ(info["params_by_dtype"]["BF16"].get<int64_t>(), info["params"].get<int64_t>());
  EXPECT_EQ(info["config"]["torch_dtype"], "bfloat16");
  r = RunCli({"generate", "--model", tmp / "m", "--prompt-ids", "1 5 9", "--greedy",
              "--max-new-tokens", "3"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
}

TEST(Cli, BadUsage) {
  ExpectBadInput({}, "no command");
  ExpectBadInput({"frobnicate"}, "frobnicate");
  ExpectBadInput(
      {"generate", "--model", test::FixturePath("forward/gqa"), "--prompt-ids", "1", "--bogus"},
      "bogus");
  ExpectBadInput({"generate", "--prompt-ids", "1 2"}, "--model");
  ExpectBadInput({"init", "--preset", "huge", "--out", "/tmp/x"}, "unknown preset 'huge'");
  ExpectBadInput({"help", "nope"}, "unknown command 'nope'");
  test::CliResult r = RunCli({"help", "generate"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.out.find("--max-new-tokens"), std::string::npos);
  // `help` alone lists the commands, not the help of `help`.
  r = RunCli({"help"});
  EXPECT_EQ(r.exit_code, 0);
  for (const char* cmd : {"quickstart", "train", "pretrain", "generate", "merge"})
    EXPECT_NE(r.out.find(std::string("\n  ") + cmd + " "), std::string::npos) << cmd << r.out;
  EXPECT_EQ(r.out.find("the command to document"), std::string::npos) << r.out;
  // Bounds are said as bounds, not as a range up to the largest double.
  const std::string gqa = test::FixturePath("forward/gqa");
  ExpectBadInput({"generate", "--model", gqa, "--prompt-ids", "1", "--max-new-tokens", "-5"},
                 "--max-new-tokens: must be ≥ 0, got -5");
  ExpectBadInput({"generate", "--model", gqa, "--prompt-ids", "1", "--temperature", "0"},
                 "--temperature: must be > 0, got 0");
  ExpectBadInput({"generate", "--model", gqa, "--prompt-ids", "1", "--max-new-tokens", "x"},
                 "expected a number, got x");
}

TEST(Cli, BadPromptsAndIds) {
  const std::string m = test::FixturePath("forward/gqa");
  ExpectBadInput({"generate", "--model", m, "--prompt-ids", "1 101"},
                 "token id 101 is outside the vocabulary");
  ExpectBadInput({"generate", "--model", m, "--prompt-ids", "1 x2"},
                 "'x2' (token 2) is not a token id");
  ExpectBadInput({"generate", "--model", m, "--prompt-ids", "-3"}, "is not a token id");
  ExpectBadInput({"generate", "--model", m, "--prompt-ids", "  "}, "prompt is empty");
  ExpectBadInput({"generate", "--model", m, "--prompt", ""}, "prompt is empty");
  ExpectBadInput({"generate", "--model", m, "--prompt", "hello"}, "no tokenizer.model");
  std::string long_prompt;
  for (int i = 0; i < 64; ++i) long_prompt += "1 ";
  ExpectBadInput({"generate", "--model", m, "--prompt-ids", long_prompt},
                 "the model's context is 64");
  test::TempDir tmp;
  test::WriteFile(tmp / "ids.txt", "1 2 3 999\n");
  ExpectBadInput({"eval", "--model", m, "--token-ids", tmp / "ids.txt"}, "token 4 has id 999");
  test::WriteFile(tmp / "one.txt", "5\n");
  ExpectBadInput({"eval", "--model", m, "--token-ids", tmp / "one.txt"}, "needs at least 2 tokens");
  ExpectBadInput({"eval", "--model", m, "--token-ids", tmp / "missing.txt"},
                 "missing.txt: cannot open");
  test::WriteFile(tmp / "ok.txt", "1 2 3\n");
  ExpectBadInput({"eval", "--model", m, "--token-ids", tmp / "ok.txt", "--context", "65"},
                 "longer than the model");
}

TEST(Cli, BadModelDirectories) {
  test::TempDir tmp;
  auto gen = [](const std::string& dir) {
    return std::vector<std::string>{"generate", "--model", dir, "--prompt-ids", "1 2"};
  };
  ExpectBadInput(gen(tmp / "nope"), "not a model directory");
  std::string d = CopyFixture(tmp, "gqa");
  std::filesystem::remove(d + "/config.json");
  ExpectBadInput(gen(d), "config.json: cannot open");
  test::WriteFile(d + "/config.json", "{\"hidden_size\": 64,");
  ExpectBadInput(gen(d), "config.json: not valid JSON");
  std::filesystem::remove_all(d);

  d = CopyFixture(tmp, "gqa");
  EditConfig(d, [](nlohmann::json& j) { j.erase("num_hidden_layers"); });
  ExpectBadInput(gen(d), "missing key 'num_hidden_layers'");
  EditConfig(d,
             [](nlohmann::json& j) { j["num_hidden_layers"] = 2, j["num_attention_heads"] = 5; });
  ExpectBadInput(gen(d), "hidden_size 64 is not divisible by num_attention_heads 5");
  EditConfig(d,
             [](nlohmann::json& j) { j["num_attention_heads"] = 4, j["num_key_value_heads"] = 3; });
  ExpectBadInput(gen(d), "num_key_value_heads 3 does not divide num_attention_heads 4");
  EditConfig(d,
             [](nlohmann::json& j) { j["num_key_value_heads"] = 2, j["intermediate_size"] = 95; });
  ExpectBadInput(
      gen(d),
      "'model.layers.0.mlp.gate_proj.weight' has shape [96, 64] but config.json implies [95, 64]");
  EditConfig(d, [](nlohmann::json& j) { j["intermediate_size"] = 96, j["num_hidden_layers"] = 3; });
  ExpectBadInput(gen(d), "tensor 'model.layers.2.input_layernorm.weight' is missing");
  EditConfig(d, [](nlohmann::json& j) { j["num_hidden_layers"] = 2; });
  EXPECT_EQ(RunCli(gen(d)).exit_code, 0);  // repaired: loads again

  const nlohmann::json good = Header(d);
  nlohmann::json h = good;
  h["model.norm.weight"]["dtype"] = "F8_E9";
  ReplaceHeader(d, h.dump());
  ExpectBadInput(gen(d), "unknown dtype 'F8_E9'");
  h = good;
  h["model.norm.weight"]["dtype"] = "I32";
  ReplaceHeader(d, h.dump());
  ExpectBadInput(gen(d), "dtype I32; only F32, F16 and BF16");
  h = good;
  h["model.norm.weight"]["data_offsets"][1] = 1u << 30;
  ReplaceHeader(d, h.dump());
  ExpectBadInput(gen(d), "out of range");
  h = good;
  h["model.norm.weight"]["data_offsets"] = h["model.embed_tokens.weight"]["data_offsets"];
  h["model.norm.weight"]["shape"] = h["model.embed_tokens.weight"]["shape"];
  ReplaceHeader(d, h.dump());
  ExpectBadInput(gen(d), "overlap");
  ReplaceHeader(d, good.dump());
  EXPECT_EQ(RunCli(gen(d)).exit_code, 0);
  // header length past the end of the file
  std::string bytes = ReadTextFile(d + "/model.safetensors");
  bytes[6] = 1;
  test::WriteFile(d + "/model.safetensors", bytes);
  ExpectBadInput(gen(d), "runs past the end of the file");
  test::WriteFile(d + "/model.safetensors", "");
  ExpectBadInput(gen(d), "not a safetensors file");

  d = CopyFixture(tmp, "odd");
  std::filesystem::remove(d + "/model-00002-of-00002.safetensors");
  ExpectBadInput(gen(d), "model-00002-of-00002.safetensors: cannot open");
  test::WriteFile(d + "/model.safetensors.index.json",
                  R"({"weight_map": {"model.norm.weight": "../x"}})");
  ExpectBadInput(gen(d), "not a file in the model directory");
}

TEST(Cli, TokenizerTrainWritesALlamaStyleTokenizer) {
  test::TempDir tmp;
  std::string text;
  for (int i = 0; i < 300; ++i)
    text += "tree routed adapters route token " + std::to_string(i * 7) + " to leaf ünï\n";
  test::WriteFile(tmp / "a.txt", text);
  std::filesystem::create_directories(tmp / "more");
  test::WriteFile(tmp / "more/b.txt", "another file, 2024 of them\n");
  test::CliResult r = RunCli({"tokenizer", "train", "--data", tmp / "a.txt", tmp / "more",
                              "--vocab-size", "320", "--out", tmp / "tok"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out)["vocab"].get<int>(), 320);
  // Usable by init; ids 0/1/2 are <unk>/<s>/</s>; no temporary files left behind.
  r = RunCli(
      {"init", "--preset", "tiny", "--tokenizer", tmp / "tok/tokenizer.model", "--out", tmp / "m"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto cfg = nlohmann::json::parse(ReadTextFile(tmp / "m/config.json"));
  EXPECT_EQ(cfg["bos_token_id"].get<int>(), 1);
  EXPECT_EQ(cfg["eos_token_id"].get<int>(), 2);
  int entries = 0;
  for (const auto& e : std::filesystem::directory_iterator(tmp / "tok"))
    entries += e.is_regular_file();
  EXPECT_EQ(entries, 1);
  ExpectBadInput({"tokenizer", "train", "--data", tmp / "missing", "--out", tmp / "t2"},
                 "no such file");
  ExpectBadInput({"tokenizer", "train", "--data", tmp / "more/b.txt", "--vocab-size", "5000",
                  "--out", tmp / "t3"},
                 "Vocabulary size too high");
}

}  // namespace
}  // namespace tinylora
