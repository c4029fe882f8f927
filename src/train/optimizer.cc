#include "train/optimizer.h"

#include <algorithm>
#include <cmath>

namespace tinylora {

AdamW::AdamW(ParamBlock* params)
    : p_(params),
      m_(static_cast<size_t>(params->total()), 0.0f),
      v_(static_cast<size_t>(params->total()), 0.0f),
      lr_scale_(static_cast<size_t>(params->size()), 1.0) {}

void AdamW::Step(const AdamWOptions& o, double lr, int64_t step) {
  const double bc1 = 1.0 - std::pow(o.beta1, static_cast<double>(step));
  const double bc2 = 1.0 - std::pow(o.beta2, static_cast<double>(step));
  const float b1 = static_cast<float>(o.beta1), b2 = static_cast<float>(o.beta2);

  const float inv_sqrt_bc2 = static_cast<float>(1.0 / std::sqrt(bc2));
  const float eps = static_cast<float>(o.eps);
  for (int i = 0; i < p_->size(); ++i) {
    float* p = p_->value(i);
    const float* g = p_->grad(i);
    const int64_t off = p - p_->values().data(), n = p_->numel(i);
    float* m = m_.data() + off;
    float* v = v_.data() + off;
    const double lr_i = lr * lr_scale_[static_cast<size_t>(i)];
    const float step_size = static_cast<float>(lr_i / bc1);
    const bool decay = o.weight_decay > 0 && (o.decay_vectors || p_->shape(i).size() >= 2);
    const float keep = decay ? static_cast<float>(1.0 - lr_i * o.weight_decay) : 1.0f;
#pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t k = 0; k < n; ++k) {
      m[k] = b1 * m[k] + (1.0f - b1) * g[k];
      v[k] = b2 * v[k] + (1.0f - b2) * g[k] * g[k];
      const float denom = std::sqrt(v[k]) * inv_sqrt_bc2 + eps;
      p[k] = p[k] * keep - step_size * m[k] / denom;
    }
  }
}

double GradNorm(const ParamBlock& params) {
  constexpr int64_t kChunk = 1 << 16;
  const std::vector<float>& g = params.grads();
  const int64_t n = static_cast<int64_t>(g.size()), chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> part(static_cast<size_t>(chunks), 0.0);
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < chunks; ++c) {
    double s = 0;
    const int64_t end = std::min(n, (c + 1) * kChunk);
    for (int64_t k = c * kChunk; k < end; ++k)
      s += static_cast<double>(g[static_cast<size_t>(k)]) * g[static_cast<size_t>(k)];
    part[static_cast<size_t>(c)] = s;
  }
  double total = 0;
  for (double s : part) total += s;
  return std::sqrt(total);
}

std::string FirstNonFiniteGrad(const ParamBlock& params) {
  for (int i = 0; i < params.size(); ++i) {
    const float* g = params.grad(i);
    for (int64_t k = 0; k < params.numel(i); ++k) {
      if (!std::isfinite(g[k])) return params.name(i);
    }
  }
  return "";
}

double ClipGradNorm(ParamBlock& params, double clip) {
  const double norm = GradNorm(params);
  if (clip > 0 && norm > clip) {
    const float scale = static_cast<float>(clip / (norm + 1e-6));
    for (float& g : params.grads()) g *= scale;
  }
  return norm;
}

double Schedule::At(int64_t step) const {
  if (warmup > 0 && step <= warmup)
    return lr * static_cast<double>(step) / static_cast<double>(warmup);
  if (kind == "constant") return lr;
  const double span = static_cast<double>(std::max<int64_t>(1, total - warmup));
  const double progress = std::min(1.0, static_cast<double>(step - warmup) / span);
  const double min_lr = lr * min_lr_ratio;
  if (kind == "linear") return min_lr + (lr - min_lr) * (1.0 - progress);
  return min_lr + (lr - min_lr) * 0.5 * (1.0 + std::cos(M_PI * progress));  // cosine
}

}  // namespace tinylora
