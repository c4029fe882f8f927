#include "dist/grad_sync.h"

#include <algorithm>
#include <chrono>
#include <cstring>

namespace tinylora {

void GradSync::Sum(ParamBlock& params) {
  value_bytes_ = index_bytes_ = 0;
  seconds_ = 0;
  if (comm_.size() == 1) return;
  const auto t0 = std::chrono::steady_clock::now();
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
  // Every rank now holds the same gradients in the same order: one packed sum.
  int64_t total = 0;
  params.ForEachGrad([&](int, int, const float*, int64_t n) { total += n; });
  buffer_.resize(static_cast<size_t>(total));
  int64_t at = 0;
  params.ForEachGrad([&](int, int, const float* g, int64_t n) {
    std::memcpy(buffer_.data() + at, g, static_cast<size_t>(n) * sizeof(float));
    at += n;
  });
  comm_.Sum(buffer_.data(), total);
  at = 0;
  params.ForEachGrad([&](int, int, float* g, int64_t n) {
    std::memcpy(g, buffer_.data() + at, static_cast<size_t>(n) * sizeof(float));
    at += n;
  });
  value_bytes_ = total * static_cast<int64_t>(sizeof(float));
  seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace tinylora
