#include "ceilings.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <vector>

#include "ops/gemm.h"
#include "ops/gemm_bf16.h"
#include "ops/matmul.h"
#include "util/half.h"

namespace tinylora::bench {

namespace {
double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// GFLOP/s of `multiply(i, x, y)` over every shape i (total flops / total time), best of `reps`
// after one warm-up pass; x and y are sized for the largest shape.
template <typename Multiply>
double GemmGflops(const std::vector<GemmShape>& shapes, int reps, Multiply multiply) {
  int64_t max_x = 0, max_y = 0;
  double flops = 0;
  for (const auto& s : shapes) {
    max_x = std::max(max_x, s.m * s.k);
    max_y = std::max(max_y, s.m * s.n);
    flops += 2.0 * s.m * s.n * s.k;
  }
  std::vector<float> x(static_cast<size_t>(max_x), 0.5f), y(static_cast<size_t>(max_y));
  double best = 1e30;
  for (int r = 0; r < reps + 1; ++r) {
    const double t0 = Now();
    for (size_t i = 0; i < shapes.size(); ++i) multiply(i, x.data(), y.data());
    if (r > 0) best = std::min(best, Now() - t0);
  }
  return flops / best / 1e9;
}

}  // namespace

double SgemmGflops(const std::vector<GemmShape>& shapes, int reps) {
  int64_t max_w = 0;
  for (const auto& s : shapes) max_w = std::max(max_w, s.n * s.k);
  const std::vector<float> w(static_cast<size_t>(max_w), 0.25f);
  return GemmGflops(shapes, reps, [&](size_t i, const float* x, float* y) {
    const GemmShape& s = shapes[i];
    Gemm(false, true, static_cast<int>(s.m), static_cast<int>(s.n), static_cast<int>(s.k), 1.0f, x,
         static_cast<int>(s.k), w.data(), static_cast<int>(s.k), 0.0f, y, static_cast<int>(s.n));
  });
}

double Bf16GemmGflops(const std::vector<GemmShape>& shapes, int reps, Bf16Kernel kernel) {
  if (!Bf16KernelAvailable(kernel)) return 0;
  std::vector<std::vector<uint16_t>> weights;
  std::vector<Bf16Weight> prepared;
  for (const auto& s : shapes) {
    weights.emplace_back(static_cast<size_t>(s.n * s.k), F32ToBf16(0.25f));
    prepared.emplace_back(kernel, Tensor{Format::kBF16, s.n, s.k, weights.back().data()}, false);
  }
  return GemmGflops(shapes, reps, [&](size_t i, const float* x, float* y) {
    prepared[i].Forward(x, shapes[i].m, y);
  });
}

double StreamingKernelGBs(const Tensor& w, int64_t rows, int reps) {
  rows = std::min(rows, w.rows);
  const int64_t bytes = FormatBytes(w.format, rows * w.cols);
  constexpr int kPasses = 64;  // per timed repetition, so that one lasts well over the clock's tick
  double best = 1e30;
  for (int r = 0; r < reps + 1; ++r) {
    double elapsed = 0;
#pragma omp parallel reduction(max : elapsed)
    {
      // Each thread's copy of the rows, in its own pages, read once before the clock starts.
      std::vector<uint8_t> copy(static_cast<size_t>(bytes));
      std::memcpy(copy.data(), w.row(0), static_cast<size_t>(bytes));
      const Tensor slice{w.format, rows, w.cols, copy.data()};
      std::vector<float> x(static_cast<size_t>(w.cols), 0.5f), y(static_cast<size_t>(rows));
      MatVecRows(slice, x.data(), 1, 0, rows, y.data());
#pragma omp barrier
      const double t0 = Now();
      for (int p = 0; p < kPasses; ++p) MatVecRows(slice, x.data(), 1, 0, rows, y.data());
      elapsed = Now() - t0;
    }
    if (r > 0) best = std::min(best, elapsed);
  }
  return static_cast<double>(bytes) * kPasses * omp_get_max_threads() / best / 1e9;
}

double ReadBandwidthGBs(int64_t bytes, int reps) {
  // 64-byte vectors (GCC vector extension, lowered to this CPU's SIMD by -march=native) and
  // four independent sums per thread, so the loop is bound by memory, not by an add chain.
  typedef uint64_t V8 __attribute__((vector_size(64)));
  const int64_t n = bytes / 64 / 4 * 4;
  std::vector<V8> buf(static_cast<size_t>(n));
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) buf[static_cast<size_t>(i)] = V8{} + static_cast<uint64_t>(i & 7);
  double best = 1e30;
  uint64_t sink = 0;
  for (int r = 0; r < reps; ++r) {
    const double t0 = Now();
    uint64_t total = 0;
#pragma omp parallel reduction(+ : total)
    {
      const int64_t parts = omp_get_num_threads(), id = omp_get_thread_num();
      const int64_t begin = n / 4 * id / parts * 4, end = n / 4 * (id + 1) / parts * 4;
      V8 a0{}, a1{}, a2{}, a3{};
      for (int64_t i = begin; i < end; i += 4) {
        a0 += buf[static_cast<size_t>(i)];
        a1 += buf[static_cast<size_t>(i + 1)];
        a2 += buf[static_cast<size_t>(i + 2)];
        a3 += buf[static_cast<size_t>(i + 3)];
      }
      const V8 a = a0 + a1 + a2 + a3;
      for (int k = 0; k < 8; ++k) total += a[k];
    }
    best = std::min(best, Now() - t0);
    sink += total;
  }
  if (sink == 1) return 0;  // keeps the reads
  return static_cast<double>(n * 64) / best / 1e9;
}

double CopyBandwidthGBs(int64_t bytes, int reps) {
  const int64_t n = bytes / 2;
  std::vector<char> a(static_cast<size_t>(n), 1), b(static_cast<size_t>(n), 2);
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const double t0 = Now();
#pragma omp parallel
    {
      const int64_t parts = omp_get_num_threads(), id = omp_get_thread_num();
      const int64_t begin = n * id / parts, end = n * (id + 1) / parts;
      std::memcpy(b.data() + begin, a.data() + begin, static_cast<size_t>(end - begin));
    }
    best = std::min(best, Now() - t0);
  }
  return 2.0 * static_cast<double>(n) / best / 1e9;
}

}  // namespace tinylora::bench
