// Picks the next token from a row of logits: greedy, or temperature + top-k + top-p sampling
// with a seeded generator (the same seed gives the same text).
#pragma once

#include <cstdint>
#include <random>
#include <vector>

namespace tinylora {

struct SamplerOptions {
  bool greedy = true;
  float temperature = 1.0f;
  int top_k = 0;       // 0: no limit
  float top_p = 1.0f;  // 1: no limit
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(const SamplerOptions& o) : o_(o), rng_(o.seed) {}
  int Sample(const float* logits, int vocab);

 private:
  SamplerOptions o_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int>> cand_;
  std::vector<float> clean_;
};

}  // namespace tinylora
