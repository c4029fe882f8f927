#include "model/sampler.h"

#include <algorithm>
#include <cmath>

namespace tinylora {

int Sampler::Sample(const float* raw, int vocab) {
  // NaN would break the ordering below: it ranks last, like -inf.
  clean_.assign(raw, raw + vocab);
  for (float& x : clean_)
    if (std::isnan(x)) x = -INFINITY;
  const float* logits = clean_.data();
  int best = 0;
  for (int i = 1; i < vocab; ++i)
    if (logits[i] > logits[best]) best = i;
  if (o_.greedy || o_.temperature <= 0.0f) return best;

  cand_.resize(static_cast<size_t>(vocab));
  for (int i = 0; i < vocab; ++i) cand_[static_cast<size_t>(i)] = {logits[i], i};
  std::sort(cand_.begin(), cand_.end(), [](const auto& a, const auto& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  });
  size_t keep = cand_.size();
  if (o_.top_k > 0) keep = std::min(keep, static_cast<size_t>(o_.top_k));
  // probabilities at this temperature over the kept candidates
  const float mx = cand_[0].first;
  double total = 0;
  for (size_t i = 0; i < keep; ++i) {
    cand_[i].first = std::exp((cand_[i].first - mx) / o_.temperature);
    total += cand_[i].first;
  }
  if (o_.top_p < 1.0f) {
    double cum = 0;
    for (size_t i = 0; i < keep; ++i) {
      cum += cand_[i].first / total;
      if (cum >= o_.top_p) {
        keep = i + 1;
        break;
      }
    }
    total = 0;
    for (size_t i = 0; i < keep; ++i) total += cand_[i].first;
  }
  const double u = std::uniform_real_distribution<double>(0.0, total)(rng_);
  double cum = 0;
  for (size_t i = 0; i < keep; ++i) {
    cum += cand_[i].first;
    if (u < cum) return cand_[i].second;
  }
  return cand_[keep - 1].second;
}

}  // namespace tinylora
