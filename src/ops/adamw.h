// The optimizer's element-wise kernels: one AdamW update over a run of parameters, and the
// sum of squares and scaling that global-norm clipping needs.
#pragma once

#include <cstdint>

namespace tinylora {

// A step's constants: betas, eps, lr / (1 − β1^t), 1 / sqrt(1 − β2^t), and 1 − lr·decay.
struct AdamWHyper {
  float b1, b2, eps, step_size, inv_sqrt_bc2, keep;
};
// p, m, v (n) updated in place from g = grad · scale, as torch.optim.AdamW (eps outside the
// square root, decay decoupled).
void AdamWUpdate(const AdamWHyper& h, float scale, const float* grad, float* p, float* m, float* v,
                 int64_t n);
// Σ x² of n values, summed in double in order.
double SumSquares(const float* x, int64_t n);
// x (n) *= s.
void Scale(float* x, int64_t n, float s);

}  // namespace tinylora
