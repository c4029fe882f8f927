// tinylora quickstart end to end on a slice of Debian's fortunes (packages fortunes,
// fortunes-de, -es, -it; scripts/setup.sh installs them): every stage's outputs, losses that
// are finite and fall, adapters that beat the English base off English, the table, and a
// second run that reuses every stage while a changed option rebuilds only what it touches.
// Also the stage cache itself: keys, reuse, and failed or interrupted builds never reused.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>

#include "cli/stage_cache.h"
#include "test_util.h"
#include "util/file.h"

namespace tinylora {
namespace {

namespace fs = std::filesystem;
using test::RunCli;

const char* kFortunes = "/usr/share/games/fortunes";

// stage name → its directory (the one complete directory NAME-<16 hex digits>).
std::map<std::string, std::string> StageDirs(const std::string& root) {
  std::map<std::string, std::string> dirs;
  for (const auto& e : fs::directory_iterator(root)) {
    const std::string n = e.path().filename().string();
    EXPECT_EQ(n.find(".tmp-"), std::string::npos) << "temporary left behind: " << n;
    const size_t dash = n.rfind('-');
    EXPECT_EQ(n.size() - dash - 1, 16u) << n;
    EXPECT_TRUE(dirs.emplace(n.substr(0, dash), e.path().string()).second) << "twice: " << n;
  }
  return dirs;
}

std::vector<std::string> Args(const std::string& work, const std::string& out, int depth) {
  return {"quickstart",
          "--work-dir",
          work,
          "--out",
          out,
          "--max-docs",
          "150",
          "--eval-docs",
          "20",
          "--base-steps",
          "40",
          "--steps",
          "20",
          "--batch-size",
          "4",
          "--seq-len",
          "64",
          "--vocab-size",
          "400",
          "--tree-depth",
          std::to_string(depth),
          "--threads",
          "2"};
}

TEST(Quickstart, RunsEveryStageThenReusesThem) {
  ASSERT_TRUE(IsDirectory(std::string(kFortunes) + "/de") &&
              IsDirectory(std::string(kFortunes) + "/es") &&
              IsDirectory(std::string(kFortunes) + "/it"))
      << "install fortunes fortunes-de fortunes-es fortunes-it (scripts/setup.sh)";
  test::TempDir tmp;
  const std::string work = tmp / "work", stages = tmp / "work/stages";

  // ---- first run: builds everything
  const test::CliResult r1 = RunCli(Args(work, tmp / "run1", 2));
  ASSERT_EQ(r1.exit_code, 0) << r1.err;
  for (int i = 1; i <= 7; ++i)
    EXPECT_NE(r1.err.find("[" + std::to_string(i) + "/7]"), std::string::npos) << i;
  EXPECT_NE(r1.err.find("pretraining the base"), std::string::npos);
  EXPECT_NE(r1.err.find("step 40/40 | loss"), std::string::npos);  // the trainer's progress

  std::map<std::string, std::string> d1 = StageDirs(stages);
  for (const char* s :
       {"data", "tokenizer", "base", "lora", "tree", "eval-base", "eval-lora", "eval-tree"}) {
    ASSERT_TRUE(d1.count(s)) << s;
    EXPECT_TRUE(FileExists(JoinPath(d1[s], "stage.json"))) << s;
  }
  for (const char* f : {"en.train.jsonl", "mixed.train.jsonl", "de.eval.jsonl", "corpus.txt"})
    EXPECT_TRUE(FileExists(JoinPath(d1["data"], f))) << f;
  EXPECT_TRUE(FileExists(JoinPath(d1["tokenizer"], "tokenizer.model")));
  for (const char* f :
       {"config.json", "model.safetensors", "tokenizer.model", "metrics.jsonl", "loss.svg"})
    EXPECT_TRUE(FileExists(JoinPath(d1["base"], f))) << f;
  EXPECT_FALSE(fs::exists(JoinPath(d1["base"], "checkpoint")));
  for (const char* s : {"lora", "tree"}) {
    EXPECT_TRUE(FileExists(JoinPath(d1[s], "adapter_model.safetensors"))) << s;
    EXPECT_TRUE(FileExists(JoinPath(d1[s], "metrics.jsonl"))) << s;
  }

  // The base learned: every logged loss finite; the validation loss (fixed windows, unlike
  // the training batches) falls from its first evaluation to its last, and far below the
  // ln(vocab) of the untrained model.
  const auto base_metrics = test::ReadJsonLines(JoinPath(d1["base"], "metrics.jsonl"));
  std::vector<double> val;
  for (const auto& m : base_metrics) {
    EXPECT_TRUE(std::isfinite(m["loss"].get<double>())) << m;
    if (m.contains("val_loss")) val.push_back(m["val_loss"]);
  }
  ASSERT_GE(val.size(), 2u);
  EXPECT_TRUE(std::isfinite(val.front()) && std::isfinite(val.back()));
  EXPECT_LT(val.back(), val.front());
  EXPECT_LT(val.back(), std::log(400.0) - 1.0);

  // The run folder: the table, the JSON, each training stage's metrics and loss curve.
  const std::string run1 = tmp / "run1";
  for (const char* f :
       {"results.md", "results.json", "base/metrics.jsonl", "base/loss.svg", "lora/metrics.jsonl",
        "lora/loss.svg", "tree/metrics.jsonl", "tree/loss.svg"})
    EXPECT_TRUE(FileExists(JoinPath(run1, f))) << f;
  const std::string md = ReadTextFile(JoinPath(run1, "results.md"));
  EXPECT_NE(md.find("| variant | en | de | es | it |"), std::string::npos) << md;
  for (const char* row : {"\n| base (no adapter) |", "\n| LoRA r=8 |", "\n| tree d=2, 4 leaves"})
    EXPECT_NE(md.find(row), std::string::npos) << row << "\n" << md;
  EXPECT_NE(md.find("| de | "), std::string::npos);  // a leaf-usage row per language

  const nlohmann::json res = nlohmann::json::parse(ReadTextFile(JoinPath(run1, "results.json")));
  ASSERT_EQ(res["variants"].size(), 3u);
  std::map<std::string, nlohmann::json> by;
  for (const auto& v : res["variants"]) by[v["variant"]] = v["languages"];
  for (const char* lang : {"en", "de", "es", "it"}) {
    for (const char* v : {"base", "lora", "tree"}) {
      const double loss = by[v][lang]["loss"];
      EXPECT_TRUE(std::isfinite(loss) && loss > 0) << v << " " << lang;
      EXPECT_GT(by[v][lang]["tokens"].get<int64_t>(), 100) << v << " " << lang;
    }
  }
  for (const char* lang : {"de", "es", "it"}) {  // trained on them, the adapters beat the base
    EXPECT_LT(by["lora"][lang]["loss"].get<double>(), by["base"][lang]["loss"].get<double>())
        << lang;
    EXPECT_LT(by["tree"][lang]["loss"].get<double>(), by["base"][lang]["loss"].get<double>())
        << lang;
  }
  for (const char* lang : {"en", "de", "es", "it"}) {  // every token of each block has a leaf
    const auto& usage = res["tree_leaf_usage"][lang];
    double sum = 0;
    for (double p : usage["mean_percent"]) sum += p;
    EXPECT_NEAR(sum, 100.0, 1e-6) << lang;
    ASSERT_EQ(usage["per_block_tokens"].size(), 6u);  // the tiny preset's blocks
    // Each block routes every token forwarded: the scored ones plus the first of each
    // 128-token window (windows overlap by one).
    const int64_t scored = by["tree"][lang]["tokens"];
    for (const auto& block : usage["per_block_tokens"]) {
      int64_t routed = 0;
      for (const auto& n : block) routed += n.get<int64_t>();
      EXPECT_EQ(routed, scored + (scored + 126) / 127) << lang;
    }
  }
  const auto& lora_v = res["variants"][1];
  const auto& tree_v = res["variants"][2];
  EXPECT_EQ(tree_v["trainable_params"].get<int64_t>(),
            4 * lora_v["trainable_params"].get<int64_t>() + 6 * 3 * 257);  // leaves + routers
  EXPECT_EQ(tree_v["active_params_per_token"].get<int64_t>(),
            lora_v["active_params_per_token"].get<int64_t>() + 6 * 2 * 257);
  EXPECT_GT(res["variants"][0]["decode_tokens_per_s"].get<double>(), 0);

  // stdout: JSON lines only, the last naming the run folder and every stage as built.
  const auto out1 = test::ParseJsonLines(r1.out);
  ASSERT_FALSE(out1.empty());
  EXPECT_EQ(out1.back()["run_dir"], run1);
  for (const auto& st : out1.back()["stages"]) EXPECT_FALSE(st["cached"].get<bool>()) << st;

  // ---- second run, same options: every stage reused, nothing retrained
  const auto base_mtime = fs::last_write_time(JoinPath(d1["base"], "model.safetensors"));
  const test::CliResult r2 = RunCli(Args(work, tmp / "run2", 2));
  ASSERT_EQ(r2.exit_code, 0) << r2.err;
  EXPECT_EQ(r2.err.find("step 1/"), std::string::npos) << "retrained:\n" << r2.err;
  EXPECT_NE(r2.err.find("cached"), std::string::npos);
  const auto out2 = test::ParseJsonLines(r2.out);
  ASSERT_FALSE(out2.empty());
  for (const auto& st : out2.back()["stages"]) EXPECT_TRUE(st["cached"].get<bool>()) << st;
  EXPECT_EQ(StageDirs(stages), d1);
  EXPECT_EQ(fs::last_write_time(JoinPath(d1["base"], "model.safetensors")), base_mtime);
  EXPECT_EQ(ReadTextFile(tmp / "run2/base/metrics.jsonl"),
            ReadTextFile(run1 + "/base/metrics.jsonl"));

  // ---- third run, another tree depth: only the tree and its evaluation are rebuilt
  const test::CliResult r3 = RunCli(Args(work, tmp / "run3", 1));
  ASSERT_EQ(r3.exit_code, 0) << r3.err;
  const auto out3 = test::ParseJsonLines(r3.out);
  ASSERT_FALSE(out3.empty());
  std::map<std::string, bool> cached;
  for (const auto& st : out3.back()["stages"])
    cached[st["name"].get<std::string>()] = st["cached"].get<bool>();
  EXPECT_EQ(cached.size(), 8u);
  for (const char* s : {"data", "tokenizer", "base", "lora", "eval-base", "eval-lora"})
    EXPECT_TRUE(cached[s]) << s;
  EXPECT_FALSE(cached["tree"] || cached["eval-tree"]);
  EXPECT_EQ(fs::last_write_time(JoinPath(d1["base"], "model.safetensors")), base_mtime);
  EXPECT_NE(ReadTextFile(tmp / "run3/results.md").find("| tree d=1, 2 leaves of r=8 |"),
            std::string::npos);
  size_t dirs = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(stages)) ++dirs;
  EXPECT_EQ(dirs, d1.size() + 2);  // the new tree and its evaluation beside the old ones

  // ---- fourth run, --seeds 2: seed 1's stages reused, both adapters trained on seed 2 too,
  // and the losses of both seeds in the report
  std::vector<std::string> args4 = Args(work, tmp / "run4", 2);
  args4.insert(args4.end(), {"--seeds", "2"});
  const test::CliResult r4 = RunCli(args4);
  ASSERT_EQ(r4.exit_code, 0) << r4.err;
  const auto res4 = nlohmann::json::parse(ReadTextFile(tmp / "run4/results.json"));
  for (const char* v : {"lora", "tree"}) {
    for (const char* lang : {"en", "de", "es", "it"}) {
      const auto& x = res4["seeds"][v][lang];
      ASSERT_EQ(x["losses"].size(), 2u) << v << " " << lang;
      EXPECT_EQ(x["losses"][0].get<double>(), by[v][lang]["loss"].get<double>()) << v << lang;
      EXPECT_NE(x["losses"][0].get<double>(), x["losses"][1].get<double>()) << v << lang;
      const double a = x["losses"][0], b = x["losses"][1];
      EXPECT_NEAR(x["mean"].get<double>(), (a + b) / 2, 1e-12);
      EXPECT_NEAR(x["sd"].get<double>(), std::abs(a - b) / std::sqrt(2.0), 1e-12);
    }
  }
  EXPECT_NE(ReadTextFile(tmp / "run4/results.md").find("Over 2 seeds (1 … 2)"), std::string::npos);
}

TEST(Quickstart, BadInputIsOneErrorLine) {
  test::TempDir tmp;
  const test::CliResult r =
      RunCli({"quickstart", "--work-dir", tmp / "w", "--root", tmp / "nowhere"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("error: "), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("apt-get install fortunes"), std::string::npos) << r.err;
  const test::CliResult s = RunCli({"quickstart", "--scale", "huge"});
  EXPECT_EQ(s.exit_code, 2);
  EXPECT_NE(s.err.find("error: "), std::string::npos) << s.err;
}

TEST(StageCache, BuildsOnceAndKeysByInputs) {
  test::TempDir tmp;
  StageCache cache(tmp / "stages");
  int builds = 0;
  auto build = [&](const std::string& dir) {
    ++builds;
    test::WriteFile(JoinPath(dir, "out.txt"), "hello");
  };
  const Stage a = cache.Get("s", {{"x", 1}}, build);
  EXPECT_FALSE(a.cached);
  EXPECT_EQ(ReadTextFile(JoinPath(a.dir, "out.txt")), "hello");
  EXPECT_EQ(a.dir, tmp / "stages/s-" + a.key);
  const Stage b = cache.Get("s", {{"x", 1}}, build);
  EXPECT_TRUE(b.cached);
  EXPECT_EQ(b.dir, a.dir);
  EXPECT_EQ(builds, 1);
  const Stage c = cache.Get("s", {{"x", 2}}, build);
  EXPECT_FALSE(c.cached);
  EXPECT_NE(c.key, a.key);
  EXPECT_EQ(builds, 2);
  // Object keys are canonical: the order they were given in does not change the key.
  EXPECT_EQ(StageCache::Key({{"a", 1}, {"b", 2}}), StageCache::Key({{"b", 2}, {"a", 1}}));
}

TEST(StageCache, FailedOrInterruptedBuildsAreNeverReused) {
  test::TempDir tmp;
  StageCache cache(tmp / "stages");
  const nlohmann::json in = {{"x", 1}};
  EXPECT_THROW(cache.Get("s", in,
                         [](const std::string& dir) {
                           test::WriteFile(JoinPath(dir, "half.txt"), "half");
                           throw std::runtime_error("interrupted");
                         }),
               std::runtime_error);
  EXPECT_TRUE(fs::is_empty(tmp / "stages"));  // neither the stage nor its temporary
  // A temporary left by a process that died mid-build is removed when the stage is built.
  const pid_t child = ::fork();
  if (child == 0) ::_exit(0);
  ::waitpid(child, nullptr, 0);
  const std::string stale =
      tmp / "stages/s-" + StageCache::Key(in) + ".tmp-" + std::to_string(child);
  fs::create_directories(stale);
  test::WriteFile(JoinPath(stale, "half.txt"), "half");
  int builds = 0;
  const Stage s = cache.Get("s", in, [&](const std::string&) { ++builds; });
  EXPECT_EQ(builds, 1);
  EXPECT_FALSE(s.cached);
  EXPECT_FALSE(fs::exists(stale));
  EXPECT_FALSE(fs::exists(JoinPath(s.dir, "half.txt")));
  EXPECT_TRUE(FileExists(JoinPath(s.dir, "stage.json")));
}

}  // namespace
}  // namespace tinylora
