// Dropout with masks drawn from a counter-based hash, so backward regenerates the mask from the
// same key instead of storing it, and a resumed run draws the same masks. Element i is dropped
// when Mix(key ^ i) < p · 2^64; kept elements are scaled by 1 / (1 − p). `first` is the index of
// x[0] in the whole array (a rank's rows of a batch draw the masks one process would).
#pragma once

#include <cstdint>

namespace tinylora {

// SplitMix64's finaliser: a well-mixed 64-bit hash.
uint64_t Mix(uint64_t x);

// out (n) = dropout(x) under `key`, p in (0, 1).
void DropoutForward(uint64_t key, double p, const float* x, int64_t n, float* out,
                    int64_t first = 0);
// dx (n) += the gradient through that dropout: mask / (1 − p) ∘ dout.
void DropoutBackwardAdd(uint64_t key, double p, const float* dout, int64_t n, float* dx,
                        int64_t first = 0);

// out (n) = a + b (the residual adds); out may alias a.
void Add(const float* a, const float* b, int64_t n, float* out);

}  // namespace tinylora
