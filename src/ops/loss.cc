#include "ops/loss.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "ops/ops.h"

namespace tinylora {

double CrossEntropyForwardBackward(float* logits, const int32_t* targets, const uint8_t* mask,
                                   int64_t N, int64_t V, float grad_scale) {
  // Per-row losses summed in order afterwards: the result does not depend on the thread count.
  std::vector<double> row_loss(static_cast<size_t>(N), 0.0);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    float* row = logits + n * V;
    if (mask != nullptr && mask[n] == 0) {
      std::fill(row, row + V, 0.0f);
      continue;
    }
    const float target_logit = row[targets[n]];
    const float lse = Softmax(row, V);  // row now holds probabilities
    row_loss[static_cast<size_t>(n)] = static_cast<double>(lse) - target_logit;
    row[targets[n]] -= 1.0f;
    for (int64_t v = 0; v < V; ++v) row[v] *= grad_scale;
  }
  double total = 0;
  for (double l : row_loss) total += l;
  return total;
}

double CrossEntropyLoss(const float* logits, const int32_t* targets, const uint8_t* mask, int64_t N,
                        int64_t V) {
  std::vector<double> row_loss(static_cast<size_t>(N), 0.0);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    if (mask != nullptr && mask[n] == 0) continue;
    const float* row = logits + n * V;
    const float mx = *std::max_element(row, row + V);
    double sum = 0;
    for (int64_t v = 0; v < V; ++v) sum += std::exp(static_cast<double>(row[v]) - mx);
    row_loss[static_cast<size_t>(n)] = std::log(sum) + mx - row[targets[n]];
  }
  double total = 0;
  for (double l : row_loss) total += l;
  return total;
}

double CrossEntropyForwardBackwardReference(float* logits, const int32_t* targets,
                                            const uint8_t* mask, int64_t N, int64_t V,
                                            float grad_scale) {
  double total = 0;
  for (int64_t n = 0; n < N; ++n) {
    float* row = logits + n * V;
    if (mask != nullptr && mask[n] == 0) {
      std::fill(row, row + V, 0.0f);
      continue;
    }
    const double mx = *std::max_element(row, row + V);
    double sum = 0;
    for (int64_t v = 0; v < V; ++v) sum += std::exp(row[v] - mx);
    total += std::log(sum) + mx - row[targets[n]];
    for (int64_t v = 0; v < V; ++v) {
      const double p = std::exp(row[v] - mx) / sum - (v == targets[n] ? 1.0 : 0.0);
      row[v] = static_cast<float>(p * grad_scale);
    }
  }
  return total;
}

}  // namespace tinylora
