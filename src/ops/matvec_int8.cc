#include "ops/matvec_int8.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "ops/quantize.h"
#include "util/half.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace tinylora {

namespace {

// x rounded to blocks of 32: codes and one scale per block (d = amax / 127, codes x · (1/d)
// rounded to nearest even).
struct Int8Row {
  std::vector<int8_t> q;
  std::vector<float> d;
};

void QuantizeRow(const float* x, int64_t in, Int8Row* out) {
  out->q.resize(static_cast<size_t>(in));
  out->d.resize(static_cast<size_t>(in / 32));
  for (int64_t b = 0; b < in / 32; ++b) {
    float amax = 0.0f;
    for (int j = 0; j < 32; ++j) amax = std::fmax(amax, std::fabs(x[b * 32 + j]));
    const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    out->d[static_cast<size_t>(b)] = d;
    for (int j = 0; j < 32; ++j) {
      const float v = x[b * 32 + j] * id;
      out->q[static_cast<size_t>(b * 32 + j)] = static_cast<int8_t>(std::nearbyint(v));
    }
  }
}

// A block's 32 weight codes as int8 and its scale.
inline float Codes(const BlockQ8_0& b, int8_t* q) {
  std::memcpy(q, b.q, 32);
  return F16ToF32(b.d);
}
inline float Codes(const BlockQ4_0& b, int8_t* q) {
  for (int j = 0; j < 16; ++j) {
    q[j] = static_cast<int8_t>((b.q[j] & 15) - 8);
    q[j + 16] = static_cast<int8_t>((b.q[j] >> 4) - 8);
  }
  return F16ToF32(b.d);
}

template <class Block>
void Reference(const void* wv, int64_t in, int64_t out, const float* x, int64_t T, int64_t r0,
               int64_t r1, float* y) {
  const auto* w = static_cast<const Block*>(wv);
  const int64_t nb = in / 32;
  Int8Row xr;
  int8_t qw[32];
  for (int64_t t = 0; t < T; ++t) {
    QuantizeRow(x + t * in, in, &xr);
    for (int64_t r = r0; r < r1; ++r) {
      float sum = 0.0f;
      for (int64_t b = 0; b < nb; ++b) {
        const float dw = Codes(w[r * nb + b], qw);
        int32_t dot = 0;
        for (int j = 0; j < 32; ++j) dot += qw[j] * xr.q[static_cast<size_t>(b * 32 + j)];
        sum += static_cast<float>(dot) * (dw * xr.d[static_cast<size_t>(b)]);
      }
      y[t * out + r] = sum;
    }
  }
}

#if defined(__x86_64__)
#define TINYLORA_VNNI __attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")))

// 32 weight codes of a block as int8 in a ymm.
TINYLORA_VNNI inline __m256i LoadCodes(const BlockQ8_0& b) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.q));
}
TINYLORA_VNNI inline __m256i LoadCodes(const BlockQ4_0& b) {
  const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b.q));
  const __m256i both = _mm256_set_m128i(_mm_srli_epi16(bytes, 4), bytes);  // high nibbles above
  return _mm256_sub_epi8(_mm256_and_si256(both, _mm256_set1_epi8(15)), _mm256_set1_epi8(8));
}

// QuantizeRow with AVX2: the same codes (the same products, cvtps2dq rounds to nearest even).
TINYLORA_VNNI void QuantizeRowAvx2(const float* x, int64_t in, Int8Row* out) {
  out->q.resize(static_cast<size_t>(in));
  out->d.resize(static_cast<size_t>(in / 32));
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (int64_t b = 0; b < in / 32; ++b) {
    const float* p = x + b * 32;
    const __m256 v0 = _mm256_loadu_ps(p), v1 = _mm256_loadu_ps(p + 8), v2 = _mm256_loadu_ps(p + 16),
                 v3 = _mm256_loadu_ps(p + 24);
    const __m256 m =
        _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v0), _mm256_andnot_ps(sign, v1)),
                      _mm256_max_ps(_mm256_andnot_ps(sign, v2), _mm256_andnot_ps(sign, v3)));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_shuffle_ps(h, h, 1));
    const float amax = _mm_cvtss_f32(h);
    const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    out->d[static_cast<size_t>(b)] = d;
    const __m256 s = _mm256_set1_ps(id);
    const __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(v0, s)),
                  i1 = _mm256_cvtps_epi32(_mm256_mul_ps(v1, s)),
                  i2 = _mm256_cvtps_epi32(_mm256_mul_ps(v2, s)),
                  i3 = _mm256_cvtps_epi32(_mm256_mul_ps(v3, s));
    const __m256i packed =
        _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(&out->q[static_cast<size_t>(b * 32)]),
                        _mm256_permutevar8x32_epi32(packed, order));
  }
}

// R rows against one row of x: per block, |qx| · (qw with qx's sign) summed in int32 by
// vpdpbusd, then times dw·dx into one F32 accumulator per row (unrolled: in registers).
template <int R, class Block>
TINYLORA_VNNI inline void VnniRows(const Block* w, int64_t nb, const Int8Row& xr, float* y) {
  __m256 acc[R];
#pragma GCC unroll 4
  for (int k = 0; k < R; ++k) acc[k] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const __m256i qx = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(&xr.q[b * 32]));
    const __m256i ax = _mm256_sign_epi8(qx, qx);  // |qx| (qx ≥ −127)
    const __m256 dx = _mm256_set1_ps(xr.d[static_cast<size_t>(b)]);
#pragma GCC unroll 4
    for (int k = 0; k < R; ++k) {
      const Block& blk = w[k * nb + b];
      const __m256i sw = _mm256_sign_epi8(LoadCodes(blk), qx);
      const __m256i dot = _mm256_dpbusd_epi32(_mm256_setzero_si256(), ax, sw);
      const __m256 dw = _mm256_set1_ps(_cvtsh_ss(blk.d));
      acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(dw, dx), acc[k]);
    }
  }
#pragma GCC unroll 4
  for (int k = 0; k < R; ++k) {
    const __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc[k]), _mm256_extractf128_ps(acc[k], 1));
    const __m128 s2 = _mm_add_ps(s, _mm_movehl_ps(s, s));
    y[k] = _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));
  }
}

template <class Block>
TINYLORA_VNNI void Vnni(const void* wv, int64_t in, int64_t out, const float* x, int64_t T,
                        int64_t r0, int64_t r1, float* y) {
  const auto* w = static_cast<const Block*>(wv);
  const int64_t nb = in / 32;
  static thread_local Int8Row xr;  // no allocation per call once grown
  for (int64_t t = 0; t < T; ++t) {
    QuantizeRowAvx2(x + t * in, in, &xr);
    int64_t r = r0;
    for (; r + 4 <= r1; r += 4) VnniRows<4>(w + r * nb, nb, xr, y + t * out + r);
    for (; r < r1; ++r) VnniRows<1>(w + r * nb, nb, xr, y + t * out + r);
  }
}
#endif

}  // namespace

bool Int8ActivationsUseVnni() {
#if defined(__x86_64__)
  static const bool vnni =
      __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512bw") && std::getenv("TINYLORA_NO_VNNI") == nullptr;
  return vnni;
#else
  return false;
#endif
}

void MatVecQ8_0Int8Reference(const void* w, int64_t in, int64_t out, const float* x, int64_t T,
                             int64_t r0, int64_t r1, float* y) {
  Reference<BlockQ8_0>(w, in, out, x, T, r0, r1, y);
}
void MatVecQ4_0Int8Reference(const void* w, int64_t in, int64_t out, const float* x, int64_t T,
                             int64_t r0, int64_t r1, float* y) {
  Reference<BlockQ4_0>(w, in, out, x, T, r0, r1, y);
}
void MatVecQ8_0Int8Rows(const void* w, int64_t in, int64_t out, const float* x, int64_t T,
                        int64_t r0, int64_t r1, float* y) {
#if defined(__x86_64__)
  if (Int8ActivationsUseVnni()) return Vnni<BlockQ8_0>(w, in, out, x, T, r0, r1, y);
#endif
  Reference<BlockQ8_0>(w, in, out, x, T, r0, r1, y);
}
void MatVecQ4_0Int8Rows(const void* w, int64_t in, int64_t out, const float* x, int64_t T,
                        int64_t r0, int64_t r1, float* y) {
#if defined(__x86_64__)
  if (Int8ActivationsUseVnni()) return Vnni<BlockQ4_0>(w, in, out, x, T, r0, r1, y);
#endif
  Reference<BlockQ4_0>(w, in, out, x, T, r0, r1, y);
}

}  // namespace tinylora
