// tinylora experiment capacity: how many bits of knowledge LoRA and trees of LoRA leaves store
// per parameter (issue: the seed's claim, measured in bits). Per seed, cached stages:
//   base-data   the base population's biographies (`data facts`'s base.jsonl), apart from
//               the target's so that every N and E of a seed shares one base
//   facts       `data facts`: N target people × E exposures, their probes
//   tokenizer   trained on the base population's biographies
//   base        a small Llama pretrained from scratch on the base population (one pass): it
//               learns the format and the distributions of values, none of the target facts
//   adapter-*   one pass over the target biographies (E exposures of every person) for each
//               variant: LoRA of ranks r1 < r2 < …, trees of depth d with rank-r leaves, and the
//               dense comparator of each tree, the LoRA of rank 2^d·r (capped below the
//               adapted matrices' min(in, out))
//   eval-*      eval --facts on the probes: bits stored (capacity/fact_bits), recall, routing;
//               and decode tokens/s
// Then OUT/report.json, report.md (mean ± sample standard deviation over the seeds) and
// capacity.svg (bits stored against active parameters per token).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/commands.h"
#include "cli/common.h"
#include "cli/stage_cache.h"
#include "data/facts.h"
#include "model/config.h"
#include "util/error.h"
#include "util/file.h"
#include "util/svg_plot.h"

namespace tinylora {

namespace {

constexpr int kCacheVersion = 1;  // in every stage key: bump when a stage changes its output

struct CapacityScale {
  int64_t people;
  int exposures;
  int64_t base_people;
  int base_exposures;
  int vocab;
  // the base: hidden, intermediate, layers, heads, kv heads; positions = the sequence length
  int hidden, intermediate, layers, heads, kv_heads, seq_len, batch;
  std::string targets;
  int leaf_rank;
  std::vector<int> lora_ranks, depths;
  double lr;
};

// test: seconds, for CI; small: the default (46 minutes for one seed on 2 Zen 4 cores).
const std::map<std::string, CapacityScale>& CapacityScales() {
  static const std::map<std::string, CapacityScale> s = {
      {"test", {6, 40, 60, 10, 600, 64, 128, 2, 4, 2, 320, 2, "v_proj", 1, {1, 2}, {1}, 1e-2}},
      {"small",
       {500,
        100,
        4000,
        10,
        2000,
        128,
        384,
        4,
        4,
        2,
        320,
        4,
        "all-linear",
        1,
        {1, 2, 4},
        {1, 2, 3, 4},
        1e-2}},
      {"large",
       {2000,
        100,
        16000,
        10,
        4000,
        256,
        704,
        6,
        8,
        2,
        320,
        4,
        "all-linear",
        1,
        {1, 2, 4, 8},
        {1, 2, 3, 4, 5, 6},
        1e-2}},
  };
  return s;
}

struct CapacityOptions {
  std::string scale = "small", work_dir, out;
  int64_t people = 0;
  int exposures = 0;
  std::string targets;  // empty: the scale's
  double lr = 0;        // 0: the scale's
  int seeds = 1;
  uint64_t seed = 1;
  int threads = 0;
};

struct VariantSpec {
  std::string id;    // lora-r2, tree-d3, dense-d3 (the comparator of tree-d3)
  std::string kind;  // lora | tree | dense
  int rank = 0, depth = 0;
  bool capped = false;
};

// The smallest min(in, out) over the adapted projections: a LoRA of that rank is a full
// fine-tune of the smallest matrix.
int SmallestSide(const LlamaConfig& c, const std::string& targets) {
  int64_t m = std::numeric_limits<int64_t>::max();
  std::stringstream ss(targets);
  for (std::string t; std::getline(ss, t, ',');) {
    for (int k = 0; k < kNumModules; ++k) {
      if (t != "all-linear" && t != ModuleName(static_cast<Module>(k))) continue;
      const auto [out, in] = ModuleShape(c, static_cast<Module>(k));
      m = std::min({m, out, in});
    }
  }
  return static_cast<int>(m);
}

std::vector<VariantSpec> Variants(const CapacityScale& sc, int side) {
  std::vector<VariantSpec> v;
  for (int r : sc.lora_ranks) v.push_back({"lora-r" + std::to_string(r), "lora", r, 0, false});
  for (int d : sc.depths) {
    v.push_back({"tree-d" + std::to_string(d), "tree", sc.leaf_rank, d, false});
    const int dense = sc.leaf_rank << d;
    const bool have = std::any_of(v.begin(), v.end(), [&](const VariantSpec& x) {
      return x.kind == "lora" && x.rank == std::min(dense, side);
    });
    if (!have) {
      v.push_back({"dense-d" + std::to_string(d), "dense", std::min(dense, side), 0, dense > side});
    }
  }
  return v;
}

LlamaConfig BaseConfig(const CapacityScale& sc) {
  LlamaConfig c;
  c.hidden = sc.hidden;
  c.intermediate = sc.intermediate;
  c.n_layers = sc.layers;
  c.n_heads = sc.heads;
  c.n_kv_heads = sc.kv_heads;
  c.head_dim = sc.hidden / sc.heads;
  c.vocab = sc.vocab;
  c.max_pos = sc.seq_len;
  c.rms_eps = 1e-5;
  c.rope_theta = 10000.0;
  return c;
}

std::string MeanSpread(const std::vector<double>& x, const char* f) {
  char a[64], b[64];
  std::snprintf(a, sizeof a, f, Mean(x));
  if (x.size() < 2) return a;
  std::snprintf(b, sizeof b, f, SampleStdDev(x));
  return std::string(a) + " ± " + b;
}

// Per tree block, the share of the tokens on its busiest leaf and the number of leaves that
// got at least 1 % of them (router collapse shows as one leaf taking everything).
nlohmann::json LeafSummary(const nlohmann::json& routing) {
  if (routing.is_null()) return nullptr;
  double busiest = 0, used = 0;
  const auto& usage = routing["leaf_usage"];
  for (const auto& block : usage) {
    double total = 0, top = 0;
    for (const auto& n : block) total += n.get<double>(), top = std::max(top, n.get<double>());
    int k = 0;
    for (const auto& n : block) k += total > 0 && n.get<double>() >= 0.01 * total;
    busiest += total > 0 ? top / total : 0;
    used += k;
  }
  const double blocks = std::max<double>(1, static_cast<double>(usage.size()));
  return {{"busiest_leaf_share", busiest / blocks}, {"leaves_used", used / blocks}};
}

void RunCapacity(const CapacityOptions& o) {
  SetThreads(o.threads);
  const CapacityScale sc = [&] {
    CapacityScale s = CapacityScales().at(o.scale);
    if (o.people > 0) s.people = o.people;
    if (o.exposures > 0) s.exposures = o.exposures;
    if (!o.targets.empty()) s.targets = o.targets;
    if (o.lr > 0) s.lr = o.lr;
    return s;
  }();
  const LlamaConfig base_config = BaseConfig(sc);
  const int side = SmallestSide(base_config, sc.targets);
  const std::vector<VariantSpec> variants = Variants(sc, side);
  const std::string work = o.work_dir.empty() ? DefaultWorkDir("experiment") : o.work_dir;
  StageCache cache(JoinPath(work, "stages"));
  const std::string run_dir = RunDir(work, o.out);
  std::fprintf(stderr,
               "tinylora experiment capacity, scale %s: %lld people x %d exposures, base %lld x "
               "%d, %zu adapters per seed, %d seed(s)\nstages cached in %s; report in %s\n",
               o.scale.c_str(), static_cast<long long>(sc.people), sc.exposures,
               static_cast<long long>(sc.base_people), sc.base_exposures, variants.size(), o.seeds,
               cache.root().c_str(), run_dir.c_str());
  auto get = [&cache](const std::string& name, nlohmann::json inputs,
                      const std::function<void(const std::string&)>& build) {
    inputs["version"] = kCacheVersion;
    const Stage st = cache.Get(name, inputs, build);
    std::fprintf(stderr, "  %s %s (%.1f s)\n", st.cached ? "cached" : "built ", st.dir.c_str(),
                 st.seconds);
    return st;
  };
  auto schedule = [&](CommonTrainOptions& c, const std::string& data, uint64_t seed) {
    c.data = {data};
    c.val_fraction = 0;
    c.epochs = 1;
    c.batch_size = sc.batch;
    c.seq_len = sc.seq_len;
    c.lr = sc.lr;
    c.warmup = 20;
    c.log_every = 20;
    c.seed = seed;
    c.threads = o.threads;
  };

  // rows[variant id][seed] = the measured JSON
  std::map<std::string, std::vector<nlohmann::json>> rows;
  for (int k = 0; k < o.seeds; ++k) {
    const uint64_t seed = o.seed + static_cast<uint64_t>(k);
    std::fprintf(stderr, "\nseed %llu\n", static_cast<unsigned long long>(seed));
    // The base's population apart from the target's, so every N and E shares one base.
    const Stage base_data = get(
        "base-data",
        {{"base_people", sc.base_people}, {"base_exposures", sc.base_exposures}, {"seed", seed}},
        [&](const std::string& dir) {
          FactsOptions f;
          f.people = 1;  // the target files of this stage are not used
          f.exposures = 1;
          f.base_people = sc.base_people;
          f.base_exposures = sc.base_exposures;
          f.seed = seed;
          f.out = dir;
          WriteFacts(f);
        });
    const Stage facts =
        get("facts", {{"people", sc.people}, {"exposures", sc.exposures}, {"seed", seed}},
            [&](const std::string& dir) {
              FactsOptions f;
              f.people = sc.people;
              f.exposures = sc.exposures;
              f.seed = seed;
              f.out = dir;
              f.write_base = false;
              WriteFacts(f);
            });
    const std::string base_jsonl = JoinPath(base_data.dir, "base.jsonl");
    const Stage tok = get("tokenizer", {{"base_data", base_data.key}, {"vocab", sc.vocab}},
                          [&](const std::string& dir) {
                            TokenizerTrainOptions t;
                            t.data = {base_jsonl};
                            t.out = dir;
                            t.vocab_size = sc.vocab;
                            t.threads = o.threads;
                            RunTokenizerTrain(t);
                          });
    const std::string config_json = ConfigToJson(base_config);
    const Stage base = get("base",
                           {{"base_data", base_data.key},
                            {"tokenizer", tok.key},
                            {"config", config_json},
                            {"lr", 3e-3},
                            {"batch", sc.batch}},
                           [&](const std::string& dir) {
                             const std::string cfg = dir + ".config.json";
                             WriteFileAtomic(cfg, config_json);
                             PretrainOptions p;
                             p.config_file = cfg;
                             p.tokenizer = JoinPath(tok.dir, "tokenizer.model");
                             schedule(p.common, base_jsonl, seed);
                             p.common.lr = 3e-3;
                             p.common.out = dir;
                             CheckFinished(RunPretrain(p), "pretraining the base");
                             DropCheckpoint(dir);
                             std::remove(cfg.c_str());
                           });

    auto measure = [&](const std::string& id, const std::string& adapter, int depth) {
      const Stage ev =
          get("eval-" + id, {{"base", base.key}, {"adapter", adapter}, {"facts", facts.key}},
              [&](const std::string& dir) {
                EvalOptions e;
                e.model = base.dir;
                e.adapter = adapter;
                e.facts = JoinPath(facts.dir, "probe.jsonl");
                e.threads = o.threads;
                const EvalResult r = RunEval(e);
                GenerateOptions g;
                g.model = base.dir;
                g.adapter = adapter;
                g.prompt = "The";
                g.max_new_tokens = 64;
                g.greedy = g.ignore_eos = true;
                g.stream = false;
                g.threads = o.threads;
                const GenerateResult gr = RunGenerate(g);
                nlohmann::json out = r.facts;
                out["routing"] = LeafSummary(r.routing);
                out["decode_tokens_per_s"] = gr.decode_tokens_per_s;
                WriteFileAtomic(JoinPath(dir, "result.json"), out.dump(2) + "\n");
              });
      nlohmann::json j = nlohmann::json::parse(ReadTextFile(JoinPath(ev.dir, "result.json")));
      if (!adapter.empty()) {
        const AdapterParams p = CountAdapterParams(adapter, depth);
        j["params"] = p.params;
        j["active_params"] = p.active_per_token;
      } else {
        j["params"] = 0;
        j["active_params"] = 0;
      }
      j["seed"] = seed;
      rows[id].push_back(j);
    };
    measure("base", "", 0);
    for (const VariantSpec& v : variants) {
      LoraTrainOptions lo;
      lo.model = base.dir;
      lo.targets = sc.targets;
      lo.rank = v.rank;
      lo.alpha = 2.0 * v.rank;
      lo.tree_depth = v.depth;
      if (v.depth > 0) {
        lo.routing = "soft-then-hard";
        lo.balance = 0.01;
        lo.hardening = 0.01;
      }
      schedule(lo.common, JoinPath(facts.dir, "train.jsonl"), seed);
      const nlohmann::json in = {{"base", base.key},       {"facts", facts.key},
                                 {"targets", lo.targets},  {"rank", lo.rank},
                                 {"depth", lo.tree_depth}, {"routing", lo.routing},
                                 {"balance", lo.balance},  {"hardening", lo.hardening},
                                 {"lr", lo.common.lr},     {"batch", lo.common.batch_size}};
      const Stage st = get("adapter-" + v.id, in, [&](const std::string& dir) {
        lo.common.out = dir;
        CheckFinished(RunTrain(lo), "training " + v.id);
        DropCheckpoint(dir);
      });
      measure(v.id, st.dir, v.depth);
    }
  }

  // The report: one row per variant, mean ± spread over the seeds.
  nlohmann::json report = {{"scale", o.scale},
                           {"people", sc.people},
                           {"exposures", sc.exposures},
                           {"seeds", o.seeds},
                           {"targets", sc.targets},
                           {"leaf_rank", sc.leaf_rank},
                           {"facts_bits", PersonEntropyBits() * static_cast<double>(sc.people)},
                           {"variants", nlohmann::json::array()}};
  std::ostringstream md;
  md << "| variant | trainable params | active params / token | bits stored | bits / param | "
        "bits / active param | recall (date, city, univ, major, employer) | decode tok/s |\n"
     << "| --- | --- | --- | --- | --- | --- | --- | --- |\n";
  std::vector<std::string> order = {"base"};
  for (const VariantSpec& v : variants) order.push_back(v.id);
  std::vector<std::pair<double, double>> lora_pts, tree_pts, dense_pts;
  double max_active = 1;
  for (const std::string& id : order) {
    const auto& rs = rows[id];
    std::vector<double> bits, per_param, per_active, decode;
    std::array<std::vector<double>, kNumAttrs> recall;
    for (const auto& r : rs) {
      const double b = r["bits"], p = r["params"], a = r["active_params"];
      bits.push_back(b);
      per_param.push_back(p > 0 ? b / p : 0);
      per_active.push_back(a > 0 ? b / a : 0);
      decode.push_back(r["decode_tokens_per_s"]);
      for (int k = 0; k < kNumAttrs; ++k)
        recall[static_cast<size_t>(k)].push_back(
            r["attributes"][AttrName(static_cast<Attr>(k))]["recall"]);
    }
    const VariantSpec* spec = nullptr;
    for (const VariantSpec& v : variants)
      if (v.id == id) spec = &v;
    const double params = rs[0]["params"], active = rs[0]["active_params"];
    max_active = std::max(max_active, active);
    nlohmann::json row = {{"id", id},
                          {"kind", spec ? spec->kind : "base"},
                          {"rank", spec ? spec->rank : 0},
                          {"depth", spec ? spec->depth : 0},
                          {"capped", spec ? spec->capped : false},
                          {"params", params},
                          {"active_params", active},
                          {"bits_mean", Mean(bits)},
                          {"bits_spread", SampleStdDev(bits)},
                          {"bits_per_param", Mean(per_param)},
                          {"bits_per_active_param", Mean(per_active)},
                          {"decode_tokens_per_s", Mean(decode)},
                          {"per_seed", rs}};
    nlohmann::json rec = nlohmann::json::object();
    for (int k = 0; k < kNumAttrs; ++k)
      rec[AttrName(static_cast<Attr>(k))] = Mean(recall[static_cast<size_t>(k)]);
    row["recall"] = rec;
    report["variants"].push_back(row);
    std::string label = id;
    if (spec && spec->capped) label += " (capped at rank " + std::to_string(spec->rank) + ")";
    char rc[128];
    std::snprintf(rc, sizeof rc, "%.2f, %.2f, %.2f, %.2f, %.2f", Mean(recall[0]), Mean(recall[1]),
                  Mean(recall[2]), Mean(recall[3]), Mean(recall[4]));
    md << "| " << label << " | " << static_cast<int64_t>(params) << " | "
       << static_cast<int64_t>(active) << " | " << MeanSpread(bits, "%.0f") << " | "
       << MeanSpread(per_param, "%.3f") << " | " << MeanSpread(per_active, "%.3f") << " | " << rc
       << " | " << MeanSpread(decode, "%.0f") << " |\n";
    if (!spec) continue;
    auto& pts = spec->kind == "lora" ? lora_pts : spec->kind == "tree" ? tree_pts : dense_pts;
    pts.push_back({active, Mean(bits)});
  }
  for (auto* pts : {&lora_pts, &tree_pts, &dense_pts}) std::sort(pts->begin(), pts->end());
  const std::vector<std::pair<double, double>> two_bits = {{1, 2}, {max_active, 2 * max_active}};
  PlotAxes axes;
  axes.title = "bits stored, " + std::to_string(sc.people) + " people x " +
               std::to_string(sc.exposures) + " exposures (" + sc.targets + ")";
  axes.x_label = "active adapter parameters per token";
  axes.y_label = "bits stored";
  axes.log_x = axes.log_y = true;
  WriteLinePlot(JoinPath(run_dir, "capacity.svg"), axes,
                {PlotSeries{"LoRA, ranks " + std::to_string(sc.lora_ranks.front()) + "…" +
                                std::to_string(sc.lora_ranks.back()),
                            "#1f77b4", lora_pts, false, true},
                 PlotSeries{"trees, depth " + std::to_string(sc.depths.front()) + "…" +
                                std::to_string(sc.depths.back()) + ", rank-" +
                                std::to_string(sc.leaf_rank) + " leaves",
                            "#d62728", tree_pts, false, true},
                 PlotSeries{"dense LoRA of rank 2^d·r", "#2ca02c", dense_pts, false, true},
                 PlotSeries{"2 bits per active parameter", "#888888", two_bits, true, false}});
  WriteFileAtomic(JoinPath(run_dir, "report.json"), report.dump(2) + "\n");
  WriteFileAtomic(JoinPath(run_dir, "report.md"), md.str());
  std::fprintf(stderr, "\n%s\nwrote %s/report.md, report.json and capacity.svg\n", md.str().c_str(),
               run_dir.c_str());
  std::cout << nlohmann::json{{"out", run_dir}, {"variants", report["variants"].size()}}.dump()
            << "\n";
}

}  // namespace

void AddExperimentCommand(CLI::App& app) {
  CLI::App* exp = app.add_subcommand("experiment", "measurements that take many runs");
  exp->require_subcommand(1);
  auto o = std::make_shared<CapacityOptions>();
  CLI::App* cmd = exp->add_subcommand(
      "capacity",
      "bits of knowledge stored per parameter: LoRA ranks, trees of LoRA leaves and their "
      "dense comparators on synthetic biographies (stages cached)");
  cmd->add_option("--scale", o->scale, "test (seconds) | small (default, ~50 min) | large")
      ->check(CLI::IsMember({"test", "small", "large"}));
  cmd->add_option("--people", o->people, "target people (default: the scale's)")
      ->check(CLI::Range(int64_t{1}, int64_t{1'000'000}));
  cmd->add_option("--exposures", o->exposures, "renderings of each person (default: the scale's)")
      ->check(CLI::Range(1, 10000));
  cmd->add_option("--targets", o->targets,
                  "the adapted projections, as train --targets (default: the scale's)");
  cmd->add_option("--lr", o->lr, "every adapter's learning rate (default: the scale's)")
      ->check(kPositive);
  cmd->add_option("--seeds", o->seeds, "run every configuration on K seeds (mean ± spread)")
      ->check(CLI::Range(1, 100));
  cmd->add_option("--seed", o->seed, "the first seed");
  cmd->add_option("--work-dir", o->work_dir,
                  "stage cache and runs/ (default: $XDG_CACHE_HOME/tinylora or ~/.cache/tinylora)");
  cmd->add_option("--out", o->out, "the report's folder (default: WORK/runs/YYYYmmdd-HHMMSS)");
  AddThreadsOption(cmd, &o->threads);
  cmd->callback([o]() { RunCapacity(*o); });
}

}  // namespace tinylora
