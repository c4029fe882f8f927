// Element-wise and per-row ops of the Llama forward. Legend:
//   T = tokens in the batch, C = hidden size, F = intermediate size,
//   NH / KVH = query / key-value heads, HD = head dim, P = positions in a sequence's cache.
#pragma once

#include <cstdint>
#include <vector>

namespace tinylora {

// out (T, C) = x / rms(x) * w, per row; out may alias x. rstd (T), if given, gets 1 / rms(x).
void RmsNorm(const float* x, const float* w, int64_t T, int64_t C, float eps, float* out,
             float* rstd = nullptr);
// Given dout (T, C): dx (T, C) += the gradient through the norm; dw (C) += Σ_t dout·x·rstd
// (dw may be null for a frozen norm). x and rstd as saved by the forward.
void RmsNormBackward(const float* dout, const float* x, const float* w, const float* rstd,
                     int64_t T, int64_t C, float* dx, float* dw);

// cos/sin of RoPE angles pos * theta^(-2i/HD), i < HD/2, for pos < max_pos; computed in double.
struct RopeTable {
  int head_dim = 0, max_pos = 0;
  std::vector<float> cos, sin;  // (max_pos, HD/2)
  RopeTable(int head_dim, int max_pos, double theta);
};

// Rotates each head of x (T, n_heads*HD) in HF's rotate-half layout: pairs (i, i + HD/2).
void Rope(float* x, const int32_t* pos, int64_t T, int n_heads, const RopeTable& table);
// The gradient through Rope: the inverse rotation applied to dx in place.
void RopeBackward(float* dx, const int32_t* pos, int64_t T, int n_heads, const RopeTable& table);

// out = silu(gate) * up, n values; out may alias gate. Highway (activations.cc).
void SwiGlu(const float* gate, const float* up, int64_t n, float* out);
void SwiGluReference(const float* gate, const float* up, int64_t n, float* out);
// Given dout (n): dgate = dout·up·silu'(gate), dup = dout·silu(gate) (overwritten, not added).
void SwiGluBackward(const float* dout, const float* gate, const float* up, int64_t n, float* dgate,
                    float* dup);
void SwiGluBackwardReference(const float* dout, const float* gate, const float* up, int64_t n,
                             float* dgate, float* dup);

// In-place softmax of n values; max subtracted first; returns log Σ exp(x). Highway.
float Softmax(float* x, int64_t n);
void SoftmaxReference(float* x, int64_t n);

}  // namespace tinylora
