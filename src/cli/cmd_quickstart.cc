// tinylora quickstart: the embedded default job (DESIGN.md §3). Debian's fortune collections
// in four languages → a SentencePiece tokenizer on all of them → a `tiny` base pretrained on
// English only → a rank-r LoRA and a depth-d tree-LoRA (same steps, data and seed) on the mixed
// languages → held-out loss per language, active parameters per token, decode speed, the
// tree's leaf usage per language and a sample per language → results.md / results.json.
//
// Every stage runs in-process (the commands' functions, cli/commands.h) and is cached in
// WORK/stages/ under a key of its inputs (cli/stage_cache.h): a second run reuses what did not
// change. Everything a run writes lands in one folder, WORK/runs/<YYYYmmdd-HHMMSS>/ or --out.
#include <omp.h>
#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/commands.h"
#include "cli/common.h"
#include "cli/stage_cache.h"
#include "data/fortunes.h"
#include "util/error.h"
#include "util/file.h"

namespace tinylora {

namespace {

namespace fs = std::filesystem;

constexpr int kStages = 7;
constexpr int kValEvery = 10;      // fortunes' held-out split (as `data fortunes`)
constexpr int kContext = 128;      // eval window
constexpr int kPromptWords = 4;    // a sample's prompt: the first words of a held-out entry
constexpr int kSampleTokens = 48;  // new tokens per sample
constexpr int kSpeedTokens = 128;  // greedy tokens of the decode-speed measurement
constexpr int kCacheVersion = 5;   // in every stage key: bump when a stage changes its output

struct Scale {
  int vocab;
  int64_t base_steps, steps;
  int batch_size, seq_len;
  int64_t eval_docs;  // held-out entries scored per language (0: all)
};

// small must finish in 5 minutes on 2 cores; the others trade time for quality.
const std::map<std::string, Scale>& Scales() {
  static const std::map<std::string, Scale> s = {
      {"small", {2000, 300, 200, 8, 128, 300}},
      {"medium", {4000, 1200, 600, 8, 128, 1000}},
      {"large", {4000, 3000, 1200, 8, 256, 0}},
  };
  return s;
}

struct QuickstartOptions {
  std::string scale = "small", work_dir, out, root = "/usr/share/games/fortunes";
  int64_t max_docs = 0;    // training entries per language (0: all)
  int64_t eval_docs = -1;  // -1: the scale's
  int64_t base_steps = 0, steps = 0;
  int batch_size = 0, seq_len = 0, vocab_size = 0;  // 0: the scale's
  int rank = 8, tree_depth = 2;
  uint64_t seed = 1;
  int seeds = 1;  // > 1: the adapters again on seeds seed+1 … seed+K−1, mean ± spread of losses
  int threads = 0;
};

double LoadAverage() {
  double l = -1;
  if (std::FILE* f = std::fopen("/proc/loadavg", "r")) {
    if (std::fscanf(f, "%lf", &l) != 1) l = -1;
    std::fclose(f);
  }
  return l;
}

// Names, sizes and modification times of every entry of the collections' directories: the
// data stage is rebuilt when a fortune package is installed, removed or updated.
nlohmann::json FingerprintFortunes(const std::string& root) {
  nlohmann::json fp = nlohmann::json::object();
  for (const FortuneLanguage& lang : FortuneLanguages()) {
    const std::string dir = lang.subdir.empty() ? root : JoinPath(root, lang.subdir);
    nlohmann::json files = nlohmann::json::array();
    if (IsDirectory(dir)) {
      std::vector<std::string> names;
      for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().string());
      std::sort(names.begin(), names.end());
      for (const std::string& p : names) {
        struct stat st;
        if (::lstat(p.c_str(), &st) != 0) continue;
        files.push_back({fs::path(p).filename().string(), static_cast<int64_t>(st.st_size),
                         static_cast<int64_t>(st.st_mtime)});
      }
    }
    fp[lang.code] = files;
  }
  return fp;
}

std::vector<std::string> ReadLines(const std::string& path) {
  std::vector<std::string> lines;
  std::istringstream in(ReadTextFile(path));
  for (std::string line; std::getline(in, line);) {
    if (!line.empty()) lines.push_back(line);
  }
  return lines;
}

// `k` entries spread evenly over `all` (all of them when k is 0 or at least their number).
std::vector<std::string> Spread(const std::vector<std::string>& all, int64_t k) {
  const int64_t n = static_cast<int64_t>(all.size());
  if (k <= 0 || k >= n) return all;
  std::vector<std::string> picked;
  for (int64_t i = 0; i < k; ++i) picked.push_back(all[static_cast<size_t>(i * n / k)]);
  return picked;
}

std::string Join(const std::vector<std::string>& lines) {
  std::string s;
  for (const std::string& l : lines) s += l + "\n";
  return s;
}

std::string FirstWords(const std::string& text, int n) {
  std::istringstream in(text);
  std::string word, out;
  for (int i = 0; i < n && in >> word; ++i) out += (out.empty() ? "" : " ") + word;
  return out;
}

// Data stage: the fortunes as JSONL (PrepareFortunes, in full/), then what the later stages
// read: {lang}.train.jsonl (at most --max-docs entries each), mixed.train.jsonl (all four),
// {lang}.eval.jsonl (the scored held-out entries), mixed.eval.jsonl (those, interleaved by
// language), corpus.txt (the training
// texts, plain, for the tokenizer) and prompts.json (a sample prompt per language).
void BuildData(const std::string& root, int64_t max_docs, int64_t eval_docs,
               const std::string& dir) {
  const std::string full = JoinPath(dir, "full");
  const std::vector<FortuneStats> stats = PrepareFortunes(root, full, kValEvery);
  std::string mixed, corpus;
  std::vector<std::vector<std::string>> evals;
  nlohmann::json prompts = nlohmann::json::object();
  for (const FortuneStats& s : stats) {
    const std::vector<std::string> train =
        Spread(ReadLines(JoinPath(full, s.lang + ".train.jsonl")), max_docs);
    const std::vector<std::string> eval =
        Spread(ReadLines(JoinPath(full, s.lang + ".val.jsonl")), eval_docs);
    if (eval.empty()) Fail(root + ": no held-out fortunes in " + s.lang);
    WriteFileAtomic(JoinPath(dir, s.lang + ".train.jsonl"), Join(train));
    WriteFileAtomic(JoinPath(dir, s.lang + ".eval.jsonl"), Join(eval));
    mixed += Join(train);
    evals.push_back(eval);
    for (const std::string& line : train)
      corpus += nlohmann::json::parse(line)["text"].get<std::string>() + "\n";
    prompts[s.lang] =
        FirstWords(nlohmann::json::parse(eval[0])["text"].get<std::string>(), kPromptWords);
    std::fprintf(stderr, "  %s: %zu training entries (of %lld), %zu held-out entries scored\n",
                 s.lang.c_str(), train.size(), static_cast<long long>(s.train), eval.size());
  }
  // Round robin over the languages: the trainer's validation reads the first windows only.
  std::string mixed_eval;
  for (size_t i = 0, left = 1; left > 0; ++i) {
    left = 0;
    for (const auto& e : evals) {
      if (i < e.size()) mixed_eval += e[i] + "\n";
      left += i + 1 < e.size();
    }
  }
  WriteFileAtomic(JoinPath(dir, "mixed.train.jsonl"), mixed);
  WriteFileAtomic(JoinPath(dir, "mixed.eval.jsonl"), mixed_eval);
  WriteFileAtomic(JoinPath(dir, "corpus.txt"), corpus);
  WriteFileAtomic(JoinPath(dir, "prompts.json"), prompts.dump(2) + "\n");
}

struct Variant {
  std::string id, label;  // "base" / "lora" / "tree", and the table's words
  std::string adapter;    // adapter directory, empty for the base
  int64_t trainable = 0, active = 0;
};

// Eval stage of one variant: held-out loss per language (+ the tree's routing), one sample per
// language, decode speed.
void BuildEval(const std::string& base, const Variant& v, const std::string& data,
               const std::vector<std::string>& langs, uint64_t seed, int threads,
               const std::string& dir) {
  nlohmann::json result = {{"variant", v.id}, {"languages", nlohmann::json::object()}};
  const nlohmann::json prompts =
      nlohmann::json::parse(ReadTextFile(JoinPath(data, "prompts.json")));
  for (const std::string& lang : langs) {
    EvalOptions eo;
    eo.model = base;
    eo.adapter = v.adapter;
    eo.data = JoinPath(data, lang + ".eval.jsonl");
    eo.context = kContext;
    eo.threads = threads;
    std::fprintf(stderr, "  %s %s: ", v.id.c_str(), lang.c_str());
    const EvalResult er = RunEval(eo);
    GenerateOptions go;
    go.model = base;
    go.adapter = v.adapter;
    go.prompt = prompts.at(lang).get<std::string>();
    go.max_new_tokens = kSampleTokens;
    go.sampler.seed = seed;
    go.threads = threads;
    go.stream = false;
    std::fprintf(stderr, "  %s %s sample: ", v.id.c_str(), lang.c_str());
    const GenerateResult g = RunGenerate(go);
    nlohmann::json l = er.ToJson();
    l["prompt"] = go.prompt;
    l["sample"] = g.text;
    result["languages"][lang] = l;
  }
  // Decode speed: greedy, past any end-of-text, from the English prompt.
  GenerateOptions speed;
  speed.model = base;
  speed.adapter = v.adapter;
  speed.prompt = prompts.at(langs[0]).get<std::string>();
  speed.max_new_tokens = kSpeedTokens;
  speed.greedy = speed.ignore_eos = true;
  speed.threads = threads;
  speed.stream = false;
  std::fprintf(stderr, "  %s decode speed: ", v.id.c_str());
  result["decode_tokens_per_s"] = RunGenerate(speed).decode_tokens_per_s;
  WriteFileAtomic(JoinPath(dir, "eval.json"), result.dump(2) + "\n");
}

// Mean over blocks of each block's share of tokens per leaf, in percent.
std::vector<double> MeanLeafShares(const nlohmann::json& routing) {
  std::vector<double> mean;
  const auto& blocks = routing.at("leaf_usage");
  for (const auto& block : blocks) {
    double total = 0;
    for (const auto& n : block) total += n.get<double>();
    if (mean.empty()) mean.assign(block.size(), 0.0);
    for (size_t j = 0; j < block.size() && j < mean.size(); ++j)
      mean[j] += total > 0 ? 100.0 * block[j].get<double>() / total / blocks.size() : 0.0;
  }
  return mean;
}

std::string Fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

// Digits in groups of three, as the README's tables write them.
std::string Grouped(int64_t n) {
  std::string d = std::to_string(n), out;
  for (size_t i = 0; i < d.size(); ++i) {
    if (i > 0 && (d.size() - i) % 3 == 0) out += ' ';
    out += d[i];
  }
  return out;
}

std::string OneLine(std::string s) {
  std::string out;
  for (char ch : s) {
    if (ch == '\n') {
      out += " ⏎ ";
    } else if (ch == '|') {
      out += "\\|";
    } else if (ch == '\t' || ch == '\r') {
      out += ' ';
    } else {
      out += ch;
    }
  }
  return out;
}

void CopyInto(const std::string& from, const std::string& to_dir) {
  MakeDirectories(to_dir);
  fs::copy_file(from, JoinPath(to_dir, fs::path(from).filename().string()),
                fs::copy_options::overwrite_existing);
}

void RunQuickstart(const QuickstartOptions& o) {
  const double t_start = Seconds();
  const double load_start = LoadAverage();
  SetThreads(o.threads);
  const Scale& sc = Scales().at(o.scale);
  const int vocab = o.vocab_size > 0 ? o.vocab_size : sc.vocab;
  const int64_t base_steps = o.base_steps > 0 ? o.base_steps : sc.base_steps;
  const int64_t steps = o.steps > 0 ? o.steps : sc.steps;
  const int batch = o.batch_size > 0 ? o.batch_size : sc.batch_size;
  const int seq = o.seq_len > 0 ? o.seq_len : sc.seq_len;
  const int64_t eval_docs = o.eval_docs >= 0 ? o.eval_docs : sc.eval_docs;
  const std::string work = o.work_dir.empty() ? DefaultWorkDir("quickstart") : o.work_dir;
  StageCache cache(JoinPath(work, "stages"));
  const std::string run_dir = RunDir(work, o.out);
  std::vector<std::string> langs;
  for (const FortuneLanguage& l : FortuneLanguages()) langs.push_back(l.code);
  std::fprintf(stderr,
               "tinylora quickstart, scale %s: vocab %d, base %lld steps, adapters %lld steps, "
               "batch %d x %d tokens, seed %llu\nstages cached in %s; this run's files go to %s\n",
               o.scale.c_str(), vocab, static_cast<long long>(base_steps),
               static_cast<long long>(steps), batch, seq, static_cast<unsigned long long>(o.seed),
               cache.root().c_str(), run_dir.c_str());

  // Every key also holds kCacheVersion, so outputs of older code are not reused.
  auto get = [&cache](const std::string& name, nlohmann::json inputs,
                      const std::function<void(const std::string&)>& build) {
    inputs["version"] = kCacheVersion;
    return cache.Get(name, inputs, build);
  };
  std::vector<Stage> stages;
  int n = 0;
  auto header = [&](const std::string& what) {
    std::fprintf(stderr, "\n[%d/%d] %s\n", ++n, kStages + (o.seeds > 1 ? 1 : 0), what.c_str());
  };
  auto footer = [&](const Stage& st) {
    stages.push_back(st);
    if (st.cached) {
      std::fprintf(stderr, "  cached: %s (built in %.1f s by an earlier run)\n", st.dir.c_str(),
                   st.seconds);
    } else {
      std::fprintf(stderr, "  done in %.1f s: %s\n", st.seconds, st.dir.c_str());
    }
  };

  // 1. data
  header("preparing the fortunes (en, de, es, it) from " + o.root);
  const nlohmann::json data_in = {{"stage", "data"},        {"root", o.root},
                                  {"val_every", kValEvery}, {"max_docs", o.max_docs},
                                  {"eval_docs", eval_docs}, {"files", FingerprintFortunes(o.root)}};
  const Stage data = get("data", data_in, [&](const std::string& dir) {
    BuildData(o.root, o.max_docs, eval_docs, dir);
  });
  footer(data);
  auto dfile = [&](const std::string& name) { return JoinPath(data.dir, name); };

  // 2. tokenizer
  header("training a " + std::to_string(vocab) + "-piece tokenizer on all four languages");
  const Stage tok =
      get("tokenizer", {{"data", data.key}, {"vocab", vocab}}, [&](const std::string& dir) {
        TokenizerTrainOptions to;
        to.data = {dfile("corpus.txt")};
        to.out = dir;
        to.vocab_size = vocab;
        to.threads = o.threads;
        RunTokenizerTrain(to);
      });
  footer(tok);

  // The schedule the base and both adapters share, and its part of their stage keys.
  auto set_schedule = [&](CommonTrainOptions& c, const std::string& train, const std::string& val,
                          int64_t n_steps) {
    c.data = {dfile(train)};
    c.val_data = {dfile(val)};
    c.steps = n_steps;
    c.batch_size = batch;
    c.seq_len = seq;
    c.lr = 3e-3;
    c.warmup = std::max<int64_t>(1, n_steps / 10);
    c.eval_every = std::max<int64_t>(1, n_steps / 5);
    c.eval_batches = 4;
    c.log_every = std::min<int64_t>(10, n_steps);
    c.seed = o.seed;
    c.threads = o.threads;
  };
  auto schedule_inputs = [](const CommonTrainOptions& c) {
    return nlohmann::json{{"steps", c.steps},   {"batch", c.batch_size},
                          {"seq", c.seq_len},   {"lr", c.lr},
                          {"warmup", c.warmup}, {"eval_every", c.eval_every},
                          {"seed", c.seed},     {"eval_batches", c.eval_batches}};
  };

  // 3. base
  header("pretraining the base (tiny preset) on English: " + std::to_string(base_steps) +
         " steps of " + std::to_string(batch) + "x" + std::to_string(seq) + " tokens");
  PretrainOptions po;
  po.preset = "tiny";
  po.tokenizer = JoinPath(tok.dir, "tokenizer.model");
  set_schedule(po.common, "en.train.jsonl", "en.eval.jsonl", base_steps);
  nlohmann::json base_in = schedule_inputs(po.common);
  base_in["data"] = data.key;
  base_in["tokenizer"] = tok.key;
  base_in["preset"] = po.preset;
  const Stage base = get("base", base_in, [&](const std::string& dir) {
    po.common.out = dir;
    CheckFinished(RunPretrain(po), "pretraining the base");
    DropCheckpoint(dir);
  });
  footer(base);

  // 4, 5. adapters: same data, steps, schedule and seed
  auto adapter_options = [&](int depth) {
    LoraTrainOptions lo;
    lo.model = base.dir;
    lo.targets = "all-linear";
    lo.rank = o.rank;
    lo.alpha = 2.0 * o.rank;
    lo.tree_depth = depth;
    if (depth > 0) {
      lo.routing = "soft-then-hard";
      lo.balance = 0.01;
      lo.hardening = 0.01;
    }
    set_schedule(lo.common, "mixed.train.jsonl", "mixed.eval.jsonl", steps);
    return lo;
  };
  auto adapter_inputs = [&](const LoraTrainOptions& lo) {
    nlohmann::json in = schedule_inputs(lo.common);
    in.update({{"base", base.key},
               {"data", data.key},
               {"targets", lo.targets},
               {"rank", lo.rank},
               {"alpha", lo.alpha},
               {"depth", lo.tree_depth},
               {"routing", lo.routing},
               {"balance", lo.balance},
               {"hardening", lo.hardening}});
    return in;
  };
  auto train_adapter = [&](const std::string& name, LoraTrainOptions lo, const std::string& what) {
    const Stage st = get(name, adapter_inputs(lo), [&](const std::string& dir) {
      lo.common.out = dir;
      CheckFinished(RunTrain(lo), what);
      DropCheckpoint(dir);
    });
    footer(st);
    return st;
  };
  const std::string r = std::to_string(o.rank);
  header("training a LoRA r=" + r +
         " (all linear projections) on the mixed languages: " + std::to_string(steps) + " steps");
  const Stage lora = train_adapter("lora", adapter_options(0), "training the LoRA");
  header("training a tree-LoRA depth " + std::to_string(o.tree_depth) + " (" +
         std::to_string(1 << o.tree_depth) + " leaves of r=" + r +
         ", soft-then-hard routing) on the mixed languages: " + std::to_string(steps) + " steps");
  const Stage tree = train_adapter("tree", adapter_options(o.tree_depth), "training the tree-LoRA");

  // 6. evaluation, samples, decode speed
  header("evaluating base, LoRA and tree on each language's held-out fortunes (context " +
         std::to_string(kContext) + "), one sample per language, decode speed");
  std::vector<Variant> variants = {{"base", "base (no adapter)", "", 0, 0},
                                   {"lora", "LoRA r=" + r, lora.dir, 0, 0},
                                   {"tree",
                                    "tree d=" + std::to_string(o.tree_depth) + ", " +
                                        std::to_string(1 << o.tree_depth) + " leaves of r=" + r,
                                    tree.dir, 0, 0}};
  std::vector<nlohmann::json> evals;
  double eval_seconds = 0;
  bool eval_cached = true;
  for (Variant& v : variants) {
    if (!v.adapter.empty()) {
      const AdapterParams p = CountAdapterParams(v.adapter, v.id == "tree" ? o.tree_depth : 0);
      v.trainable = p.params;
      v.active = p.active_per_token;
    }
    const nlohmann::json in = {
        {"base", base.key},
        {"adapter", v.id == "base" ? "" : (v.id == "lora" ? lora.key : tree.key)},
        {"data", data.key},
        {"context", kContext},
        {"sample_tokens", kSampleTokens},
        {"speed_tokens", kSpeedTokens},
        {"seed", o.seed}};
    const Stage st = get("eval-" + v.id, in, [&](const std::string& dir) {
      BuildEval(base.dir, v, data.dir, langs, o.seed, o.threads, dir);
    });
    eval_seconds += st.seconds;
    eval_cached = eval_cached && st.cached;
    stages.push_back(st);
    std::fprintf(stderr, "  %s: %s %s\n", v.id.c_str(), st.cached ? "cached" : "done",
                 st.dir.c_str());
    evals.push_back(nlohmann::json::parse(ReadTextFile(JoinPath(st.dir, "eval.json"))));
  }
  std::fprintf(stderr, "  %s in %.1f s\n", eval_cached ? "cached, built" : "done", eval_seconds);

  // 6b. more seeds of the two adapters (their initialisation, dropout and data order; the same
  // base and data): held-out loss per language only.
  std::map<std::string, std::map<std::string, std::vector<double>>> seed_losses;  // id, lang
  for (size_t i = 1; i < variants.size(); ++i) {
    for (const std::string& l : langs)
      seed_losses[variants[i].id][l].push_back(evals[i]["languages"][l]["loss"].get<double>());
  }
  if (o.seeds > 1) {
    header("training and evaluating the LoRA and the tree on " + std::to_string(o.seeds - 1) +
           " more seeds");
    for (int k = 1; k < o.seeds; ++k) {
      for (int depth : {0, o.tree_depth}) {
        const std::string id = depth == 0 ? "lora" : "tree";
        LoraTrainOptions lo = adapter_options(depth);
        lo.common.seed = o.seed + static_cast<uint64_t>(k);
        const Stage st = train_adapter(
            id, lo, "training the " + id + " of seed " + std::to_string(lo.common.seed));
        const Stage ev = get(
            "loss-" + id,
            {{"base", base.key}, {"adapter", st.key}, {"data", data.key}, {"context", kContext}},
            [&](const std::string& dir) {
              nlohmann::json losses = nlohmann::json::object();
              for (const std::string& l : langs) {
                EvalOptions eo;
                eo.model = base.dir;
                eo.adapter = st.dir;
                eo.data = dfile(l + ".eval.jsonl");
                eo.context = kContext;
                eo.threads = o.threads;
                losses[l] = RunEval(eo).loss;
              }
              WriteFileAtomic(JoinPath(dir, "loss.json"), losses.dump() + "\n");
            });
        footer(ev);
        const nlohmann::json losses =
            nlohmann::json::parse(ReadTextFile(JoinPath(ev.dir, "loss.json")));
        for (const std::string& l : langs) seed_losses[id][l].push_back(losses[l].get<double>());
      }
    }
  }

  // 7. report
  header("writing the report to " + run_dir);
  const std::vector<std::pair<std::string, const Stage*>> trained = {
      {"base", &base}, {"lora", &lora}, {"tree", &tree}};
  for (const auto& [id, st] : trained) {
    for (const char* f : {"metrics.jsonl", "loss.svg"})
      CopyInto(JoinPath(st->dir, f), JoinPath(run_dir, id));
  }
  const double total = Seconds() - t_start;
  const double load_end = LoadAverage();

  std::string md;
  md += "# tinylora quickstart\n\n";
  md += "Scale `" + o.scale + "`: tokenizer of " + std::to_string(vocab) +
        " pieces on all four languages; `tiny` base pretrained on English for " +
        std::to_string(base_steps) +
        " steps; LoRA and tree-LoRA trained on the mixed languages for " + std::to_string(steps) +
        " steps each (batch " + std::to_string(batch) + " x " + std::to_string(seq) +
        " tokens, seed " + std::to_string(o.seed) +
        ", all linear projections). Held-out fortunes, context " + std::to_string(kContext) +
        "; each cell is loss in nats per token (perplexity).\n\n";
  md += "| variant |";
  for (const std::string& l : langs) md += " " + l + " |";
  md += " trainable | active / token | decode tokens/s |\n| --- |";
  for (size_t i = 0; i < langs.size(); ++i) md += " --- |";
  md += " --- | --- | --- |\n";
  for (size_t i = 0; i < variants.size(); ++i) {
    const Variant& v = variants[i];
    const nlohmann::json& e = evals[i];
    md += "| " + v.label + " |";
    nlohmann::json line = {{"variant", v.id},
                           {"label", v.label},
                           {"trainable_params", v.trainable},
                           {"active_params_per_token", v.active},
                           {"decode_tokens_per_s", e["decode_tokens_per_s"]}};
    for (const std::string& l : langs) {
      const nlohmann::json& le = e["languages"][l];
      const double loss = le["loss"].get<double>();
      md += " " + Fmt("%.4f", loss) + " (" + Fmt("%.1f", le["ppl"].get<double>()) + ") |";
      line["loss"][l] = loss;
      line["ppl"][l] = le["ppl"];
      line["eval_tokens"][l] = le["tokens"];
    }
    md += " " + Grouped(v.trainable) + " | " + Grouped(v.active) + " | " +
          Fmt("%.0f", e["decode_tokens_per_s"].get<double>()) + " |\n";
    std::cout << line.dump() << "\n";
  }
  md += "\nActive / token counts adapter parameters one token uses (one leaf per projection plus " +
        std::to_string(o.tree_depth) +
        " router rows per block); the frozen base is the same for all three.\n";

  nlohmann::json seeds_json = nlohmann::json::object();
  if (o.seeds > 1) {
    md += "\nOver " + std::to_string(o.seeds) + " seeds (" + std::to_string(o.seed) + " … " +
          std::to_string(o.seed + static_cast<uint64_t>(o.seeds) - 1) +
          ") of each adapter (its initialisation, dropout and data order; the same base): mean ± "
          "sample standard deviation of the held-out loss.\n\n| variant |";
    for (const std::string& l : langs) md += " " + l + " |";
    md += "\n| --- |";
    for (size_t i = 0; i < langs.size(); ++i) md += " --- |";
    md += "\n";
    for (size_t i = 1; i < variants.size(); ++i) {
      md += "| " + variants[i].label + " |";
      for (const std::string& l : langs) {
        const std::vector<double>& x = seed_losses[variants[i].id][l];
        const double mean = Mean(x), sd = SampleStdDev(x);
        md += " " + Fmt("%.4f", mean) + " ± " + Fmt("%.4f", sd) + " |";
        seeds_json[variants[i].id][l] = {{"losses", x}, {"mean", mean}, {"sd", sd}};
      }
      md += "\n";
    }
    std::cout << nlohmann::json{{"seeds", seeds_json}}.dump() << "\n";
  }

  // Leaf usage per language: each block's share of the tokens per leaf, averaged over blocks.
  const nlohmann::json& tree_eval = evals[2];
  md +=
      "\n## Tree leaf usage per language\n\nShare of held-out tokens routed to each leaf, "
      "per block, averaged over the blocks (each row sums to 100 %).\n\n| language |";
  const int leaves = 1 << o.tree_depth;
  for (int j = 0; j < leaves; ++j) md += " leaf " + std::to_string(j) + " |";
  md += "\n| --- |";
  for (int j = 0; j < leaves; ++j) md += " --- |";
  md += "\n";
  nlohmann::json usage_json = nlohmann::json::object();
  for (const std::string& l : langs) {
    const nlohmann::json& routing = tree_eval["languages"][l]["routing"];
    const std::vector<double> shares = MeanLeafShares(routing);
    md += "| " + l + " |";
    for (double s : shares) md += " " + Fmt("%.1f", s) + " % |";
    md += "\n";
    usage_json[l] = {{"mean_percent", shares}, {"per_block_tokens", routing["leaf_usage"]}};
  }
  std::cout << nlohmann::json{{"tree_leaf_usage", usage_json}}.dump() << "\n";

  md += "\n## Samples\n\nSampled (temperature 0.8, top-k 40, top-p 0.95, seed " +
        std::to_string(o.seed) + ", at most " + std::to_string(kSampleTokens) +
        " new tokens) from the first words of a held-out entry; ⏎ marks a line break.\n";
  nlohmann::json samples = nlohmann::json::object();
  for (const std::string& l : langs) {
    const std::string prompt = evals[0]["languages"][l]["prompt"].get<std::string>();
    md += "\n**" + l + "**, prompt “" + OneLine(prompt) + "”\n\n";
    for (size_t i = 0; i < variants.size(); ++i) {
      const std::string s = evals[i]["languages"][l]["sample"].get<std::string>();
      md += "- " + variants[i].label + ": “" + OneLine(prompt) + "” → “" + OneLine(s) + "”\n";
      samples[l][variants[i].id] = s;
    }
    samples[l]["prompt"] = prompt;
  }
  std::cout << nlohmann::json{{"samples", samples}}.dump() << "\n";

  md += "\n## Stages\n\n| stage | time | cache |\n| --- | --- | --- |\n";
  nlohmann::json stage_json = nlohmann::json::array();
  for (const Stage& st : stages) {
    md += "| " + st.name + " | " + Fmt("%.1f s", st.seconds) + " | " +
          (st.cached ? "reused " : "built ") + "`" + fs::path(st.dir).filename().string() + "` |\n";
    stage_json.push_back({{"name", st.name},
                          {"key", st.key},
                          {"dir", st.dir},
                          {"cached", st.cached},
                          {"seconds", st.seconds}});
  }
  md += "\nWhole run: " + Fmt("%.1f", total) + " s with " + std::to_string(omp_get_max_threads()) +
        " threads (load average " + Fmt("%.2f", load_start) + " at the start, " +
        Fmt("%.2f", load_end) + " at the end).\n";
  WriteFileAtomic(JoinPath(run_dir, "results.md"), md);
  nlohmann::json results = {{"scale", o.scale},
                            {"options",
                             {{"vocab", vocab},
                              {"base_steps", base_steps},
                              {"steps", steps},
                              {"batch_size", batch},
                              {"seq_len", seq},
                              {"max_docs", o.max_docs},
                              {"eval_docs", eval_docs},
                              {"rank", o.rank},
                              {"tree_depth", o.tree_depth},
                              {"seed", o.seed},
                              {"seeds", o.seeds},
                              {"context", kContext}}},
                            {"variants", nlohmann::json::array()},
                            {"tree_leaf_usage", usage_json},
                            {"seeds", seeds_json},
                            {"samples", samples},
                            {"stages", stage_json},
                            {"seconds", total},
                            {"load_average", {load_start, load_end}},
                            {"run_dir", run_dir}};
  for (size_t i = 0; i < variants.size(); ++i) {
    nlohmann::json v = evals[i];
    v["label"] = variants[i].label;
    v["trainable_params"] = variants[i].trainable;
    v["active_params_per_token"] = variants[i].active;
    results["variants"].push_back(v);
  }
  WriteFileAtomic(JoinPath(run_dir, "results.json"), results.dump(2) + "\n");
  std::cerr << "\n" << md << "\nwrote " << JoinPath(run_dir, "results.md") << " and results.json\n";
  std::cout
      << nlohmann::json{{"run_dir", run_dir}, {"seconds", total}, {"stages", stage_json}}.dump()
      << std::endl;
}

}  // namespace

void AddQuickstartCommand(CLI::App& app) {
  auto o = std::make_shared<QuickstartOptions>();
  CLI::App* cmd = app.add_subcommand(
      "quickstart",
      "fortunes in 4 languages → tokenizer → small English base → LoRA and tree-LoRA → "
      "held-out table, leaf usage and samples (stages cached)");
  cmd->add_option("--scale", o->scale, "small (default, ~5 min on 2 cores) | medium | large")
      ->check(CLI::IsMember({"small", "medium", "large"}));
  cmd->add_option("--work-dir", o->work_dir,
                  "stage cache and runs/ (default: $XDG_CACHE_HOME/tinylora or ~/.cache/tinylora)");
  cmd->add_option("--out", o->out, "this run's folder (default: WORK/runs/YYYYmmdd-HHMMSS)");
  cmd->add_option("--root", o->root, "where the fortune packages put their collections");
  cmd->add_option("--max-docs", o->max_docs,
                  "training entries per language, spread over the collections (0: all)")
      ->check(kNonNegative);
  cmd->add_option("--eval-docs", o->eval_docs,
                  "held-out entries scored per language (0: all; default: the scale's)")
      ->check(kNonNegative);
  cmd->add_option("--base-steps", o->base_steps, "pretraining steps (default: the scale's)")
      ->check(kPositive);
  cmd->add_option("--steps", o->steps, "steps of each adapter (default: the scale's)")
      ->check(kPositive);
  cmd->add_option("--batch-size", o->batch_size, "sequences per step (default: the scale's)")
      ->check(kPositive);
  cmd->add_option("--seq-len", o->seq_len, "tokens per sequence (default: the scale's)")
      ->check(CLI::Range(2, 512));
  cmd->add_option("--vocab-size", o->vocab_size, "tokenizer pieces (default: the scale's)")
      ->check(CLI::Range(300, 1 << 16));
  cmd->add_option("--rank", o->rank, "rank of the LoRA and of each tree leaf")
      ->check(CLI::Range(1, 256));
  cmd->add_option("--tree-depth", o->tree_depth, "depth of the tree (2^D leaves)")
      ->check(CLI::Range(1, 6));
  cmd->add_option("--seed", o->seed, "seed of every stage");
  cmd->add_option("--seeds", o->seeds,
                  "train and score the LoRA and the tree on K seeds (seed, seed+1, …): their "
                  "losses' mean ± spread in the report")
      ->check(CLI::Range(1, 20));
  AddThreadsOption(cmd, &o->threads);
  cmd->callback([o]() { RunQuickstart(*o); });
}

}  // namespace tinylora
