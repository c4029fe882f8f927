// Cross-entropy over the vocabulary, forward and backward in one pass.
// Legend: N = tokens (B·T), V = vocab.
#pragma once

#include <cstdint>

namespace tinylora {

// logits (N, V) are overwritten with dloss/dlogits for loss = Σ_n mask_n·CE_n / count, where
// count = Σ mask (the caller's normaliser, so micro-batches can share one). Rows with
// mask 0 get zero gradient. Returns Σ_n mask_n·CE_n (not divided). `grad_scale` multiplies
// the gradient (1/count, times 1/grad-accum steps).
double CrossEntropyForwardBackward(float* logits, const int32_t* targets, const uint8_t* mask,
                                   int64_t N, int64_t V, float grad_scale);

// Forward only: Σ_n mask_n·CE_n; logits are left untouched.
double CrossEntropyLoss(const float* logits, const int32_t* targets, const uint8_t* mask, int64_t N,
                        int64_t V);

// Plain reference of the forward-backward: double sums, one row at a time.
double CrossEntropyForwardBackwardReference(float* logits, const int32_t* targets,
                                            const uint8_t* mask, int64_t N, int64_t V,
                                            float grad_scale);

}  // namespace tinylora
