// The `amx` kernel of ops/gemm_bf16: BF16 GEMM on Intel AMX for a frozen BF16 weight: C (m, n) f32
// (+)= A (m, k) · B (k, n), where A is f32 rounded to BF16 on the way in (round to nearest even)
// and every product is accumulated in f32. B is packed once, in AMX's pair layout:
//   panels of 16 columns; in a panel, row kp (64 bytes) holds B(2kp, c), B(2kp+1, c) for
//   its 16 columns c. k is padded to a multiple of 32 and n to a multiple of 32 with zeros.
// One layout serves both products a projection y = x · Wᵀ needs in training: B = Wᵀ for the
// forward and B = W for the backward dx = dy · W.
#pragma once

#include <cstdint>
#include <memory>

#include "ops/tensor.h"
#include "util/large_alloc.h"

namespace tinylora {

// True when the CPU has AMX-BF16 and the kernel let this process use the tile registers.
bool AmxBf16Available();

class PackedBf16 {
 public:
  PackedBf16() = default;  // empty
  // B = Wᵀ (k = w.cols, n = w.rows): for y = x · Wᵀ.
  static PackedBf16 Transposed(const Tensor& w);
  // B = W (k = w.rows, n = w.cols): for dx = dy · W.
  static PackedBf16 AsIs(const Tensor& w);

  int64_t k() const { return k_; }
  int64_t n() const { return n_; }
  int64_t k_pad() const { return k_pad_; }
  int64_t n_pad() const { return n_pad_; }
  const uint16_t* data() const { return data_.get(); }
  int64_t bytes() const { return k_pad_ * n_pad_ * 2; }
  bool empty() const { return data_ == nullptr; }
  // B(kk, c) as stored (the test's view of the layout).
  uint16_t At(int64_t kk, int64_t c) const { return data_[Index(kk, c)]; }

 private:
  // A zeroed B (k, n) for the BF16 weight w (an error for any other dtype).
  PackedBf16(const Tensor& w, int64_t k, int64_t n);
  // Where B(kk, c) is stored: panel c / 16, pair-row kk / 2, slot 2 (c % 16) + kk % 2.
  int64_t Index(int64_t kk, int64_t c) const {
    return (c / 16) * k_pad_ * 16 + (kk / 2) * 32 + (c % 16) * 2 + kk % 2;
  }

  int64_t k_ = 0, n_ = 0, k_pad_ = 0, n_pad_ = 0;
  LargeArray<uint16_t> data_;
};

// C (m, b.n()) row-major = A (m, b.k()) row-major · B, or C += it when `accumulate`.
// Needs AmxBf16Available().
void GemmAmx(const PackedBf16& b, const float* a, int64_t m, float* c, bool accumulate);

// Plain reference of GemmAmx on the packed B: A rounded to BF16, double accumulation.
void GemmAmxReference(const PackedBf16& b, const float* a, int64_t m, float* c, bool accumulate);

}  // namespace tinylora
