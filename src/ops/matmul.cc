#include "ops/matmul.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "ops/format.h"
#include "ops/gemm.h"
#include "ops/gemm_bf16.h"

namespace tinylora {

namespace {
constexpr int64_t kRowBlock = 16;    // rows of W per task of the streaming kernel
constexpr int64_t kPanelRows = 256;  // rows of a BF16 W widened at a time for sgemm
// Dequantises rows [r0, r0 + nr) of W into panel (nr, in), in parallel.
void WidenPanel(const Tensor& w, int64_t r0, int64_t nr, float* panel) {
  const FormatTraits& f = Traits(w.format);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < nr; ++r) f.dequantize(w.row(r0 + r), w.cols, panel + r * w.cols);
}

}  // namespace

void MatMul(const Tensor& w, const float* x, int64_t T, float* y) {
  const int64_t out = w.rows, in = w.cols;
  if (T <= kMatVecMaxRows) {
    const int64_t blocks = (out + kRowBlock - 1) / kRowBlock;
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
      MatVecRows(w, x, T, b * kRowBlock, std::min(out, (b + 1) * kRowBlock), y);
    }
    return;
  }
  if (w.bf16_compute != nullptr) {
    w.bf16_compute->Forward(x, T, y);
    return;
  }
  if (Traits(w.format).gemm_in_place) {
    Gemm(false, true, static_cast<int>(T), static_cast<int>(out), static_cast<int>(in), 1.0f, x,
         static_cast<int>(in), w.f32(), static_cast<int>(in), 0.0f, y, static_cast<int>(out));
    return;
  }
  // Other formats: dequantise a panel of rows of W, then one sgemm writes those columns of y.
  std::vector<float> panel(static_cast<size_t>(std::min(out, kPanelRows) * in));
  for (int64_t r0 = 0; r0 < out; r0 += kPanelRows) {
    const int64_t nr = std::min(kPanelRows, out - r0);
    WidenPanel(w, r0, nr, panel.data());
    Gemm(false, true, static_cast<int>(T), static_cast<int>(nr), static_cast<int>(in), 1.0f, x,
         static_cast<int>(in), panel.data(), static_cast<int>(in), 0.0f, y + r0,
         static_cast<int>(out));
  }
}

void MatMulBatchInvariant(const Tensor& w, const float* x, int64_t T, float* y) {
  // Blocks of W rows per task; with many rows of x a larger block stays in L2 while x streams.
  const int64_t out = w.rows, rows = T <= kMatVecMaxRows ? kRowBlock : 4 * kRowBlock;
  const int64_t blocks = (out + rows - 1) / rows;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < blocks; ++b)
    MatVecRows(w, x, T, b * rows, std::min(out, (b + 1) * rows), y);
}

void MatMulBackwardX(const Tensor& w, const float* dy, int64_t T, float* dx, bool accumulate) {
  const int64_t out = w.rows, in = w.cols;
  if (w.bf16_compute != nullptr && w.bf16_compute->has_backward()) {
    w.bf16_compute->BackwardX(dy, T, dx, accumulate);
    return;
  }
  if (Traits(w.format).gemm_in_place) {
    Gemm(false, false, static_cast<int>(T), static_cast<int>(in), static_cast<int>(out), 1.0f, dy,
         static_cast<int>(out), w.f32(), static_cast<int>(in), accumulate ? 1.0f : 0.0f, dx,
         static_cast<int>(in));
    return;
  }
  // Other formats: dx += dy[:, panel] · W_panel, one dequantised panel of rows at a time.
  std::vector<float> panel(static_cast<size_t>(std::min(out, kPanelRows) * in));
  for (int64_t r0 = 0; r0 < out; r0 += kPanelRows) {
    const int64_t nr = std::min(kPanelRows, out - r0);
    WidenPanel(w, r0, nr, panel.data());
    const float beta = (r0 == 0 && !accumulate) ? 0.0f : 1.0f;
    Gemm(false, false, static_cast<int>(T), static_cast<int>(in), static_cast<int>(nr), 1.0f,
         dy + r0, static_cast<int>(out), panel.data(), static_cast<int>(in), beta, dx,
         static_cast<int>(in));
  }
}

void MatMulBackwardW(const float* dy, const float* x, int64_t T, int64_t out, int64_t in,
                     float* dw) {
  Gemm(true, false, static_cast<int>(out), static_cast<int>(in), static_cast<int>(T), 1.0f, dy,
       static_cast<int>(out), x, static_cast<int>(in), 1.0f, dw, static_cast<int>(in));
}

void GatherRows(const Tensor& table, const int32_t* ids, int64_t n, float* out) {
  const FormatTraits& f = Traits(table.format);
  for (int64_t t = 0; t < n; ++t) f.dequantize(table.row(ids[t]), table.cols, out + t * table.cols);
}

void MatMulReference(const Tensor& w, const float* x, int64_t T, float* y) {
  const FormatTraits& f = Traits(w.format);
  std::vector<float> row(static_cast<size_t>(w.cols));
  for (int64_t o = 0; o < w.rows; ++o) {
    f.dequantize_reference(w.row(o), w.cols, row.data());
    for (int64_t t = 0; t < T; ++t) {
      double acc = 0;
      for (int64_t i = 0; i < w.cols; ++i)
        acc += static_cast<double>(row[static_cast<size_t>(i)]) * x[t * w.cols + i];
      y[t * w.rows + o] = static_cast<float>(acc);
    }
  }
}

void ScatterAddRows(const float* src, const int32_t* ids, int64_t n, int64_t C, float* table) {
  for (int64_t t = 0; t < n; ++t) {
    float* row = table + static_cast<int64_t>(ids[t]) * C;
    for (int64_t i = 0; i < C; ++i) row[i] += src[t * C + i];
  }
}

void MatMulBackwardXReference(const Tensor& w, const float* dy, int64_t T, float* dx,
                              bool accumulate) {
  std::vector<float> wf(static_cast<size_t>(w.numel()));
  Traits(w.format).dequantize_reference(w.data, w.numel(), wf.data());
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t i = 0; i < w.cols; ++i) {
      double acc = accumulate ? dx[t * w.cols + i] : 0.0;
      for (int64_t o = 0; o < w.rows; ++o)
        acc += static_cast<double>(dy[t * w.rows + o]) * wf[static_cast<size_t>(o * w.cols + i)];
      dx[t * w.cols + i] = static_cast<float>(acc);
    }
  }
}

void MatMulBackwardWReference(const float* dy, const float* x, int64_t T, int64_t out, int64_t in,
                              float* dw) {
  GemmReference(true, false, out, in, T, 1.0f, dy, out, x, in, 1.0f, dw, in);
}

}  // namespace tinylora
