#include "data/sampler.h"

#include <random>
#include <string>

#include "util/error.h"

namespace tinylora {

namespace {

// Uniform in [0, n), n >= 1, without bias: draws below 2^64 mod n are rejected.
uint64_t UniformBelow(std::mt19937_64& rng, uint64_t n) {
  const uint64_t threshold = (0 - n) % n;  // = 2^64 mod n
  for (;;) {
    const uint64_t x = rng();
    if (x >= threshold) return x % n;
  }
}

}  // namespace

std::vector<int64_t> BatchSampler::Permutation(int64_t windows, uint64_t seed, int64_t epoch) {
  std::vector<int64_t> order(static_cast<size_t>(windows));
  for (int64_t i = 0; i < windows; ++i) order[static_cast<size_t>(i)] = i;
  std::mt19937_64 rng(seed + static_cast<uint64_t>(epoch));
  for (int64_t i = windows - 1; i > 0; --i) {
    const uint64_t j = UniformBelow(rng, static_cast<uint64_t>(i) + 1);
    std::swap(order[static_cast<size_t>(i)], order[j]);
  }
  return order;
}

BatchSampler::BatchSampler(const TokenCache& data, int seq_len, uint64_t seed, Shard shard)
    : data_(data), seq_len_(seq_len), seed_(seed), shard_(shard) {
  if (shard.world < 1 || shard.rank < 0 || shard.rank >= shard.world) {
    Fail("rank " + std::to_string(shard.rank) + " is outside a world of " +
         std::to_string(shard.world) + " processes");
  }
  if (seq_len < 1) Fail("--seq-len must be at least 1, got " + std::to_string(seq_len));
  if (data.size() < static_cast<int64_t>(seq_len) + 1) {
    Fail(data.path() + ": data has " + std::to_string(data.size()) +
         " tokens, fewer than --seq-len + 1 (" + std::to_string(int64_t{seq_len} + 1) + ")");
  }
  windows_ = (data.size() - 1) / seq_len;
  tokens_.resize(static_cast<size_t>(seq_len) + 1);
  mask_.resize(static_cast<size_t>(seq_len) + 1);
  order_ = Permutation(windows_, seed_, 0);
}

void BatchSampler::Restore(const State& s) {
  if (s.epoch < 0 || s.position < 0 || s.position > windows_) {
    Fail("data position (epoch " + std::to_string(s.epoch) + ", window " +
         std::to_string(s.position) + ") does not fit " + data_.path() + ", which has " +
         std::to_string(windows_) + " windows of " + std::to_string(seq_len_) +
         " tokens per epoch");
  }
  if (s.epoch != state_.epoch) order_ = Permutation(windows_, seed_, s.epoch);
  state_ = s;
}

void BatchSampler::Next(int B, int32_t* inputs, int32_t* targets, uint8_t* mask) {
  if (B % shard_.world != 0) {
    Fail("--batch-size " + std::to_string(B) + " does not divide over " +
         std::to_string(shard_.world) + " processes");
  }
  const int per_rank = B / shard_.world, first = shard_.rank * per_rank;
  const size_t T = static_cast<size_t>(seq_len_);
  for (int g = 0; g < B; ++g) {         // every rank walks the whole global batch, reads its rows
    if (state_.position == windows_) {  // end of the epoch
      ++state_.epoch;
      state_.position = 0;
      order_ = Permutation(windows_, seed_, state_.epoch);
    }
    const int64_t w = order_[static_cast<size_t>(state_.position++)];
    if (g < first || g >= first + per_rank) continue;
    const size_t b = static_cast<size_t>(g - first);
    data_.Read(w * seq_len_, seq_len_ + 1, tokens_.data(), mask_.data());
    int32_t* in = inputs + b * T;    // (T)
    int32_t* out = targets + b * T;  // (T)
    uint8_t* m = mask + b * T;       // (T)
    for (size_t t = 0; t < T; ++t) {
      in[t] = tokens_[t];
      out[t] = tokens_[t + 1];
      m[t] = mask_[t + 1];
    }
  }
}

std::vector<EvalWindow> EvalWindows(const TokenCache& data, int T) {
  if (T < 1) Fail("--seq-len must be at least 1, got " + std::to_string(T));
  std::vector<EvalWindow> windows;
  for (int64_t begin = 0; data.size() - begin >= 2; begin += T) {
    EvalWindow w;
    w.begin = begin;
    w.length = static_cast<int>(std::min<int64_t>(int64_t{T} + 1, data.size() - begin));
    windows.push_back(w);
  }
  return windows;
}

void ReadWindow(const TokenCache& data, const EvalWindow& w, int32_t* inputs, int32_t* targets,
                uint8_t* mask) {
  std::vector<int32_t> tokens(static_cast<size_t>(w.length));  // (length)
  std::vector<uint8_t> m(static_cast<size_t>(w.length));       // (length)
  data.Read(w.begin, w.length, tokens.data(), m.data());
  for (int t = 0; t + 1 < w.length; ++t) {
    inputs[t] = tokens[static_cast<size_t>(t)];
    targets[t] = tokens[static_cast<size_t>(t) + 1];
    mask[t] = m[static_cast<size_t>(t) + 1];
  }
}

}  // namespace tinylora
