// The knowledge-capacity measurement: the synthetic biographies (data/facts) and the bits a
// model stores about them.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "data/facts.h"
#include "test_util.h"
#include "util/file.h"

namespace tinylora {
namespace {

using test::RunCli;
using test::TempDir;

TEST(Facts, ValuesAreDistinctAndTheEntropyIsTheirCount) {
  const double expected[kNumAttrs] = {std::log2(12.0 * 28 * 200), std::log2(200.0),
                                      std::log2(300.0),           std::log2(100.0),
                                      std::log2(263.0),           0.0};
  for (int a = 0; a < kNumAttrs; ++a) {
    const auto attr = static_cast<Attr>(a);
    std::set<std::string> texts;
    for (int v = 0; v < NumValues(attr); ++v) {
      const std::string t = ValueText(attr, v);
      EXPECT_EQ(t.find(". "), std::string::npos) << t;  // a value never ends a sentence early
      texts.insert(t);
    }
    EXPECT_EQ(static_cast<int>(texts.size()), NumValues(attr)) << AttrName(attr);
    EXPECT_NEAR(AttrEntropyBits(attr), expected[a], 1e-12) << AttrName(attr);
  }
  // 46.6 bits a person, as bioS.
  double total = 0;
  for (int a = 0; a < kNumAttrs; ++a) total += AttrEntropyBits(static_cast<Attr>(a));
  EXPECT_NEAR(total, 46.59, 0.01);
  EXPECT_NEAR(PersonEntropyBits(), total, 1e-12);
  EXPECT_EQ(ValueText(Attr::kBirthDate, 0), "January 1, 1900");
  EXPECT_EQ(ValueText(Attr::kBirthDate, NumValues(Attr::kBirthDate) - 1), "December 28, 2099");
  // The companies' cities: between 0 and log2 200 bits.
  EXPECT_GT(WorkCityMarginalBits(), 6.5);
  EXPECT_LT(WorkCityMarginalBits(), std::log2(200.0));
}

// The draws are uniform: the empirical entropy of 200 000 draws is within 0.01 bits of log2 of
// the count (the plug-in estimate's bias is about (V − 1) / (2 N ln 2) ≤ 0.001 bits here); the
// date's month, day and year separately.
TEST(Facts, DrawsAreUniform) {
  const std::vector<Person> people = DrawPeople(200000, 7, Population::kTarget);
  auto entropy = [](const std::map<int, int>& count, double n) {
    double h = 0;
    for (const auto& [v, c] : count) h -= c / n * std::log2(c / n);
    return h;
  };
  for (int a = 1; a < kNumDrawnAttrs; ++a) {
    std::map<int, int> count;
    for (const Person& p : people) ++count[p.value[static_cast<size_t>(a)]];
    EXPECT_NEAR(entropy(count, 200000), AttrEntropyBits(static_cast<Attr>(a)), 0.01)
        << AttrName(static_cast<Attr>(a));
  }
  std::map<int, int> month, day, year;
  for (const Person& p : people) {
    const int v = p.value[0];
    ++month[v / (28 * 200)], ++day[v / 200 % 28], ++year[v % 200];
  }
  EXPECT_NEAR(entropy(month, 200000), std::log2(12.0), 0.01);
  EXPECT_NEAR(entropy(day, 200000), std::log2(28.0), 0.01);
  EXPECT_NEAR(entropy(year, 200000), std::log2(200.0), 0.01);
}

TEST(Facts, PopulationsAreDeterministicUniqueAndDisjoint) {
  const std::vector<Person> a = DrawPeople(3000, 1, Population::kTarget);
  const std::vector<Person> b = DrawPeople(3000, 1, Population::kTarget);
  const std::vector<Person> prefix = DrawPeople(1000, 1, Population::kTarget);
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].name, b[i].name);
    EXPECT_EQ(a[i].value, b[i].value);
    if (i < prefix.size()) {
      EXPECT_EQ(a[i].name, prefix[i].name);
    }
  }
  EXPECT_NE(DrawPeople(1, 2, Population::kTarget)[0].name, a[0].name);
  std::set<std::string> target;
  for (uint64_t seed : {1, 2, 3}) {
    for (const Person& p : DrawPeople(3000, seed, Population::kTarget)) target.insert(p.name);
  }
  EXPECT_GT(target.size(), 8900u);  // unique within a population (a seed's 3000 all distinct)
  std::set<std::string> seen;
  for (const Person& p : a) EXPECT_TRUE(seen.insert(p.name).second) << p.name;
  for (uint64_t seed : {1, 2, 3, 4}) {
    for (const Person& p : DrawPeople(3000, seed, Population::kBase))
      EXPECT_EQ(target.count(p.name), 0u) << p.name << " is in both populations";
  }
  // The work city is the employer's, for everyone.
  std::map<int, int> city_of;
  for (const Person& p : a) {
    const auto [it, fresh] = city_of.emplace(p.value[4], p.value[5]);
    if (!fresh) {
      EXPECT_EQ(it->second, p.value[5]) << p.name;
    }
  }
}

// Every rendering parses back to the person's facts, the spans hold the values, every template
// of every attribute is used, and the orders vary.
TEST(Facts, EveryTemplateParsesBackToItsFacts) {
  const std::vector<Person> people = DrawPeople(200, 5, Population::kTarget);
  std::set<std::string> heads, firsts;
  for (size_t i = 0; i < people.size(); ++i) {
    const Person& p = people[i];
    for (uint64_t key = 0; key < 10; ++key) {
      const Biography b = Render(p, key * 1000 + i);
      Person q;
      std::string why;
      ASSERT_TRUE(ParseBiography(b.text, p.name, &q, &why)) << why << ": " << b.text;
      EXPECT_EQ(q.value, p.value) << b.text;
      std::set<int> attrs;
      for (const ValueSpan& s : b.spans) {
        attrs.insert(static_cast<int>(s.attr));
        EXPECT_EQ(b.text.substr(s.begin, s.end - s.begin),
                  ValueText(s.attr, p.value[static_cast<size_t>(s.attr)]));
        EXPECT_EQ(b.text[s.end], '.');
        EXPECT_EQ(b.text[s.begin - 1], ' ');
        // The sentence's head: from the last full stop (or the start) to the value.
        const size_t stop = b.text.rfind(". ", s.begin);
        const size_t from = stop == std::string::npos ? 0 : stop + 2;
        heads.insert(std::to_string(static_cast<int>(s.attr)) + ":" +
                     b.text.substr(from + p.name.size(), s.begin - from - p.name.size()));
      }
      EXPECT_EQ(attrs.size(), static_cast<size_t>(kNumAttrs));
      firsts.insert(std::to_string(static_cast<int>(b.spans[0].attr)));
    }
  }
  int templates = 0;
  for (int a = 0; a < kNumAttrs; ++a) templates += NumTemplates(static_cast<Attr>(a));
  EXPECT_EQ(static_cast<int>(heads.size()), templates);
  EXPECT_EQ(firsts.size(), static_cast<size_t>(kNumAttrs));  // every attribute comes first
  // A wrong value, a wrong name and a truncated text are refused.
  const Biography b = Render(people[0], 1);
  Person q;
  std::string why;
  std::string bad = b.text;
  bad.replace(b.spans[2].begin, b.spans[2].end - b.spans[2].begin, "Nowhere At All");
  EXPECT_FALSE(ParseBiography(bad, people[0].name, &q, &why));
  EXPECT_FALSE(ParseBiography(b.text, people[1].name, &q, &why));
  EXPECT_FALSE(ParseBiography(b.text.substr(0, b.text.size() - 1), people[0].name, &q, &why));
}

TEST(Facts, DataFactsWritesTheFilesDeterministically) {
  TempDir tmp;
  auto run = [&](const std::string& out, const std::string& seed) {
    return RunCli({"data", "facts", "--people", "30", "--exposures", "4", "--base-people", "20",
                   "--base-exposures", "3", "--seed", seed, "--out", tmp / out});
  };
  const auto r = run("a", "9");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ASSERT_EQ(run("b", "9").exit_code, 0);
  ASSERT_EQ(run("c", "10").exit_code, 0);
  for (const char* f :
       {"people.jsonl", "train.jsonl", "probe.jsonl", "base.jsonl", "entropy.json"}) {
    EXPECT_EQ(ReadTextFile(tmp / "a/" + f), ReadTextFile(tmp / "b/" + f)) << f;
    EXPECT_NE(ReadTextFile(tmp / "a/" + f), ReadTextFile(tmp / "c/" + f)) << f;
  }
  const auto result = nlohmann::json::parse(r.out);
  EXPECT_EQ(result["train_docs"], 120);
  EXPECT_EQ(result["base_docs"], 60);
  const auto people = test::ReadJsonLines(tmp / "a/people.jsonl");
  const auto train = test::ReadJsonLines(tmp / "a/train.jsonl");
  const auto probes = test::ReadJsonLines(tmp / "a/probe.jsonl");
  ASSERT_EQ(people.size(), 30u);
  ASSERT_EQ(probes.size(), 30u);
  ASSERT_EQ(train.size(), 120u);
  // Each person's four exposures are renderings of the same facts; the probe is one more.
  std::map<std::string, std::vector<size_t>> lines_of;
  const std::vector<Person> drawn = DrawPeople(30, 9, Population::kTarget);
  for (size_t k = 0; k < train.size(); ++k) {
    const std::string text = train[k]["text"];
    for (const Person& p : drawn) {
      if (text.compare(0, p.name.size() + 1, p.name + " ") == 0 ||
          text.compare(0, p.name.size() + 2, p.name + "'s") == 0)
        lines_of[p.name].push_back(k);
    }
  }
  ASSERT_EQ(lines_of.size(), 30u);
  for (size_t i = 0; i < drawn.size(); ++i) {
    EXPECT_EQ(people[i]["name"], drawn[i].name);
    EXPECT_EQ(people[i]["employer"], ValueText(Attr::kEmployer, drawn[i].value[4]));
    const auto& lines = lines_of[drawn[i].name];
    ASSERT_EQ(lines.size(), 4u) << drawn[i].name;
    std::set<std::string> renderings;
    for (size_t k : lines) {
      Person q;
      std::string why;
      ASSERT_TRUE(ParseBiography(train[k]["text"], drawn[i].name, &q, &why)) << why;
      EXPECT_EQ(q.value, drawn[i].value);
      renderings.insert(train[k]["text"]);
    }
    EXPECT_GE(renderings.size(), 3u);  // re-rendered at every exposure
    EXPECT_EQ(probes[i]["name"], drawn[i].name);
    const std::string text = probes[i]["text"];
    for (const auto& v : probes[i]["values"]) {
      const size_t b = v[1], e = v[2];
      const std::string attr = v[0];
      EXPECT_EQ(text.substr(b, e - b), people[i][attr].get<std::string>());
    }
  }
  // The base population shares no name with the target one.
  for (const auto& d : test::ReadJsonLines(tmp / "a/base.jsonl")) {
    const std::string text = d["text"];
    for (const auto& p : people) EXPECT_NE(text.find(p["name"].get<std::string>()), 0u);
  }
  const auto entropy = nlohmann::json::parse(ReadTextFile(tmp / "a/entropy.json"));
  EXPECT_NEAR(entropy["bits_per_person"].get<double>(), 46.59, 0.01);
  EXPECT_EQ(entropy["attributes"]["university"]["values"], 300);
  EXPECT_EQ(entropy["attributes"]["work_city"]["bits"], 0.0);

  const auto bad = RunCli({"data", "facts", "--people", "0", "--out", tmp / "d"});
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_NE(bad.err.find("--people"), std::string::npos) << bad.err;
  EXPECT_FALSE(FileExists(tmp / "d/train.jsonl"));
}

// The bits measure on a case with a known answer: a model trained (one pass, 1000 renderings of
// each) on two people stores nearly all their 2 × 46.6 bits and recalls every value; a model
// trained only on the disjoint base population stores none.
TEST(FactBits, AMemorisedPopulationStoresItsEntropyAndTheBaseStoresNone) {
  TempDir tmp;
  ASSERT_EQ(RunCli({"data", "facts", "--people", "2", "--exposures", "1000", "--base-people", "300",
                    "--base-exposures", "2", "--seed", "1", "--out", tmp / "d"})
                .exit_code,
            0);
  const auto t = RunCli({"tokenizer", "train", "--data", tmp / "d/base.jsonl", "--out", tmp / "tok",
                         "--vocab-size", "600"});
  ASSERT_EQ(t.exit_code, 0) << t.err;
  nlohmann::json config =
      nlohmann::json::parse(ReadTextFile(test::FixturePath("forward/gqa/config.json")));
  config["vocab_size"] = 600;
  config["max_position_embeddings"] = 320;  // a biography is 150-250 tokens here
  config["intermediate_size"] = 128;
  test::WriteFile(tmp / "config.json", config.dump());
  auto pretrain = [&](const std::string& data, const std::string& out) {
    return RunCli({"pretrain",
                   "--config",
                   tmp / "config.json",
                   "--tokenizer",
                   tmp / "tok/tokenizer.model",
                   "--data",
                   data,
                   "--out",
                   out,
                   "--epochs",
                   "1",
                   "--batch-size",
                   "2",
                   "--seq-len",
                   "320",
                   "--lr",
                   "3e-3",
                   "--val-fraction",
                   "0",
                   "--threads",
                   "2"});
  };
  ASSERT_EQ(pretrain(tmp / "d/train.jsonl", tmp / "memorised").exit_code, 0);
  ASSERT_EQ(pretrain(tmp / "d/base.jsonl", tmp / "base").exit_code, 0);
  auto facts = [&](const std::string& model) {
    const auto r = RunCli({"eval", "--model", model, "--facts", tmp / "d/probe.jsonl"});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return nlohmann::json::parse(r.out)["facts"];
  };
  const nlohmann::json m = facts(tmp / "memorised"), b = facts(tmp / "base");
  const double entropy = 2 * 46.5916;
  EXPECT_EQ(m["people"], 2);
  EXPECT_GT(m["bits"].get<double>(), 0.9 * entropy);
  EXPECT_LE(m["bits"].get<double>(), entropy);
  EXPECT_LT(b["bits"].get<double>(), 0.05 * entropy);
  for (const auto& j : {m, b}) {
    double sum = 0;
    for (auto it = j["attributes"].begin(); it != j["attributes"].end(); ++it) {
      const auto& a = it.value();
      const double h = a["entropy_bits"], ce = a["cross_entropy_bits"];
      // Floored after averaging over the people; the work city (0 bits of its own) never counts.
      EXPECT_NEAR(a["bits"].get<double>(), h > 0 ? std::max(0.0, 2 * (h - ce)) : 0.0, 1e-9)
          << it.key();
      EXPECT_GE(ce, 0.0);
      sum += a["bits"].get<double>();
    }
    EXPECT_NEAR(sum, j["bits"].get<double>(), 1e-9);
  }
  for (auto it = m["attributes"].begin(); it != m["attributes"].end(); ++it)
    EXPECT_EQ(it.value()["recall"], 1.0) << it.key();
  for (auto it = b["attributes"].begin(); it != b["attributes"].end(); ++it) {
    EXPECT_EQ(it.value()["recall"], 0.0) << it.key();
    if (it.key() != "work_city") {  // the base knows the companies' cities: not a fact of theirs
      EXPECT_GT(it.value()["cross_entropy_bits"].get<double>(),
                0.9 * it.value()["entropy_bits"].get<double>())
          << it.key();
    }
  }

  // A probe file that is not one: one error line.
  test::WriteFile(tmp / "bad.jsonl", "{\"text\": \"x\", \"values\": []}\n");
  const auto r = RunCli({"eval", "--model", tmp / "base", "--facts", tmp / "bad.jsonl"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("error: " + tmp / "bad.jsonl" + ":1: not a probe"), std::string::npos)
      << r.err;
}

// The experiment's smallest scale end to end: every variant's row, bits never above the facts'
// entropy nor below 0, the plot and the table; a second run reuses every stage.
TEST(Experiment, CapacityAtTheTestScaleReportsEveryVariant) {
  TempDir tmp;
  const std::vector<std::string> args = {"experiment", "capacity",   "--scale", "test",
                                         "--work-dir", tmp / "work", "--out",   tmp / "out"};
  const auto r = RunCli(args);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto report = nlohmann::json::parse(ReadTextFile(tmp / "out/report.json"));
  const double facts_bits = report["facts_bits"];
  EXPECT_NEAR(facts_bits, 6 * 46.5916, 0.01);
  std::vector<std::string> ids;
  for (const auto& v : report["variants"]) {
    ids.push_back(v["id"]);
    EXPECT_GE(v["bits_mean"].get<double>(), 0.0) << v["id"];
    EXPECT_LE(v["bits_mean"].get<double>(), facts_bits) << v["id"];
    ASSERT_EQ(v["per_seed"].size(), 1u);
    for (int a = 0; a < kNumDrawnAttrs; ++a) {
      const auto& x = v["per_seed"][0]["attributes"][AttrName(static_cast<Attr>(a))];
      EXPECT_LE(x["bits"].get<double>(), 6 * x["entropy_bits"].get<double>() + 1e-9);
    }
    EXPECT_GT(v["decode_tokens_per_s"].get<double>(), 0.0);
    if (v["kind"] != "base") {
      EXPECT_GT(v["params"].get<double>(), 0.0);
      EXPECT_LE(v["active_params"].get<double>(), v["params"].get<double>());
    }
  }
  // The test scale: LoRA ranks 1 and 2, one tree of depth 1 (its dense comparator, rank 2, is
  // the rank-2 LoRA).
  EXPECT_EQ(ids, (std::vector<std::string>{"base", "lora-r1", "lora-r2", "tree-d1"}));
  const auto& tree = report["variants"][3];
  EXPECT_LT(tree["active_params"].get<double>(), tree["params"].get<double>());
  EXPECT_FALSE(report["variants"][3]["per_seed"][0]["routing"].is_null());
  const std::string md = ReadTextFile(tmp / "out/report.md");
  for (const auto& id : ids) EXPECT_NE(md.find("| " + id + " |"), std::string::npos) << id;
  EXPECT_NE(ReadTextFile(tmp / "out/capacity.svg").find("<polyline"), std::string::npos);
  // Again: nothing is built, the report is the same.
  const std::vector<std::string> again = {"experiment", "capacity",   "--scale", "test",
                                          "--work-dir", tmp / "work", "--out",   tmp / "out2"};
  const auto r2 = RunCli(again);
  ASSERT_EQ(r2.exit_code, 0) << r2.err;
  EXPECT_EQ(r2.err.find("built "), std::string::npos) << r2.err;
  EXPECT_EQ(ReadTextFile(tmp / "out2/report.md"), md);
  // Other people: new facts and adapters, the same base population, tokenizer and base.
  const auto r3 = RunCli({"experiment", "capacity", "--scale", "test", "--people", "4",
                          "--work-dir", tmp / "work", "--out", tmp / "out3"});
  ASSERT_EQ(r3.exit_code, 0) << r3.err;
  std::map<std::string, int> stages;
  for (const auto& e : std::filesystem::directory_iterator(tmp / "work/stages")) {
    const std::string n = e.path().filename().string();
    ++stages[n.substr(0, n.rfind('-'))];
  }
  EXPECT_EQ(stages["base-data"], 1);
  EXPECT_EQ(stages["tokenizer"], 1);
  EXPECT_EQ(stages["base"], 1);
  EXPECT_EQ(stages["facts"], 2);
  EXPECT_EQ(stages["adapter-lora-r1"], 2);
  EXPECT_NEAR(
      nlohmann::json::parse(ReadTextFile(tmp / "out3/report.json"))["facts_bits"].get<double>(),
      4 * 46.5916, 0.01);
}

}  // namespace
}  // namespace tinylora
