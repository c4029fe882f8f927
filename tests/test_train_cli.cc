// Training as a user runs it: train / pretrain / merge end to end, exact resume, a clean stop
// on SIGTERM, and one clear error for each bad input.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "model/weights.h"
#include "ops/gemm_bf16.h"
#include "test_util.h"
#include "train/trainable.h"
#include "util/file.h"

namespace tinylora {
namespace {

using test::RunCli;

// A tiny model with a tokenizer, and some text to train on.
struct TrainSetup {
  test::TempDir tmp;
  std::string model, data;
  explicit TrainSetup(int intermediate_size = 96) {
    const std::string tok = test::TrainTinyTokenizer(tmp.path(), 300);
    auto j = nlohmann::json::parse(ReadTextFile(test::FixturePath("forward/gqa/config.json")));
    j["vocab_size"] = 300;
    j["intermediate_size"] = intermediate_size;
    test::WriteFile(tmp / "config.json", j.dump());
    model = tmp / "model";
    EXPECT_EQ(RunCli({"init", "--config", tmp / "config.json", "--out", model, "--tokenizer", tok,
                      "--seed", "1"})
                  .exit_code,
              0);
    data = tmp / "data.jsonl";
    std::string lines;
    for (int i = 0; i < 60; ++i) {
      lines += "{\"text\": \"the quick brown fox " + std::to_string(i % 7) +
               " jumps over the lazy dog\"}\n";
    }
    test::WriteFile(data, lines);
  }
};

std::vector<double> Losses(const std::string& metrics) {
  std::vector<double> out;
  std::istringstream in(ReadTextFile(metrics));
  for (std::string line; std::getline(in, line);)
    out.push_back(nlohmann::json::parse(line)["loss"].get<double>());
  return out;
}

// Two runs' losses equal step by step and their adapters identical, byte for byte.
void ExpectSameRun(const std::string& a, const std::string& b) {
  EXPECT_EQ(Losses(a + "/metrics.jsonl"), Losses(b + "/metrics.jsonl"));
  EXPECT_EQ(ReadTextFile(a + "/adapter_model.safetensors"),
            ReadTextFile(b + "/adapter_model.safetensors"));
}

// A run that learns and follows a reference run within 1e-3 (relative) at every step.
void ExpectLearnsAndFollows(const std::string& run, const std::string& reference) {
  const std::vector<double> l = Losses(run + "/metrics.jsonl"),
                            ref = Losses(reference + "/metrics.jsonl");
  ASSERT_EQ(l.size(), ref.size());
  EXPECT_LT(l.back(), l.front() - 0.2);  // it learns
  for (size_t i = 0; i < l.size(); ++i) EXPECT_NEAR(l[i], ref[i], 1e-3 * ref[i]) << i + 1;
}

std::vector<std::string> TrainArgs(const TrainSetup& s, const std::string& out,
                                   const std::string& steps) {
  return {"train",   "--model",   s.model,        "--data", s.data,         "--out",    out,
          "--steps", steps,       "--batch-size", "2",      "--seq-len",    "16",       "--rank",
          "4",       "--targets", "all-linear",   "--lr",   "1e-2",         "--warmup", "2",
          "--seed",  "3",         "--dropout",    "0.1",    "--grad-accum", "2"};
}

TEST(TrainCli, LoraTrainsAndIsUsedByEvalGenerateAndMerge) {
  TrainSetup s;
  test::CliResult r = RunCli(TrainArgs(s, s.tmp / "out", "12"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto summary = nlohmann::json::parse(r.out);
  EXPECT_EQ(summary["steps"].get<int>(), 12);
  const std::vector<double> losses = Losses(s.tmp / "out/metrics.jsonl");
  ASSERT_EQ(losses.size(), 12u);
  EXPECT_LT(losses.back(), losses.front() - 0.2);  // it learns (a random base caps how far)
  for (const char* f :
       {"adapter_config.json", "adapter_model.safetensors", "loss.svg", "checkpoint/state.json"}) {
    EXPECT_TRUE(FileExists(s.tmp / (std::string("out/") + f))) << f;
  }
  EXPECT_NE(ReadTextFile(s.tmp / "out/loss.svg").find("<polyline"), std::string::npos);
  // The adapter changes eval, and merging it gives the same loss as applying it.
  test::WriteFile(s.tmp / "held.txt", "the quick brown fox 3 jumps over the lazy dog\n");
  auto eval = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = {"eval", "--data", s.tmp / "held.txt"};
    args.insert(args.end(), extra.begin(), extra.end());
    test::CliResult e = RunCli(args);
    EXPECT_EQ(e.exit_code, 0) << e.err;
    return nlohmann::json::parse(e.out)["loss"].get<double>();
  };
  const double base = eval({"--model", s.model});
  const double adapted = eval({"--model", s.model, "--adapter", s.tmp / "out"});
  EXPECT_LT(adapted, base - 0.2);
  r = RunCli({"merge", "--model", s.model, "--adapter", s.tmp / "out", "--out", s.tmp / "merged"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NEAR(eval({"--model", s.tmp / "merged"}), adapted, 1e-4);
  r = RunCli({"generate", "--model", s.model, "--adapter", s.tmp / "out", "--prompt", "the quick",
              "--greedy", "--max-new-tokens", "6"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
}

// train --bf16 and eval --bf16 on every BF16 kernel this CPU has (TINYLORA_BF16_KERNEL), each
// within 2 % of the F32 products' losses; a kernel it lacks, or an unknown one, is one clear
// error.
TEST(TrainCli, Bf16BaseTrainsInBf16LikeInF32OnEveryKernel) {
  TrainSetup s;
  const std::string bf16_model = s.tmp / "model-bf16";
  ASSERT_EQ(RunCli({"init", "--config", s.tmp / "config.json", "--out", bf16_model, "--tokenizer",
                    s.model + "/tokenizer.model", "--seed", "1", "--dtype", "bf16"})
                .exit_code,
            0);
  TrainSetup& b = s;
  b.model = bf16_model;
  test::CliResult r = RunCli(TrainArgs(b, s.tmp / "f32", "12"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::vector<double> f32 = Losses(s.tmp / "f32/metrics.jsonl");
  test::WriteFile(s.tmp / "held.txt", "the quick brown fox 3 jumps over the lazy dog\n");
  auto eval = [&](const std::string& adapter, bool bf16) {
    std::vector<std::string> e = {"eval",  "--model", bf16_model,        "--adapter",
                                  adapter, "--data",  s.tmp / "held.txt"};
    if (bf16) e.push_back("--bf16");
    test::CliResult er = RunCli(e);
    EXPECT_EQ(er.exit_code, 0) << er.err;
    return er.exit_code == 0 ? nlohmann::json::parse(er.out)["loss"].get<double>() : 0.0;
  };
  std::vector<std::string> lacking;
  for (Bf16Kernel k : kBf16Kernels) {
    const std::string name = Bf16KernelName(k), out = s.tmp / ("bf16-" + name);
    SCOPED_TRACE(name);
    ::setenv("TINYLORA_BF16_KERNEL", name.c_str(), 1);
    std::vector<std::string> args = TrainArgs(b, out, "12");
    args.push_back("--bf16");
    r = RunCli(args);
    if (!Bf16KernelAvailable(k)) {  // refused with a reason, not run some other way
      EXPECT_EQ(r.exit_code, 2);
      EXPECT_NE(r.err.find("TINYLORA_BF16_KERNEL=" + name + ": this CPU (or kernel) lacks it"),
                std::string::npos)
          << r.err;
      lacking.push_back(name);
      continue;
    }
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.err.find("bf16 kernel: " + name + " ("), std::string::npos) << r.err;
    const std::vector<double> bf16 = Losses(out + "/metrics.jsonl");
    ASSERT_EQ(bf16.size(), f32.size());
    EXPECT_LT(bf16.back(), bf16.front() - 0.2);  // it learns
    bool differs = false;
    for (size_t i = 0; i < f32.size(); ++i) {
      EXPECT_NEAR(bf16[i], f32[i], 0.02 * f32[i]) << "step " << i + 1;
      differs = differs || bf16[i] != f32[i];
    }
    EXPECT_TRUE(differs);  // the products really ran in BF16
    // eval --bf16 scores the trained adapter close to the F32 products' score.
    const double e32 = eval(out, false), e16 = eval(out, true);
    EXPECT_NEAR(e16, e32, 0.02 * e32);
    EXPECT_NE(e16, e32);
    // Resuming needs the same choice: the checkpoint's run records it.
    args = TrainArgs(b, out, "14");
    args.push_back("--resume");
    r = RunCli(args);
    EXPECT_EQ(r.exit_code, 2);
    EXPECT_NE(r.err.find("other options"), std::string::npos) << r.err;
  }
  ::setenv("TINYLORA_BF16_KERNEL", "tiles", 1);
  std::vector<std::string> args = TrainArgs(b, s.tmp / "unknown", "2");
  args.push_back("--bf16");
  r = RunCli(args);
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("TINYLORA_BF16_KERNEL=tiles: unknown kernel"), std::string::npos) << r.err;
  ::unsetenv("TINYLORA_BF16_KERNEL");
  for (const std::string& name : lacking)
    std::printf("[  SKIPPED ] bf16 kernel %s: not on this CPU\n", name.c_str());
}

// --quantize: a quantised base is its dequantised values multiplied in F32. Training over it
// follows training over those values written as an F32 model, eval of the adapter equals eval
// of its merge (which is F32), resume is exact, a tree trains over it, and inspect shows the
// bits per weight held.
TEST(TrainCli, QuantizedBaseIsItsDequantisedValues) {
  TrainSetup s(128);  // nf4's blocks of 64 divide every row
  test::WriteFile(s.tmp / "held.txt", "the quick brown fox 3 jumps over the lazy dog\n");
  auto eval = [&](std::vector<std::string> args) {
    args.insert(args.begin(), {"eval", "--data", s.tmp / "held.txt"});
    test::CliResult e = RunCli(args);
    EXPECT_EQ(e.exit_code, 0) << e.err;
    return e.exit_code == 0 ? nlohmann::json::parse(e.out)["loss"].get<double>() : 0.0;
  };
  struct Case {
    std::vector<std::string> flags;
    Format format;
    double bits;
  };
  const Case cases[] = {{{"--quantize", "q8_0"}, Format::kQ8_0, 8.5},
                        {{"--quantize", "q4_0"}, Format::kQ4_0, 4.5},
                        {{"--quantize", "nf4"}, Format::kNF4, 4.5},
                        {{"--quantize", "nf4", "--double-quant"}, Format::kNF4, 4.5}};
  const double f32_eval = eval({"--model", s.model});
  for (const Case& c : cases) {
    const std::string name = c.flags[1] + (c.flags.size() > 2 ? "-dq" : "");
    SCOPED_TRACE(name);
    // The dequantised values, written as an F32 model.
    QuantizeOnLoad q;
    q.enabled = true;
    q.format = c.format;
    q.double_quant = c.flags.size() > 2;
    const std::string deq = s.tmp / ("deq-" + name);
    {
      auto w = ModelWeights::Load(s.model, q);
      EXPECT_EQ(w->layers[0].wq.format, c.format);
      EXPECT_EQ(w->layers[1].w_down.format, c.format);
      EXPECT_EQ(w->lm_head.format, Format::kF32);  // the head stays unless --quantize-head
      SaveModel(*MakeTrainable(*w, /*with_grads=*/false), deq, Format::kF32);
      test::WriteFile(deq + "/tokenizer.model", ReadTextFile(s.model + "/tokenizer.model"));
    }
    std::vector<std::string> base_q = {"--model", s.model};
    base_q.insert(base_q.end(), c.flags.begin(), c.flags.end());
    const double eq = eval(base_q), ed = eval({"--model", deq});
    EXPECT_NEAR(eq, ed, 1e-4);
    EXPECT_NE(eq, f32_eval);  // the quantisation is really there
    // Training over the quantised base follows training over its dequantised values.
    const std::string out = s.tmp / ("lora-" + name);
    std::vector<std::string> args = TrainArgs(s, out, "12");
    args.insert(args.end(), c.flags.begin(), c.flags.end());
    test::CliResult r = RunCli(args);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    std::vector<std::string> dargs = TrainArgs(s, s.tmp / ("lora-deq-" + name), "12");
    dargs[2] = deq;
    ASSERT_EQ(RunCli(dargs).exit_code, 0);
    ExpectLearnsAndFollows(out, s.tmp / ("lora-deq-" + name));
    // eval of the adapter over the quantised base equals eval of the merge.
    std::vector<std::string> adapted = base_q;
    adapted.insert(adapted.end(), {"--adapter", out});
    std::vector<std::string> merge = {"merge", "--adapter", out, "--out", s.tmp / ("m-" + name)};
    merge.insert(merge.end(), base_q.begin(), base_q.end());
    r = RunCli(merge);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const auto mc = nlohmann::json::parse(ReadTextFile(s.tmp / ("m-" + name) + "/config.json"));
    EXPECT_EQ(mc["torch_dtype"], "float32");
    EXPECT_NEAR(eval(adapted), eval({"--model", s.tmp / ("m-" + name)}), 1e-4);
    // inspect: the projections' format and bits per weight as held.
    std::vector<std::string> inspect = {"inspect", s.model};
    inspect.insert(inspect.end(), c.flags.begin(), c.flags.end());
    r = RunCli(inspect);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const auto held = nlohmann::json::parse(r.out)["held"];
    ASSERT_TRUE(held.contains(c.flags[1])) << r.out;
    EXPECT_DOUBLE_EQ(held[c.flags[1]]["bits_per_weight"].get<double>(), c.bits);
    EXPECT_TRUE(held.contains("f32"));  // embedding and head
  }
  // Resume over a double-quantised NF4 base is exact; the run records the quantisation.
  const std::vector<std::string> nf4 = {"--quantize", "nf4", "--double-quant"};
  std::vector<std::string> split = TrainArgs(s, s.tmp / "split", "12");
  split.insert(split.end(), nf4.begin(), nf4.end());
  std::vector<std::string> first = split;
  first.insert(first.end(), {"--stop-after", "5"});
  ASSERT_EQ(RunCli(first).exit_code, 0);
  std::vector<std::string> other = TrainArgs(s, s.tmp / "split", "12");
  other.insert(other.end(), {"--quantize", "nf4", "--resume"});
  test::CliResult r = RunCli(other);  // without --double-quant: another base
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("other options"), std::string::npos) << r.err;
  split.push_back("--resume");
  r = RunCli(split);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ExpectSameRun(s.tmp / "split", s.tmp / "lora-nf4-dq");
  // A tree trains over an NF4 base as over its dequantised values.
  const std::vector<std::string> depth = {"--tree-depth", "2", "--routing", "hard"};
  std::vector<std::string> tree = TrainArgs(s, s.tmp / "tree", "12");
  tree.insert(tree.end(), depth.begin(), depth.end());
  std::vector<std::string> tree_deq = tree;
  tree_deq[2] = s.tmp / "deq-nf4";
  tree_deq[6] = s.tmp / "tree-deq";
  tree.insert(tree.end(), {"--quantize", "nf4"});
  r = RunCli(tree);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ASSERT_EQ(RunCli(tree_deq).exit_code, 0);
  ExpectLearnsAndFollows(s.tmp / "tree", s.tmp / "tree-deq");
  // With the embedding and head quantised too, it generates.
  r = RunCli({"generate", "--model", s.model, "--adapter", s.tmp / "tree", "--quantize", "q4_0",
              "--quantize-head", "--prompt", "the quick", "--greedy", "--max-new-tokens", "6"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  r = RunCli({"inspect", s.model, "--quantize", "q4_0", "--quantize-head"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_FALSE(nlohmann::json::parse(r.out)["held"].contains("f32")) << r.out;
}

TEST(TrainCli, ResumeEqualsUninterrupted) {
  TrainSetup s;
  ASSERT_EQ(RunCli(TrainArgs(s, s.tmp / "full", "8")).exit_code, 0);
  std::vector<std::string> first = TrainArgs(s, s.tmp / "split", "8");
  first.insert(first.end(), {"--stop-after", "3"});
  test::CliResult r = RunCli(first);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(nlohmann::json::parse(r.out)["stopped_by_signal"].get<bool>());
  std::vector<std::string> second = TrainArgs(s, s.tmp / "split", "8");
  second.push_back("--resume");
  r = RunCli(second);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ExpectSameRun(s.tmp / "split", s.tmp / "full");
  // Other options than the checkpoint's are refused.
  second[std::find(second.begin(), second.end(), "--seed") - second.begin() + 1] = "4";
  r = RunCli(second);
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("other options"), std::string::npos) << r.err;
}

// A depth-4 tree on 2×16-token micro-batches leaves some of its 16 leaves unused in a step:
// the lazy optimizer state (only used leaves) is checkpointed and resumed exactly too.
TEST(TrainCli, TreeResumeEqualsUninterrupted) {
  TrainSetup s;
  const std::vector<std::string> tree = {"--tree-depth", "4",         "--routing",
                                         "hard",         "--balance", "0.01"};
  std::vector<std::string> full = TrainArgs(s, s.tmp / "full", "6");
  full.insert(full.end(), tree.begin(), tree.end());
  ASSERT_EQ(RunCli(full).exit_code, 0);
  std::vector<std::string> split = TrainArgs(s, s.tmp / "split", "6");
  split.insert(split.end(), tree.begin(), tree.end());
  std::vector<std::string> first = split;
  first.insert(first.end(), {"--stop-after", "3"});
  ASSERT_EQ(RunCli(first).exit_code, 0);
  split.push_back("--resume");
  test::CliResult r = RunCli(split);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ExpectSameRun(s.tmp / "split", s.tmp / "full");
}

// A bank of 256 leaves: metrics summarise routing per block instead of listing every leaf,
// and inspect / generate read the adapter back.
TEST(TrainCli, LargeBankTrainsAndServes) {
  TrainSetup s;
  std::vector<std::string> args = TrainArgs(s, s.tmp / "bank", "2");
  args.insert(args.end(), {"--tree-depth", "8", "--routing", "hard"});
  test::CliResult r = RunCli(args);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::istringstream lines(ReadTextFile(s.tmp / "bank/metrics.jsonl"));
  std::string last;
  for (std::string line; std::getline(lines, line);) last = line;
  const auto routing = nlohmann::json::parse(last)["routing"];
  ASSERT_TRUE(routing.contains("leaves_used")) << last;
  EXPECT_FALSE(routing.contains("leaf_usage"));
  ASSERT_EQ(routing["leaves_used"].size(), 2u);  // the fixture model's blocks
  for (const auto& n : routing["leaves_used"]) {
    EXPECT_GE(n.get<int>(), 1);
    EXPECT_LE(n.get<int>(), 64);  // 2 sequences × 2 micro-batches × 16 tokens
  }
  r = RunCli({"inspect", s.tmp / "bank"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("leaves used in the last step"), std::string::npos) << r.err;
  r = RunCli({"generate", "--model", s.model, "--adapter", s.tmp / "bank", "--prompt", "the",
              "--greedy", "--max-new-tokens", "4"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
}

TEST(TrainCli, SigtermSavesAndExitsCleanly) {
  TrainSetup s;
  std::vector<std::string> args = TrainArgs(s, s.tmp / "out", "100000");
  pid_t pid = fork();
  if (pid == 0) {
    std::vector<char*> argv;
    std::string bin = TINYLORA_BINARY;
    argv.push_back(bin.data());
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    freopen("/dev/null", "w", stdout);
    freopen("/dev/null", "w", stderr);
    execv(bin.c_str(), argv.data());
    _exit(127);
  }
  const std::string metrics = s.tmp / "out/metrics.jsonl";
  for (int i = 0; i < 600 && (!FileExists(metrics) || ReadTextFile(metrics).size() < 10); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  // The binary restarted itself with OpenMP's passive wait policy (util/wait_policy.h).
  std::string environ_text = "\n" + ReadTextFile("/proc/" + std::to_string(pid) + "/environ");
  std::replace(environ_text.begin(), environ_text.end(), '\0', '\n');
  EXPECT_NE(environ_text.find("\nOMP_WAIT_POLICY=PASSIVE\n"), std::string::npos);
  kill(pid, SIGTERM);
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  auto state = nlohmann::json::parse(ReadTextFile(s.tmp / "out/checkpoint/state.json"));
  EXPECT_GE(state["step"].get<int>(), 1);
  EXPECT_TRUE(FileExists(s.tmp / "out/adapter_model.safetensors"));
}

TEST(TrainCli, PretrainFromScratchLearns) {
  TrainSetup s;
  test::CliResult r = RunCli({"pretrain",
                              "--config",
                              s.tmp / "config.json",
                              "--tokenizer",
                              s.model + "/tokenizer.model",
                              "--data",
                              s.data,
                              "--out",
                              s.tmp / "pre",
                              "--steps",
                              "15",
                              "--batch-size",
                              "2",
                              "--seq-len",
                              "16",
                              "--lr",
                              "1e-2",
                              "--eval-every",
                              "5",
                              "--val-fraction",
                              "0.2",
                              "--checkpoint-activations"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_TRUE(j.contains("val_loss"));
  const std::vector<double> losses = Losses(s.tmp / "pre/metrics.jsonl");
  EXPECT_LT(losses.back(), losses.front() - 1.0);
  r = RunCli({"generate", "--model", s.tmp / "pre", "--prompt", "the", "--max-new-tokens", "4"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
}

void ExpectBad(const std::vector<std::string>& args, const std::string& needle) {
  test::CliResult r = RunCli(args);
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find(needle), std::string::npos) << "expected '" << needle << "' in: " << r.err;
  EXPECT_EQ(r.err.find("error:"), r.err.rfind("error:")) << "more than one error line: " << r.err;
}

TEST(TrainCli, BadInputs) {
  TrainSetup s;
  auto args = [&](const std::string& data, const std::string& seq) {
    return std::vector<std::string>{"train", "--model",      s.model,   "--data", data,
                                    "--out", s.tmp / "o",    "--steps", "2",      "--seq-len",
                                    seq,     "--batch-size", "1"};
  };
  ExpectBad(args(s.tmp / "missing.txt", "16"), "missing.txt");
  test::WriteFile(s.tmp / "empty.txt", "");
  ExpectBad(args(s.tmp / "empty.txt", "16"), "no training data");
  test::WriteFile(s.tmp / "bad.jsonl", "{\"text\": \"fine\"}\n{\"text\": 5}\n");
  ExpectBad(args(s.tmp / "bad.jsonl", "16"), ":2");
  test::WriteFile(s.tmp / "bad2.jsonl", "{\"text\": \"fine\"}\n\n{not json\n");
  ExpectBad(args(s.tmp / "bad2.jsonl", "16"), ":3");
  ExpectBad(args(s.data, "65"), "longer than the model's context");
  std::vector<std::string> t = args(s.data, "16");
  t.insert(t.end(), {"--targets", "q_proj,bogus"});
  ExpectBad(t, "unknown target module 'bogus'");
  // An adapter trained for another base shape is refused on load.
  ASSERT_EQ(RunCli(TrainArgs(s, s.tmp / "ad", "1")).exit_code, 0);
  auto j = nlohmann::json::parse(ReadTextFile(s.tmp / "config.json"));
  j["hidden_size"] = 32;
  j["num_attention_heads"] = 2;
  j["num_key_value_heads"] = 1;
  test::WriteFile(s.tmp / "other.json", j.dump());
  ASSERT_EQ(RunCli({"init", "--config", s.tmp / "other.json", "--out", s.tmp / "other"}).exit_code,
            0);
  ExpectBad(
      {"eval", "--model", s.tmp / "other", "--token-ids", s.tmp / "ids", "--adapter", s.tmp / "ad"},
      "");
  test::WriteFile(s.tmp / "ids", "1 2 3\n");
  ExpectBad(
      {"eval", "--model", s.tmp / "other", "--token-ids", s.tmp / "ids", "--adapter", s.tmp / "ad"},
      "maybe wrong base model?");
  ExpectBad({"train", "--model", s.model, "--data", s.data, "--out", s.tmp / "nock", "--steps", "2",
             "--seq-len", "16", "--resume"},
            "holds no checkpoint");
  // --quantize: a block format only, its flags only with it, not with --bf16, and rows the
  // blocks divide (this model's down_proj rows hold 96 weights: nf4's blocks are 64).
  auto quant = [&](std::vector<std::string> flags) {
    std::vector<std::string> a = args(s.data, "16");
    a.insert(a.end(), flags.begin(), flags.end());
    return a;
  };
  ExpectBad(quant({"--quantize", "q5_1"}), "q5_1");
  ExpectBad(quant({"--quantize", "f32"}), "--quantize: expected q8_0, q4_0 or nf4, got f32");
  ExpectBad(quant({"--double-quant"}), "need --quantize");
  ExpectBad(quant({"--quantize-head"}), "need --quantize");
  ExpectBad(quant({"--quantize", "q8_0", "--double-quant"}), "only with --quantize nf4");
  ExpectBad(quant({"--quantize", "q8_0", "--bf16"}), "--bf16 with --quantize");
  ExpectBad(quant({"--quantize", "nf4"}), "down_proj.weight");
  ExpectBad({"eval", "--model", s.model, "--data", s.data, "--quantize", "nf4"},
            "down_proj.weight");
  // --bf16 needs a BF16 base (this one is F32).
  t = args(s.data, "16");
  t.push_back("--bf16");
  ExpectBad(t, "holds no BF16 matrix");
}

TEST(TrainCli, NonFiniteLossStopsWithTheStepNamedAndNonFiniteWeightsAreNotQuantised) {
  TrainSetup s;
  // Poison the final norm's weights with +inf: the loss is non-finite at step 1.
  const std::string path = s.model + "/model.safetensors";
  std::string bytes = ReadTextFile(path);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(bytes[static_cast<size_t>(i)]);
  auto header = nlohmann::json::parse(bytes.substr(8, n));
  const uint64_t begin = header["model.norm.weight"]["data_offsets"][0].get<uint64_t>();
  const float inf = INFINITY;
  std::memcpy(&bytes[8 + n + begin], &inf, 4);
  test::WriteFile(path, bytes);
  test::CliResult r = RunCli(TrainArgs(s, s.tmp / "out", "3"));
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("non-finite loss at step 1"), std::string::npos) << r.err;
  EXPECT_FALSE(FileExists(s.tmp / "out/adapter_model.safetensors"));  // nothing bogus written
  // Quantised on load, a NaN in a matrix is refused with the tensor and its row named.
  const auto& q = header["model.layers.0.self_attn.q_proj.weight"];
  const int64_t cols = q["shape"][1].get<int64_t>();
  const float nan = NAN;
  std::memcpy(&bytes[8 + n + q["data_offsets"][0].get<uint64_t>() + 4 * (3 * cols + 5)], &nan, 4);
  test::WriteFile(path, bytes);
  for (const char* format : {"q8_0", "q4_0", "nf4"}) {
    std::vector<std::string> a = TrainArgs(s, s.tmp / "out", "3");
    a.insert(a.end(), {"--quantize", format});
    r = RunCli(a);
    EXPECT_EQ(r.exit_code, 2) << r.err;
    EXPECT_NE(r.err.find("'model.layers.0.self_attn.q_proj.weight' holds a non-finite weight in "
                         "row 3"),
              std::string::npos)
        << r.err;
  }
}

}  // namespace
}  // namespace tinylora
