// tinylora train (a LoRA on a frozen base) and tinylora pretrain (every weight, from scratch or
// a given model): data → token cache → Trainer → adapter or model directory in --out.
#include <sys/resource.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "adapters/lora.h"
#include "adapters/tree.h"
#include "cli/commands.h"
#include "cli/common.h"
#include "data/token_cache.h"
#include "dist/comm.h"
#include "model/tokenizer.h"
#include "train/trainable.h"
#include "train/trainer.h"
#include "util/error.h"
#include "util/file.h"

namespace tinylora {

namespace {

void AddCommonFlags(CLI::App* cmd, CommonTrainOptions* o) {
  cmd->add_option("--data", o->data,
                  "training text: files, folders, .jsonl (text or prompt/completion)")
      ->required();
  cmd->add_option("--val-data", o->val_data, "held-out data (default: --val-fraction of --data)");
  cmd->add_option("--val-fraction", o->val_fraction, "share of --data documents held out")
      ->check(CLI::Range(0.0, 0.5));
  cmd->add_option("--out", o->out, "output directory")->required();
  cmd->add_option("--cache-dir", o->cache_dir, "token cache directory (default: OUT/data)");
  auto* steps = cmd->add_option("--steps", o->steps, "optimizer steps")->check(kPositive);
  cmd->add_option("--epochs", o->epochs, "passes over the data (instead of --steps)")
      ->check(kPositive)
      ->excludes(steps);
  cmd->add_option("--batch-size", o->batch_size, "sequences per micro-batch")->check(kPositive);
  cmd->add_option("--seq-len", o->seq_len, "tokens per sequence")->check(CLI::Range(2, 1 << 20));
  cmd->add_option("--grad-accum", o->grad_accum, "micro-batches per step")->check(kPositive);
  cmd->add_option("--lr", o->lr, "peak learning rate")->check(kPositive);
  cmd->add_option("--warmup", o->warmup, "warm-up steps")->check(kNonNegative);
  cmd->add_option("--schedule", o->schedule, "cosine | linear | constant")
      ->check(CLI::IsMember({"cosine", "linear", "constant"}));
  cmd->add_option("--min-lr-ratio", o->min_lr_ratio, "final lr / peak lr")
      ->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--weight-decay", o->weight_decay, "AdamW decoupled weight decay")
      ->check(kNonNegative);
  cmd->add_option("--grad-clip", o->grad_clip, "clip gradients to this global norm (0: off)")
      ->check(kNonNegative);
  cmd->add_option("--eval-every", o->eval_every, "validation every N steps (0: at the end)")
      ->check(kNonNegative);
  cmd->add_option("--eval-batches", o->eval_batches, "validation micro-batches per evaluation")
      ->check(kPositive);
  cmd->add_option("--save-every", o->save_every, "checkpoint every N steps (0: at the end)")
      ->check(kNonNegative);
  cmd->add_option("--log-every", o->log_every, "metrics line every N steps")->check(kPositive);
  cmd->add_option("--seed", o->seed, "seed of initialisation, data order and dropout");
  cmd->add_flag("--resume", o->resume, "continue from OUT/checkpoint");
  cmd->add_option("--stop-after", o->stop_after,
                  "stop as on SIGINT after N steps of this run (checkpoint saved; time-boxed jobs)")
      ->check(kPositive);
  cmd->add_flag("--checkpoint-activations", o->checkpoint_activations,
                "recompute each block in backward instead of storing its activations");
  AddThreadsOption(cmd, &o->threads);
}

struct Data {
  std::unique_ptr<DataCaches> caches;  // training split (+ validation split of --data)
  std::unique_ptr<DataCaches> val;     // --val-data
  const TokenCache* val_cache() const {
    if (val) return &val->train;
    return caches->val && caches->val->size() >= 2 ? &*caches->val : nullptr;
  }
};

Data PrepareData(const CommonTrainOptions& o, const std::string& tokenizer_model,
                 const std::string& tokenizer_name, int vocab) {
  const std::string dir = o.cache_dir.empty() ? JoinPath(o.out, "data") : o.cache_dir;
  CacheSpec spec;
  spec.paths = o.data;
  spec.tokenizer_model = tokenizer_model;
  spec.tokenizer_name = tokenizer_name;
  spec.dir = dir;
  spec.val_fraction = o.val_data.empty() ? o.val_fraction : 0.0;
  // A terminal gets one progress line rewritten in place, a log one line per report.
  const bool tty = ::isatty(2);
  spec.progress = [tty](int64_t docs, int64_t tokens) {
    std::fprintf(stderr, "%stokenising: %lld documents, %lld tokens%s", tty ? "\r" : "",
                 static_cast<long long>(docs), static_cast<long long>(tokens), tty ? "" : "\n");
  };
  Data d;
  auto open = [&] {
    d.caches = std::make_unique<DataCaches>(OpenOrBuild(spec));
    if (d.caches->rebuilt && tty) std::fprintf(stderr, "\n");
    d.caches->train.Validate(vocab);
    if (d.caches->val) d.caches->val->Validate(vocab);
    if (!o.val_data.empty()) {
      CacheSpec vs = spec;
      vs.paths = o.val_data;
      vs.name = "heldout";
      vs.val_fraction = 0;
      d.val = std::make_unique<DataCaches>(OpenOrBuild(vs));
      d.val->train.Validate(vocab);
    }
  };
  // Several ranks: rank 0 alone tokenises (or finds the cache), then the others open what it
  // wrote; a failure on either side stops every rank with one line.
  Comm& comm = WorldComm();
  comm.Agree([&] {
    if (comm.root()) open();
  });
  comm.Agree([&] {
    if (!comm.root()) open();
  });
  std::fprintf(stderr, "data: %lld training tokens (%lld documents)%s\n",
               static_cast<long long>(d.caches->train.size()),
               static_cast<long long>(d.caches->train.documents()),
               d.val_cache()
                   ? (", " + std::to_string(d.val_cache()->size()) + " validation tokens").c_str()
                   : ", no validation split");
  return d;
}

TrainerOptions MakeTrainerOptions(const CommonTrainOptions& o, const TokenCache& train,
                                  nlohmann::json run) {
  TrainerOptions t;
  t.batch_size = o.batch_size;
  t.seq_len = o.seq_len;
  t.grad_accum = o.grad_accum;
  if (o.steps > 0) {
    t.steps = o.steps;
  } else {
    const int64_t windows = (train.size() - 1) / o.seq_len;
    const double per_step = static_cast<double>(o.batch_size) * o.grad_accum;
    t.steps = std::max<int64_t>(
        1, static_cast<int64_t>(std::ceil((o.epochs > 0 ? o.epochs : 1.0) * windows / per_step)));
  }
  t.schedule.kind = o.schedule;
  t.schedule.lr = o.lr;
  t.schedule.warmup = o.warmup;
  t.schedule.total = t.steps;
  t.schedule.min_lr_ratio = o.min_lr_ratio;
  t.adam.weight_decay = o.weight_decay;
  t.grad_clip = o.grad_clip;
  t.eval_every = o.eval_every;
  t.eval_batches = o.eval_batches;
  t.save_every = o.save_every;
  t.log_every = o.log_every;
  t.seed = o.seed;
  t.resume = o.resume;
  t.stop_after = o.stop_after;
  t.out = o.out;
  run["batch_size"] = o.batch_size;
  run["seq_len"] = o.seq_len;
  run["grad_accum"] = o.grad_accum;
  run["seed"] = o.seed;
  run["data"] = o.data;
  run["train_tokens"] = train.size();  // a resumed run must see the same token stream
  t.run_json = run.dump();
  return t;
}

double PeakRssMb() {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_maxrss) / 1024.0;
}

TrainResult Summarise(const TrainSummary& s, const std::string& out, int64_t trainable,
                      int64_t activation_bytes) {
  TrainResult r{s, out, trainable, activation_bytes, PeakRssMb()};
  std::fprintf(stderr,
               "done: %lld steps in %.1f s, %.0f tokens/s, final loss %.4f%s, peak RSS %.0f MB "
               "(activations %.0f MB); wrote %s\n",
               static_cast<long long>(s.steps), s.seconds, s.tokens_per_s, s.final_loss,
               s.val_loss >= 0 ? (", validation loss " + std::to_string(s.val_loss)).c_str() : "",
               r.peak_rss_mb, activation_bytes / 1e6, out.c_str());
  return r;
}

}  // namespace

nlohmann::json TrainResult::ToJson() const {
  nlohmann::json j = {{"out", out},
                      {"steps", summary.steps},
                      {"loss", summary.final_loss},
                      {"tokens_per_s", summary.tokens_per_s},
                      {"seconds", summary.seconds},
                      {"trainable_params", trainable_params},
                      {"activation_bytes", activation_bytes},
                      {"peak_rss_mb", peak_rss_mb},
                      {"stopped_by_signal", summary.stopped_by_signal}};
  if (summary.val_loss >= 0) j["val_loss"] = summary.val_loss;
  return j;
}

// ---- train: LoRA on a frozen base -------------------------------------------------------

namespace {

// Per block: leaf usage, mean decision entropy, share of decided decisions. Banks of more
// than 64 leaves log, per block, how many leaves the step used and the largest leaf's share
// instead of the whole histogram (which would make every metrics line thousands of numbers).
nlohmann::json RoutingJson(const std::vector<RoutingStats>& blocks) {
  nlohmann::json usage = nlohmann::json::array(), used = usage, top = usage;
  double entropy = 0, decided = 0;
  const bool histogram = blocks.empty() || blocks[0].usage.size() <= 64;
  for (const RoutingStats& s : blocks) {
    int64_t tokens = 0, max = 0, n_used = 0;
    for (int64_t u : s.usage) tokens += u, max = std::max(max, u), n_used += u > 0;
    if (histogram) usage.push_back(s.usage);
    used.push_back(n_used);
    top.push_back(tokens > 0 ? static_cast<double>(max) / static_cast<double>(tokens) : 0.0);
    entropy += s.entropy;
    decided += s.decided;
  }
  const double n = std::max<double>(1, static_cast<double>(blocks.size()));
  nlohmann::json j = {{"entropy", entropy / n}, {"decided", decided / n}};
  if (histogram) {
    j["leaf_usage"] = usage;
  } else {
    j["leaves_used"] = used;
    j["top_leaf_share"] = top;
  }
  return j;
}

}  // namespace

void CheckFinished(const TrainResult& r, const std::string& what) {
  if (r.summary.stopped_by_signal) {
    FailRuntime("stopped by a signal while " + what +
                "; the stage is not kept and the next run builds it again");
  }
}

TrainResult RunTrain(const LoraTrainOptions& lo) {
  const CommonTrainOptions& o = lo.common;
  Comm& comm = WorldComm();
  std::unique_ptr<ModelWeights> base;
  std::string tokenizer;
  AdapterConfig ac;
  const bool tree = lo.tree_depth > 0;
  int rows = 0;
  comm.Agree([&] {  // what every rank checks before the data is touched
    SetThreads(o.threads);
    rows = RowsPerRank(o.batch_size, WorldComm());
    base = ModelWeights::Load(lo.model, lo.quantize.Get(lo.bf16));
    CheckSeqLen(o.seq_len, base->config);  // before tokenising any data
    tokenizer = base->TokenizerModel("it is needed to tokenise --data");
    ac.r = lo.rank;
    ac.alpha = lo.alpha;
    ac.dropout = lo.dropout;
    ac.targets = ParseTargets(lo.targets, "--targets");
    ac.tree_depth = lo.tree_depth;
    ac.gate = lo.gate;
    if (!tree && lo.routing != "hard") Fail("--routing: needs --tree-depth of at least 1");
  });
  const LlamaConfig& c = base->config;
  Data data = PrepareData(o, tokenizer, base->tokenizer_name, c.vocab);
  std::unique_ptr<Adapter> adapter;
  comm.Agree([&] {
    if (lo.bf16) base->PrepareBf16(/*backward=*/true);
    adapter = Adapter::Create(c, ac, o.seed, /*with_grads=*/true);
  });
  nlohmann::json run = {{"mode", "lora"},
                        {"model", lo.model},
                        {"rank", lo.rank},
                        {"alpha", lo.alpha},
                        {"targets", lo.targets},
                        {"dropout", lo.dropout},
                        {"tree_depth", lo.tree_depth},
                        {"routing", lo.routing},
                        {"gate", lo.gate}};
  if (lo.bf16) run["bf16"] = true;  // only when set: checkpoints of earlier runs still resume
  if (!lo.quantize.format.empty()) run["quantize"] = lo.quantize.ToJson();
  TrainerOptions t = MakeTrainerOptions(o, data.caches->train, run);
  t.title = (tree ? "tree-LoRA depth " + std::to_string(lo.tree_depth) + ", r=" : "LoRA r=") +
            std::to_string(lo.rank) + " on " + lo.model;
  TrainModel model(*base, nullptr, adapter.get(), rows, o.seq_len, o.checkpoint_activations,
                   /*soft_capable=*/lo.routing != "hard");
  const AuxLoss aux{lo.hardening, lo.balance, 1.0};
  const int64_t hard_from = lo.hard_from >= 0 ? lo.hard_from : t.steps / 2 + 1;
  nlohmann::json last_routing;
  if (tree) {
    model.SetRouting(lo.routing != "hard", aux);
    if (lo.routing == "soft-then-hard") {
      t.before_step = [&model, aux, hard_from](int64_t step) {
        model.SetRouting(step < hard_from, aux);
      };
    }
    t.add_metrics = [&model, &c, &last_routing](nlohmann::json& line) {
      std::vector<RoutingStats> blocks;
      for (int l = 0; l < c.n_layers; ++l) blocks.push_back(ComputeRoutingStats(model.routing(l)));
      line["routing"] = last_routing = RoutingJson(blocks);
    };
  }
  std::fprintf(
      stderr, "%s r=%d alpha=%g on %s: %lld trainable parameters, activations %.0f MB\n",
      tree ? ("tree-LoRA depth " + std::to_string(lo.tree_depth) + " (" + lo.routing + ")").c_str()
           : "LoRA",
      lo.rank, lo.alpha, lo.targets.c_str(), static_cast<long long>(adapter->ParamCount()),
      model.ActivationBytes() / 1e6);
  nlohmann::json training = {{"base_model", lo.model},
                             {"steps", t.steps},
                             {"lr", o.lr},
                             {"batch_size", o.batch_size},
                             {"seq_len", o.seq_len},
                             {"grad_accum", o.grad_accum},
                             {"seed", o.seed},
                             {"routing", lo.routing},
                             {"hardening", lo.hardening},
                             {"balance", lo.balance}};
  Adapter* a = adapter.get();
  Trainer trainer(model, adapter->params(), data.caches->train, data.val_cache(), t,
                  [a, &training, &last_routing](const std::string& dir) {
                    nlohmann::json record = training;
                    if (!last_routing.is_null()) record["routing_stats"] = last_routing;
                    a->SetTrainingRecord(record.dump());
                    a->Save(dir);
                  });
  if (tree && lo.router_lr > 0) {
    for (int i = 0; i < adapter->params().size(); ++i) {
      if (adapter->params().name(i).find("tree_router") != std::string::npos) {
        trainer.optimizer().SetLrScale(i, lo.router_lr / o.lr);
      }
    }
  }
  const TrainSummary s = trainer.Run();
  return Summarise(s, o.out, adapter->ParamCount(), model.ActivationBytes());
}

// ---- pretrain: every weight ---------------------------------------------------------------

TrainResult RunPretrain(const PretrainOptions& po) {
  const CommonTrainOptions& o = po.common;
  std::unique_ptr<TrainableBase> base;
  std::string tok_bytes, tok_name = po.tokenizer;  // --tokenizer, else the initial model's
  int rows = 0;
  WorldComm().Agree([&] {
    SetThreads(o.threads);
    rows = RowsPerRank(o.batch_size, WorldComm());
    if (!po.tokenizer.empty()) {
      if (!FileExists(po.tokenizer)) Fail(po.tokenizer + ": tokenizer file not found");
      tok_bytes = ReadTextFile(po.tokenizer);
    }
    if (!po.init_model.empty()) {
      auto src = ModelWeights::Load(po.init_model);
      base = MakeTrainable(*src);
      if (tok_bytes.empty()) {
        tok_bytes = src->TokenizerModel("give --tokenizer FILE");
        tok_name = src->tokenizer_name;
      }
    } else {
      LlamaConfig c;
      if (!po.preset.empty()) {
        if (!PresetConfig(po.preset, &c))
          Fail("--preset: unknown preset '" + po.preset + "' (tiny, tinyllama)");
      } else {
        c = LoadConfig(po.config_file);
      }
      if (tok_bytes.empty()) Fail("pretrain: give --tokenizer FILE");
      Tokenizer tok(tok_bytes, tok_name);
      if (!po.preset.empty()) c.vocab = tok.vocab_size();
      if (tok.vocab_size() > c.vocab) {
        Fail("--tokenizer: " + tok_name + " has " + std::to_string(tok.vocab_size()) +
             " pieces but the config's vocab_size is " + std::to_string(c.vocab));
      }
      c.bos_id = tok.bos_id() >= 0 ? tok.bos_id() : c.bos_id;
      c.eos_id = tok.eos_id() >= 0 ? tok.eos_id() : c.eos_id;
      base = CreateRandomBase(c, o.seed, /*with_grads=*/true);
    }
    CheckSeqLen(o.seq_len, base->weights.config);  // before tokenising any data
  });
  const LlamaConfig& c = base->weights.config;
  Data data = PrepareData(o, tok_bytes, tok_name, c.vocab);
  nlohmann::json run = {{"mode", "pretrain"},
                        {"config", nlohmann::json::parse(ConfigToJson(c))},
                        {"init_model", po.init_model}};
  TrainerOptions t = MakeTrainerOptions(o, data.caches->train, run);
  t.title = "pretraining " + std::to_string(base->params.total() / 1000000.0).substr(0, 5) +
            "M parameters";
  TrainModel model(base->weights, &base->grads, nullptr, rows, o.seq_len, o.checkpoint_activations);
  std::fprintf(stderr, "pretraining %lld parameters, activations %.0f MB\n",
               static_cast<long long>(base->params.total()), model.ActivationBytes() / 1e6);
  TrainableBase* b = base.get();
  Trainer trainer(model, base->params, data.caches->train, data.val_cache(), t,
                  [b, &tok_bytes](const std::string& dir) {
                    SaveModel(*b, dir);
                    WriteFileAtomic(JoinPath(dir, "tokenizer.model"), tok_bytes);
                  });
  const TrainSummary s = trainer.Run();
  return Summarise(s, o.out, base->params.total(), model.ActivationBytes());
}

void AddTrainCommands(CLI::App& app) {
  auto lo = std::make_shared<LoraTrainOptions>();
  CLI::App* train = app.add_subcommand("train", "train a LoRA adapter on a frozen base model");
  train
      ->add_option("--model", lo->model,
                   "base model directory, GGUF file or bitsandbytes 4-bit directory")
      ->required();
  train->add_option("--rank", lo->rank, "LoRA rank r")->check(CLI::Range(1, 65536));
  train->add_option("--alpha", lo->alpha, "LoRA alpha (scale = alpha / r)")->check(kPositive);
  train->add_option("--dropout", lo->dropout, "LoRA dropout on the adapter input")
      ->check(CLI::Range(0.0, 0.9));
  train->add_option("--targets", lo->targets, "modules to adapt: q_proj,k_proj,… or all-linear");
  train
      ->add_option("--tree-depth", lo->tree_depth,
                   "tree of 2^D LoRA leaves per projection (0: plain LoRA)")
      ->check(CLI::Range(0, kMaxTreeDepth));
  train->add_option("--routing", lo->routing, "hard | soft | soft-then-hard")
      ->check(CLI::IsMember({"hard", "soft", "soft-then-hard"}));
  train
      ->add_option("--hard-from", lo->hard_from,
                   "soft-then-hard: first hard step (default: half way)")
      ->check(kNonNegative);
  train
      ->add_option("--gate", lo->gate, "path (g = p of the leaf) | unit (g = 1, gradient of log p)")
      ->check(CLI::IsMember({"path", "unit"}));
  train->add_option("--hardening", lo->hardening, "weight of the routing-entropy loss")
      ->check(kNonNegative);
  train->add_option("--balance", lo->balance, "weight of the leaf-balance loss")
      ->check(kNonNegative);
  train->add_option("--router-lr", lo->router_lr, "learning rate of the routers (default: --lr)")
      ->check(kPositive);
  AddBf16Flag(train, &lo->bf16,
              "the frozen BF16 base's matrix products (forward and dx; the adapter stays f32)");
  AddQuantizeFlags(train, &lo->quantize);
  AddCommonFlags(train, &lo->common);
  train->callback([lo]() { std::cout << RunTrain(*lo).ToJson().dump() << std::endl; });

  auto po = std::make_shared<PretrainOptions>();
  CLI::App* pre =
      app.add_subcommand("pretrain", "train every weight of a model, from scratch or on");
  auto* cfg = pre->add_option("--config", po->config_file, "config.json of a new model");
  auto* preset = pre->add_option("--preset", po->preset, "a named config: tiny, tinyllama");
  auto* init = pre->add_option(
      "--init-model", po->init_model,
      "continue from this model directory, GGUF file or bitsandbytes 4-bit directory");
  cfg->excludes(preset)->excludes(init);
  preset->excludes(init);
  pre->add_option("--tokenizer", po->tokenizer, "SentencePiece tokenizer.model");
  AddCommonFlags(pre, &po->common);
  pre->callback([po]() {
    if (po->config_file.empty() && po->preset.empty() && po->init_model.empty()) {
      Fail("pretrain: give --config FILE, --preset NAME or --init-model DIR");
    }
    std::cout << RunPretrain(*po).ToJson().dump() << std::endl;
  });
}

}  // namespace tinylora
