// tinylora data fortunes: the quickstart's multilingual data as JSONL (src/data/fortunes.h).
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli/common.h"
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
}

}  // namespace tinylora
