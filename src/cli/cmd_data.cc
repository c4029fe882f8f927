// tinylora data fortunes: the quickstart's multilingual data as JSONL (src/data/fortunes.h).
// tinylora data facts: synthetic biographies whose information is known (src/data/facts.h).
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "data/facts.h"
#include "data/fortunes.h"

namespace tinylora {

namespace {
struct FortuneOptions {
  std::string root = "/usr/share/games/fortunes", out;
  int val_every = 10;
};
}  // namespace

void AddDataCommand(CLI::App& app) {
  CLI::App* data = app.add_subcommand("data", "prepare training data");
  data->require_subcommand(1);
  auto o = std::make_shared<FortuneOptions>();
  CLI::App* cmd = data->add_subcommand(
      "fortunes", "Debian's fortune collections (en, de, es, it) as JSONL with held-out splits");
  cmd->add_option("--out", o->out, "directory for {lang}.train.jsonl and {lang}.val.jsonl")
      ->required();
  cmd->add_option("--root", o->root, "where the fortune packages put their collections");
  cmd->add_option("--val-every", o->val_every, "hold out every N-th entry of each collection")
      ->check(CLI::Range(2, 1000));
  cmd->callback([o]() {
    const std::vector<FortuneStats> stats = PrepareFortunes(o->root, o->out, o->val_every);
    std::fprintf(stderr, "%-4s %11s %9s %7s %14s\n", "lang", "collections", "train", "val",
                 "latin-1 files");
    for (const FortuneStats& s : stats) {
      std::fprintf(stderr, "%-4s %11lld %9lld %7lld %14lld\n", s.lang.c_str(),
                   static_cast<long long>(s.collections), static_cast<long long>(s.train),
                   static_cast<long long>(s.val), static_cast<long long>(s.latin1_files));
      std::cout
          << nlohmann::json{{"lang", s.lang}, {"collections", s.collections},   {"train", s.train},
                            {"val", s.val},   {"latin1_files", s.latin1_files}, {"out", o->out}}
                 .dump()
          << "\n";
    }
  });

  auto f = std::make_shared<FactsOptions>();
  CLI::App* facts = data->add_subcommand(
      "facts", "synthetic biographies (bioS): people with random facts, their exact entropy");
  facts
      ->add_option("--out", f->out,
                   "directory for people, train, probe, base (.jsonl) and entropy.json")
      ->required();
  facts->add_option("--people", f->people, "people in the target population")
      ->check(CLI::Range(int64_t{1}, int64_t{10'000'000}));
  facts->add_option("--exposures", f->exposures, "renderings of each target person in train.jsonl")
      ->check(CLI::Range(1, 100000));
  facts
      ->add_option("--base-people", f->base_people,
                   "people in the base's disjoint population (default: --people)")
      ->check(CLI::Range(int64_t{1}, int64_t{10'000'000}));
  facts
      ->add_option("--base-exposures", f->base_exposures,
                   "renderings of each base person in base.jsonl (default: --exposures)")
      ->check(CLI::Range(1, 100000));
  facts->add_option("--seed", f->seed, "draws the people, their facts and their renderings");
  facts->callback([f]() {
    const FactsResult r = WriteFacts(*f);
    std::fprintf(stderr,
                 "facts: %lld people (%.2f bits each), %lld biographies; base %lld people, %lld "
                 "biographies\n",
                 static_cast<long long>(r.people), r.bits_per_person,
                 static_cast<long long>(r.train_docs), static_cast<long long>(r.base_people),
                 static_cast<long long>(r.base_docs));
    std::cout << nlohmann::json{{"people", r.people},
                                {"base_people", r.base_people},
                                {"train_docs", r.train_docs},
                                {"base_docs", r.base_docs},
                                {"bits_per_person", r.bits_per_person},
                                {"out", f->out}}
                     .dump()
              << "\n";
  });
}

}  // namespace tinylora
