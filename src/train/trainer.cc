#include "train/trainer.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <optional>

#include "train/metrics.h"
#include "util/error.h"
#include "util/file.h"

namespace tinylora {

namespace {

volatile std::sig_atomic_t g_stop = 0;
void OnSignal(int) { g_stop = 1; }

// Installs the SIGINT/SIGTERM handlers for its lifetime.
class StopSignals {
 public:
  StopSignals() {
    g_stop = 0;
    struct sigaction sa = {};
    sa.sa_handler = OnSignal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int_);
    sigaction(SIGTERM, &sa, &old_term_);
  }
  ~StopSignals() {
    sigaction(SIGINT, &old_int_, nullptr);
    sigaction(SIGTERM, &old_term_, nullptr);
  }

 private:
  struct sigaction old_int_, old_term_;
};

std::string Duration(double s) {
  char buf[32];
  const long t = static_cast<long>(s + 0.5);
  if (t >= 3600) {
    std::snprintf(buf, sizeof(buf), "%ldh%02ldm", t / 3600, t / 60 % 60);
  } else {
    std::snprintf(buf, sizeof(buf), "%ldm%02lds", t / 60, t % 60);
  }
  return buf;
}

uint64_t StepSeed(uint64_t seed, int64_t step, int micro) {
  uint64_t x = seed * 0x9e3779b97f4a7c15ull + static_cast<uint64_t>(step) * 1000003u +
               static_cast<uint64_t>(micro) + 1;
  x = (x ^ (x >> 31)) * 0xbf58476d1ce4e5b9ull;
  return (x ^ (x >> 29)) | 1;  // never 0 (0 means "no dropout")
}

}  // namespace

Trainer::Trainer(TrainModel& model, ParamBlock& params, const TokenCache& train,
                 const TokenCache* val, const TrainerOptions& options,
                 std::function<void(const std::string& dir)> save_artifact)
    : model_(model),
      params_(params),
      train_(train),
      val_(val),
      o_(options),
      save_artifact_(std::move(save_artifact)),
      adam_(&params),
      comm_(options.comm != nullptr ? *options.comm : WorldComm()),
      sync_(comm_) {}

double Trainer::Evaluate(const TokenCache& data) {
  const int B = model_.B(), T = model_.T();  // this rank's rows
  const std::vector<EvalWindow> windows = EvalWindows(data, T);
  std::vector<int32_t> in(static_cast<size_t>(B) * T), tgt(in.size());
  std::vector<uint8_t> mask(in.size());
  double sums[2] = {0, 0};  // Σ CE, Σ mask
  const int64_t limit =
      std::min<int64_t>(static_cast<int64_t>(windows.size()), o_.eval_batches * B * comm_.size());
  // Rank k takes micro-batches k, k + ranks, …: together the windows one process would read.
  for (int64_t w0 = static_cast<int64_t>(B) * comm_.rank(); w0 < limit;
       w0 += static_cast<int64_t>(B) * comm_.size()) {
    std::fill(in.begin(), in.end(), 0);
    std::fill(tgt.begin(), tgt.end(), 0);
    std::fill(mask.begin(), mask.end(), 0);
    for (int b = 0; b < B && w0 + b < limit; ++b) {
      const size_t off = static_cast<size_t>(b) * T;
      ReadWindow(data, windows[static_cast<size_t>(w0 + b)], &in[off], &tgt[off], &mask[off]);
    }
    for (uint8_t m : mask) sums[1] += m;
    sums[0] += model_.ForwardLoss(in.data(), tgt.data(), mask.data());
  }
  comm_.Sum(sums, 2);
  return sums[1] > 0 ? sums[0] / sums[1] : NAN;
}

void Trainer::Save(const TrainState& state) {
  if (comm_.root()) SaveCheckpoint(o_.out, params_, adam_, state, save_artifact_);
}

int RowsPerRank(int batch_size, const Comm& comm) {
  if (batch_size % comm.size() != 0) {
    Fail("--batch-size " + std::to_string(batch_size) + " does not split over " +
         std::to_string(comm.size()) + " ranks: give a multiple of " + std::to_string(comm.size()));
  }
  return batch_size / comm.size();
}

TrainSummary Trainer::Run() {
  const int B = o_.batch_size, T = o_.seq_len, ranks = comm_.size();
  const bool root = comm_.root();
  int rows = 0;  // this rank's
  std::optional<BatchSampler> sampler_holder;
  comm_.Agree([&] {
    rows = RowsPerRank(B, comm_);
    if (model_.B() != rows) {
      FailRuntime("the training model holds " + std::to_string(model_.B()) +
                  " rows of a micro-batch, not this rank's " + std::to_string(rows));
    }
    if (root) MakeDirectories(o_.out);
    sampler_holder.emplace(train_, T, o_.seed, Shard{comm_.rank(), ranks});
  });
  BatchSampler& sampler = *sampler_holder;
  model_.SetFirstRow(static_cast<int64_t>(comm_.rank()) * rows);
  if (ranks > 1) model_.SetStatsSum([this](double* v, int64_t n) { comm_.Sum(v, n); });
  TrainState state;
  state.run = o_.run_json;
  if (o_.resume) {
    comm_.Agree([&] {  // every rank reads the checkpoint; a bad one stops them all, once
      TrainState saved;
      if (!LoadCheckpoint(o_.out, &params_, &adam_, &saved)) {
        Fail("--resume: " + CheckpointDir(o_.out) + " holds no checkpoint");
      }
      if (nlohmann::json::parse(saved.run) != nlohmann::json::parse(o_.run_json)) {
        Fail("--resume: " + CheckpointDir(o_.out) +
             " was written by a run with other options (model, data, batch or seed): " + saved.run);
      }
      state = saved;
      sampler.Restore({state.epoch, state.position});
    });
    if (root) {
      std::fprintf(stderr, "resumed from %s at step %lld\n", CheckpointDir(o_.out).c_str(),
                   static_cast<long long>(state.step));
    }
  }
  std::optional<MetricsLog> metrics;
  if (root) metrics.emplace(JoinPath(o_.out, "metrics.jsonl"), o_.resume ? state.step : -1);
  StopSignals signals;
  const bool tty = ::isatty(2);

  std::vector<int32_t> in(static_cast<size_t>(rows) * T), tgt(in.size());
  std::vector<uint8_t> mask(in.size());
  TrainSummary sum;
  const int64_t start_step = state.step;
  const auto t_start = std::chrono::steady_clock::now();
  double window_tokens = 0, window_s = 0, last_loss = NAN;
  int64_t saved_step = state.step;
  // A signal to any rank stops them all: the ranks agree on it in each step's last sum.
  bool stop = comm_.SumOne(g_stop ? 1 : 0) > 0;
  while (state.step < o_.steps && !stop) {
    const auto t0 = std::chrono::steady_clock::now();
    const int64_t step = state.step + 1;
    if (o_.before_step) o_.before_step(step);
    params_.ZeroGrads();
    // Each micro-batch is normalised by its own target count over all ranks, then averaged
    // over micro-batches; sums[0] is this rank's share of the loss, sums[1] of the aux loss.
    double sums[3] = {0, 0, 0};
    int64_t tokens = 0;
    for (int micro = 0; micro < o_.grad_accum; ++micro) {
      // The last micro-batch's blocks start their gradients' sums as their backward ends.
      if (ranks > 1 && micro == o_.grad_accum - 1) {
        model_.SetBlockDone([this](int l) { sync_.BlockDone(params_, l); });
      }
      sampler.Next(B, in.data(), tgt.data(), mask.data());
      double count = 0;
      for (uint8_t m : mask) count += m;
      if (ranks > 1) count = comm_.SumOne(count);
      const float scale = count > 0 ? static_cast<float>(1.0 / (count * o_.grad_accum)) : 0.0f;
      const double total =
          model_.ForwardBackward(in.data(), tgt.data(), mask.data(), scale,
                                 StepSeed(o_.seed, step, micro), 1.0 / o_.grad_accum);
      sums[1] += model_.last_aux_loss() / ranks;  // the global batch's on every rank
      sums[0] += count > 0 ? total / count : 0.0;
      tokens += static_cast<int64_t>(B) * T;
    }
    model_.SetBlockDone(nullptr);
    sync_.Sum(params_);
    sums[2] = g_stop ? 1 : 0;
    comm_.Sum(sums, 3);
    stop = sums[2] > 0;
    const double loss = sums[0] / o_.grad_accum, aux_sum = sums[1];
    if (!std::isfinite(loss)) {
      FailRuntime("non-finite loss at step " + std::to_string(step) +
                  "; the last good checkpoint is in " + CheckpointDir(o_.out));
    }
    // A non-finite gradient makes the norm (Σ g² in double) non-finite: only then is the
    // tensor looked for, so a step passes over its gradients once here, not twice.
    const double norm = GradNorm(params_);
    if (!std::isfinite(norm)) {
      FailRuntime("non-finite gradient in tensor '" + FirstNonFiniteGrad(params_) + "' at step " +
                  std::to_string(step) + "; the last good checkpoint is in " +
                  CheckpointDir(o_.out));
    }
    const double lr = o_.schedule.At(step);
    adam_.Step(o_.adam, lr, step, ClipScale(norm, o_.grad_clip));  // clipping folded in

    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const BatchSampler::State s = sampler.state();
    state.step = step;
    state.epoch = s.epoch;
    state.position = s.position;
    state.tokens += tokens;
    state.elapsed_s += dt;
    window_tokens += static_cast<double>(tokens);
    window_s += dt;
    last_loss = loss;

    nlohmann::json line = {
        {"step", step},      {"loss", loss},           {"lr", lr},
        {"grad_norm", norm}, {"tokens", state.tokens}, {"tokens_per_s", tokens / dt}};
    if (aux_sum != 0) line["aux_loss"] = aux_sum;
    if (ranks > 1) {
      line["ranks"] = ranks;
      line["sync_s"] = sync_.seconds();
      line["sync_bytes"] = sync_.value_bytes() + sync_.index_bytes();
    }
    if (o_.add_metrics) o_.add_metrics(line);
    if (o_.stop_after > 0 && step - start_step >= o_.stop_after) stop = true;
    const bool last = step == o_.steps || stop;
    if ((o_.eval_every > 0 && step % o_.eval_every == 0) || (last && val_ != nullptr)) {
      if (val_ != nullptr) {
        sum.val_loss = Evaluate(*val_);
        line["val_loss"] = sum.val_loss;
      }
    }
    if (root && (step % o_.log_every == 0 || last || line.contains("val_loss"))) {
      metrics->Write(line.dump());
      const double eta =
          window_s / window_tokens * static_cast<double>(o_.steps - step) * B * T * o_.grad_accum;
      std::fprintf(stderr, "%sstep %lld/%lld | loss %.4f | lr %.2e | %.0f tokens/s | ETA %s%s",
                   tty ? "\r" : "", static_cast<long long>(step), static_cast<long long>(o_.steps),
                   loss, lr, window_tokens / window_s, Duration(eta).c_str(),
                   line.contains("val_loss")
                       ? (" | val " + std::to_string(line["val_loss"].get<double>())).c_str()
                       : "");
      if (!tty || line.contains("val_loss") || last) std::fprintf(stderr, "\n");
      window_tokens = window_s = 0;
    }
    if ((o_.save_every > 0 && step % o_.save_every == 0) || last) {
      Save(state);
      saved_step = step;
    }
  }
  if (stop) {
    // A stop agreed after this step's `last` was read still gets its checkpoint.
    if (state.step > saved_step) Save(state);
    if (root) {
      std::fprintf(stderr, "\nstopped by signal at step %lld; checkpoint saved in %s\n",
                   static_cast<long long>(state.step), CheckpointDir(o_.out).c_str());
    }
    sum.stopped_by_signal = true;
  }
  if (root) {
    save_artifact_(o_.out);
    WriteLossCurve(metrics->path(), JoinPath(o_.out, "loss.svg"), o_.title);
  }
  sum.steps = state.step;
  sum.final_loss = last_loss;
  sum.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  sum.tokens_per_s = state.step > start_step ? static_cast<double>(state.step - start_step) * B *
                                                   T * o_.grad_accum / sum.seconds
                                             : 0.0;
  return sum;
}

}  // namespace tinylora
