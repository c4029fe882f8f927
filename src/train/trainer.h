// The training loop shared by `train` (LoRA on a frozen base) and `pretrain` (all weights):
// micro-batches with gradient accumulation, clipping, AdamW with a schedule, validation,
// metrics, atomic checkpoints, exact resume, and a clean stop on SIGINT/SIGTERM.
#pragma once

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>

#include "data/sampler.h"
#include "data/token_cache.h"
#include "dist/comm.h"
#include "dist/grad_sync.h"
#include "train/checkpoint.h"
#include "train/optimizer.h"
#include "train/train_model.h"

namespace tinylora {

struct TrainerOptions {
  int batch_size = 4;  // sequences per micro-batch (B), over all ranks: B / ranks on each
  int seq_len = 256;   // tokens per sequence (T)
  int grad_accum = 1;  // micro-batches per optimizer step
  int64_t steps = 0;   // optimizer steps (total, including resumed ones)
  Schedule schedule;
  AdamWOptions adam;
  double grad_clip = 1.0;     // 0: off
  int64_t eval_every = 0;     // steps; 0: only at the end
  int64_t eval_batches = 16;  // at most this many validation micro-batches per evaluation
  int64_t save_every = 0;     // steps; 0: only at the end
  int64_t log_every = 1;
  uint64_t seed = 0;
  bool resume = false;
  int64_t stop_after = 0;       // stop as on SIGINT after this many steps of this run (0: never)
  std::string out;              // output directory
  std::string run_json = "{}";  // options that a resumed run must share
  std::string title = "training loss";
  // Called before each step (e.g. to switch soft routing to hard), and to add to each
  // metrics line (e.g. routing statistics).
  std::function<void(int64_t step)> before_step;
  std::function<void(nlohmann::json& line)> add_metrics;
  // The ranks this run is split over (null: WorldComm()). Each reads its B / ranks rows of
  // every micro-batch; the loss is normalised by the count of loss tokens over all ranks and
  // the gradients are summed (dist/grad_sync.h) before clipping and AdamW, so every rank holds
  // the parameters one process would. Rank 0 alone writes metrics, checkpoints, progress and
  // the result.
  Comm* comm = nullptr;
};

struct TrainSummary {
  int64_t steps = 0;
  double final_loss = 0, val_loss = -1, tokens_per_s = 0, seconds = 0;
  bool stopped_by_signal = false;
};

// The rows of a global batch of `batch_size` sequences each of comm's ranks holds; Error
// (exit 2) when the ranks do not divide it.
int RowsPerRank(int batch_size, const Comm& comm);

class Trainer {
 public:
  // `save_artifact(dir)` writes the trained result (adapter or model files) into `dir`: used
  // for each checkpoint and for the final output in `out`.
  Trainer(TrainModel& model, ParamBlock& params, const TokenCache& train, const TokenCache* val,
          const TrainerOptions& options, std::function<void(const std::string& dir)> save_artifact);
  AdamW& optimizer() { return adam_; }
  TrainSummary Run();
  // Mean masked loss over (at most eval_batches micro-batches of) `data`, the micro-batches
  // dealt out over the ranks and the sums reduced.
  double Evaluate(const TokenCache& data);

 private:
  void Save(const TrainState& state);

  TrainModel& model_;
  ParamBlock& params_;
  const TokenCache& train_;
  const TokenCache* val_;
  TrainerOptions o_;
  std::function<void(const std::string&)> save_artifact_;
  AdamW adam_;
  Comm& comm_;
  GradSync sync_;
};

}  // namespace tinylora
