// Training windows over a token cache. Legend: B = batch, T = sequence length (--seq-len).
//
// The stream of N tokens is cut into W = (N - 1) / T windows; window w covers the tokens
// [w·T, w·T + T + 1): inputs are its first T, targets its last T, and the loss mask is the
// targets' mask. Windows cross document boundaries (… EOS BOS …; BOS is never a target).
#pragma once

#include <cstdint>
#include <vector>

#include "data/token_cache.h"

namespace tinylora {

// One process's part of the data (DESIGN.md §8, ranks): of every global batch of B windows,
// rank k of W reads rows [k·B/W, (k+1)·B/W), so the W shards concatenate to the batch one
// process would read, and every rank keeps the same (epoch, position).
struct Shard {
  int rank = 0, world = 1;
};

// Visits every window once per epoch, in a random order drawn from seed + epoch, and rolls
// into the next epoch by itself. Keeps a reference to `data`, which must outlive it.
class BatchSampler {
 public:
  // Where the sampler is: the next window is permutation(epoch)[position].
  struct State {
    int64_t epoch = 0;
    int64_t position = 0;  // in [0, windows_per_epoch()]
  };

  // Error (exit 2) "data has N tokens, fewer than --seq-len + 1 (T+1)" when no window fits.
  // Error (exit 2) for a shard whose rank is not in [0, world).
  BatchSampler(const TokenCache& data, int seq_len, uint64_t seed, Shard shard = {});

  int64_t windows_per_epoch() const { return windows_; }
  int seq_len() const { return seq_len_; }

  // inputs, targets, mask (B/W, T): this rank's rows of the next global batch of B windows.
  // Error (exit 2) when W does not divide B.
  void Next(int B, int32_t* inputs, int32_t* targets, uint8_t* mask);
  const Shard& shard() const { return shard_; }

  State state() const { return state_; }
  // Continues from `s` (as saved from state()): the same batches follow as followed then.
  // Error (exit 2) if `s` does not fit this data (a position past the epoch's windows).
  void Restore(const State& s);

  // The order of windows in `epoch`: a Fisher-Yates shuffle driven by
  // std::mt19937_64(seed + epoch) with our own unbiased bounded integers, so the order is the
  // same with every standard library.
  static std::vector<int64_t> Permutation(int64_t windows, uint64_t seed, int64_t epoch);

 private:
  const TokenCache& data_;
  int seq_len_;
  uint64_t seed_;
  Shard shard_;
  int64_t windows_ = 0;
  State state_;
  std::vector<int64_t> order_;   // (W) permutation of state_.epoch
  std::vector<int32_t> tokens_;  // (T+1) scratch
  std::vector<uint8_t> mask_;    // (T+1) scratch
};

// A window for evaluation: tokens [begin, begin + length) of the stream, length in [2, T+1];
// inputs are the first length - 1 tokens, targets the last length - 1.
struct EvalWindow {
  int64_t begin = 0;
  int length = 0;
};

// All windows in order, each starting T tokens after the previous one, so each token after
// the first is a target exactly once; the last, partial window is kept if it has >= 2 tokens.
std::vector<EvalWindow> EvalWindows(const TokenCache& data, int T);

// inputs, targets, mask (w.length - 1) = the window's inputs, targets and targets' mask.
void ReadWindow(const TokenCache& data, const EvalWindow& w, int32_t* inputs, int32_t* targets,
                uint8_t* mask);

}  // namespace tinylora
