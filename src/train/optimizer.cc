#include "train/optimizer.h"

#include <algorithm>
#include <cmath>

namespace tinylora {

namespace {

AdamWHyper MakeHyper(const AdamWOptions& o, double lr, int64_t step, bool decay) {
  const double bc1 = 1.0 - std::pow(o.beta1, static_cast<double>(step));
  const double bc2 = 1.0 - std::pow(o.beta2, static_cast<double>(step));
  return {static_cast<float>(o.beta1),
          static_cast<float>(o.beta2),
          static_cast<float>(o.eps),
          static_cast<float>(lr / bc1),
          static_cast<float>(1.0 / std::sqrt(bc2)),
          decay ? static_cast<float>(1.0 - lr * o.weight_decay) : 1.0f};
}

}  // namespace

AdamW::AdamW(ParamBlock* params, const Backend& backend)
    : params_(params), ops_(backend.ops()), state_(static_cast<size_t>(params->size())) {
  for (int i = 0; i < params->size(); ++i) {
    TensorState& t = state_[static_cast<size_t>(i)];
    if (params->sparse(i)) {
      t.seg.resize(static_cast<size_t>(params->segments(i)));
      t.steps.assign(static_cast<size_t>(params->segments(i)), 0);
    } else {
      t.m.assign(static_cast<size_t>(params->numel(i)), 0.0f);
      t.v.assign(static_cast<size_t>(params->numel(i)), 0.0f);
    }
  }
}

namespace {
// A segment's moments, m then v (n values each), zero when first asked for.
float* Moments(std::unique_ptr<float[]>& mv, int64_t n) {
  if (!mv) mv.reset(new float[static_cast<size_t>(2 * n)]());
  return mv.get();
}
}  // namespace

float* AdamW::SegmentM(int i, int s) {
  return Moments(state_[static_cast<size_t>(i)].seg[static_cast<size_t>(s)],
                 params_->segment_numel(i));
}

std::vector<int> AdamW::SegmentsWithState(int i) const {
  std::vector<int> out;
  const TensorState& t = state_[static_cast<size_t>(i)];
  for (size_t s = 0; s < t.seg.size(); ++s)
    if (t.seg[s]) out.push_back(static_cast<int>(s));
  return out;
}

int64_t AdamW::segments_with_state() const {
  int64_t n = 0;
  for (const TensorState& t : state_)
    for (const auto& mv : t.seg) n += mv ? 1 : 0;
  return n;
}

void AdamW::Step(const AdamWOptions& o, double lr, int64_t step, float grad_scale) {
  struct Piece {
    AdamWHyper h;
    const float* g;
    float* p;
    std::unique_ptr<float[]>* mv;  // allocated in the parallel loop on first use
    int64_t n;
  };
  std::vector<Piece> segments;  // touched segments, updated in parallel below
  params_->ForEachGrad([&](int i, int s, const float* g, int64_t n) {
    TensorState& t = state_[static_cast<size_t>(i)];
    const double lr_i = lr * t.lr_scale;
    const bool decay = o.weight_decay > 0 && (o.decay_vectors || params_->shape(i).size() >= 2);
    if (s < 0) {
      const AdamWHyper h = MakeHyper(o, lr_i, step, decay);
      float* p = params_->value(i);
#pragma omp parallel for schedule(static) if (n > 65536)
      for (int64_t c = 0; c < n; c += 4096) {
        ops_.adamw_update(h, grad_scale, g + c, p + c, t.m.data() + c, t.v.data() + c,
                          std::min<int64_t>(4096, n - c));
      }
      return;
    }
    const int64_t steps = ++t.steps[static_cast<size_t>(s)];
    segments.push_back({MakeHyper(o, lr_i, steps, decay), g, params_->value(i) + s * n,
                        &t.seg[static_cast<size_t>(s)], n});
  });
#pragma omp parallel for schedule(dynamic, 4)
  for (size_t k = 0; k < segments.size(); ++k) {
    const Piece& x = segments[k];
    float* m = Moments(*x.mv, x.n);  // allocated here, in parallel, on a segment's first use
    ops_.adamw_update(x.h, grad_scale, x.g, x.p, m, m + x.n, x.n);
  }
}

double GradNorm(const ParamBlock& params, const Ops& ops) {
  constexpr int64_t kChunk = 1 << 16;
  std::vector<std::pair<const float*, int64_t>> chunks;
  params.ForEachGrad([&](int, int, const float* g, int64_t n) {
    for (int64_t c = 0; c < n; c += kChunk) chunks.emplace_back(g + c, std::min(kChunk, n - c));
  });
  std::vector<double> part(chunks.size(), 0.0);
#pragma omp parallel for schedule(static)
  for (size_t c = 0; c < chunks.size(); ++c) {
    part[c] = ops.sum_squares(chunks[c].first, chunks[c].second);
  }
  double total = 0;
  for (double s : part) total += s;
  return std::sqrt(total);
}

std::string FirstNonFiniteGrad(const ParamBlock& params) {
  std::string bad;
  params.ForEachGrad([&](int i, int, const float* g, int64_t n) {
    if (!bad.empty()) return;
    for (int64_t k = 0; k < n; ++k) {
      if (!std::isfinite(g[k])) {
        bad = params.name(i);
        return;
      }
    }
  });
  return bad;
}

float ClipScale(double norm, double clip) {
  return clip > 0 && norm > clip ? static_cast<float>(clip / (norm + 1e-6)) : 1.0f;
}

double ClipGradNorm(ParamBlock& params, double clip, const Ops& ops) {
  const double norm = GradNorm(params, ops);
  if (clip > 0 && norm > clip) {
    const float scale = ClipScale(norm, clip);
    params.ForEachGrad([&](int, int, float* g, int64_t n) { ops.scale(g, n, scale); });
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
