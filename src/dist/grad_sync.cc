#include "dist/grad_sync.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <string>

namespace tinylora {

void GradSync::BlockDone(ParamBlock& params, int layer) {
  if (comm_.size() == 1) return;
  const auto t0 = std::chrono::steady_clock::now();
  if (started_.size() != static_cast<size_t>(params.size())) {
    started_.assign(static_cast<size_t>(params.size()), 0);
    by_layer_.clear();
    for (int i = 0; i < params.size(); ++i) {
      const std::string& name = params.name(i);
      const size_t at = name.find("layers.");
      if (params.sparse(i) || at == std::string::npos) continue;
      const size_t l = std::stoul(name.substr(at + 7));
      if (by_layer_.size() <= l) by_layer_.resize(l + 1);
      by_layer_[l].push_back(i);
    }
  }
  if (static_cast<size_t>(layer) < by_layer_.size()) {
    for (int i : by_layer_[static_cast<size_t>(layer)]) {
      if (params.grad(i) == nullptr) continue;
      comm_.StartSum(params.grad(i), params.numel(i));
      started_[static_cast<size_t>(i)] = 1;
      step_bytes_ += params.numel(i) * static_cast<int64_t>(sizeof(float));
    }
  }
  comm_.Progress();
  step_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void GradSync::Sum(ParamBlock& params) {
  if (comm_.size() == 1) return;
  const auto t0 = std::chrono::steady_clock::now();
  started_.resize(static_cast<size_t>(params.size()), 0);
  auto summed = [&](int i, int s) { return s < 0 && started_[static_cast<size_t>(i)] != 0; };
  comm_.WaitAll();
  // The union of touched segments, as tensor << 32 | segment, sorted.
  std::vector<int64_t> mine;
  params.ForEachGrad([&](int i, int s, const float*, int64_t) {
    if (s >= 0) mine.push_back(static_cast<int64_t>(i) << 32 | s);
  });
  std::vector<int64_t> all = comm_.AllGather(mine);
  index_bytes_ = static_cast<int64_t>(all.size() * sizeof(int64_t));
  std::sort(all.begin(), all.end());
  all.erase(std::unique(all.begin(), all.end()), all.end());
  for (int64_t key : all) params.SegmentGrad(static_cast<int>(key >> 32), key & 0xffffffff);
  // Every rank now holds the same gradients in the same order: one packed sum of those not
  // summed block by block already.
  int64_t total = 0;
  params.ForEachGrad([&](int i, int s, const float*, int64_t n) {
    if (!summed(i, s)) total += n;
  });
  buffer_.resize(static_cast<size_t>(total));
  int64_t at = 0;
  params.ForEachGrad([&](int i, int s, const float* g, int64_t n) {
    if (summed(i, s)) return;
    std::memcpy(buffer_.data() + at, g, static_cast<size_t>(n) * sizeof(float));
    at += n;
  });
  comm_.Sum(buffer_.data(), total);
  at = 0;
  params.ForEachGrad([&](int i, int s, float* g, int64_t n) {
    if (summed(i, s)) return;
    std::memcpy(g, buffer_.data() + at, static_cast<size_t>(n) * sizeof(float));
    at += n;
  });
  std::fill(started_.begin(), started_.end(), 0);
  value_bytes_ = step_bytes_ + total * static_cast<int64_t>(sizeof(float));
  seconds_ =
      step_seconds_ + std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  step_bytes_ = 0;
  step_seconds_ = 0;
}

}  // namespace tinylora
