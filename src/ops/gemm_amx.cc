// The AMX kernel works on 16×16 f32 tiles of C, 16×32 BF16 tiles of A and 16 pair-rows of B:
// one block of C is 32×32 (four C tiles, two A tiles, two B tiles: all eight tile registers).
// A is converted once per call into tile order (16 rows × 32 values, 1 KB per tile, so every
// tile load is contiguous), B was packed in tile order at load time. Loops, per thread (threads
// split the 32-column blocks of C):
//   for each K chunk of kChunkSteps·32 values
//     for each M chunk of kChunkBlocks·32 rows     (the A chunk, 1 MB, stays in L2)
//       for each 32-column block of this thread    (its B block, 128 KB, stays in L2)
//         for each 32-row block of the chunk: C block (+)= A block · B block over the K chunk
// The long K chunk matters most: each chunk loads and stores every C block once, and with
// 512-value chunks that C traffic held the kernel to ~1.2 TFLOP/s; at 2048 it runs at ~1.8
// (2 threads; the tile units alone reach ~2.3 per thread with data in L1).
#include "ops/gemm_amx.h"

#include <cpuid.h>
#include <immintrin.h>
#include <omp.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "ops/format.h"
#include "util/error.h"
#include "util/half.h"
#include "util/large_alloc.h"

namespace tinylora {

namespace {

constexpr int64_t kTileRows = 16;
constexpr int64_t kStep = 32;            // K values per tile multiply
constexpr int64_t kTileElems = 16 * 32;  // BF16 values in one A or B tile (1 KB)
constexpr int64_t kChunkSteps = 64;      // K chunk: 2048 values
constexpr int64_t kChunkBlocks = 8;      // M chunk: 256 rows

int64_t RoundUp(int64_t x, int64_t to) { return (x + to - 1) / to * to; }

// The 64-byte tile configuration: every tile 16 rows of 64 bytes.
struct TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

bool DetectAmx() {
  unsigned eax, ebx, ecx, edx;
  if (__get_cpuid(1, &eax, &ebx, &ecx, &edx) == 0 || ((ecx >> 27) & 1u) == 0) return false;
  unsigned xcr0_lo, xcr0_hi;  // the OS saves the AVX-512 state (opmask, ZMM halves)
  asm volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
  if ((xcr0_lo & 0xe6u) != 0xe6u) return false;
  if (__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) == 0) return false;
  const bool amx_bf16 = (edx >> 22) & 1u, amx_tile = (edx >> 24) & 1u;
  const bool avx512 = ((ebx >> 16) & 1u) && ((ebx >> 30) & 1u);  // F and BW: A's conversion
  if (!amx_bf16 || !amx_tile || !avx512) return false;
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
}

// GCC 12's AVX-512 headers trip -Wmaybe-uninitialized (their _mm512_undefined_* self-init).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
// Rows [r0, r1) of A (f32, row length k) into tile order, rounded to BF16 exactly as
// F32ToBf16 (round to nearest even, NaN kept). Values past k and rows past m are zero.
__attribute__((target("avx512f,avx512bw"))) void ConvertRows(const float* a, int64_t m, int64_t k,
                                                             int64_t k_pad, int64_t r0, int64_t r1,
                                                             uint16_t* out) {
  const int64_t steps = k_pad / kStep;
  const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff), inf = _mm512_set1_epi32(0x7f800000);
  const __m512i bias = _mm512_set1_epi32(0x7fff), one = _mm512_set1_epi32(1);
  const __m512i quiet = _mm512_set1_epi32(0x400000);
  for (int64_t r = r0; r < r1; ++r) {
    uint16_t* row = out + (r / kTileRows) * steps * kTileElems + (r % kTileRows) * kStep;
    for (int64_t s = 0; s < steps; ++s) {
      uint16_t* dst = row + s * kTileElems;
      for (int64_t half = 0; half < 2; ++half) {
        const int64_t k0 = s * kStep + half * 16;
        const int64_t valid = r < m ? std::clamp<int64_t>(k - k0, 0, 16) : 0;
        const __mmask16 mask = static_cast<__mmask16>((1u << valid) - 1u);
        const __m512i bits = _mm512_maskz_loadu_epi32(mask, valid ? a + r * k + k0 : a);
        const __mmask16 nan = _mm512_cmpgt_epi32_mask(_mm512_and_si512(bits, abs_mask), inf);
        __m512i rounded = _mm512_add_epi32(
            bits, _mm512_add_epi32(bias, _mm512_and_si512(_mm512_srli_epi32(bits, 16), one)));
        rounded = _mm512_mask_or_epi32(rounded, nan, bits, quiet);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + half * 16),
                            _mm512_cvtepi32_epi16(_mm512_srli_epi32(rounded, 16)));
      }
    }
  }
}

#pragma GCC diagnostic pop

// Copies the valid part of a C block between C (row stride ldc) and a 32×32 scratch block.
void CopyBlock(const float* src, int64_t src_ld, float* dst, int64_t dst_ld, int64_t rows,
               int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) std::memcpy(dst + r * dst_ld, src + r * src_ld, cols * 4);
}

// One 32×32 block of C over tile steps [s0, s1). `a` points at the block's first A tile of step
// s0, `b` at its first B tile of step s0; `load` continues the sums held in `c`.
__attribute__((target("amx-tile,amx-bf16"))) void Block(const uint16_t* a, int64_t a_next_rows,
                                                        const uint16_t* b, int64_t b_next_panel,
                                                        int64_t steps, float* c, int64_t ldc,
                                                        bool load) {
  const int64_t stride = ldc * 4;
  if (load) {
    _tile_loadd(0, c, stride);
    _tile_loadd(1, c + 16, stride);
    _tile_loadd(2, c + 16 * ldc, stride);
    _tile_loadd(3, c + 16 * ldc + 16, stride);
  } else {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
  }
  for (int64_t s = 0; s < steps; ++s) {
    _tile_loadd(4, a, 64);
    _tile_loadd(5, a + a_next_rows, 64);
    _tile_loadd(6, b, 64);
    _tile_loadd(7, b + b_next_panel, 64);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
    a += kTileElems;
    b += kTileElems;
  }
  _tile_stored(0, c, stride);
  _tile_stored(1, c + 16, stride);
  _tile_stored(2, c + 16 * ldc, stride);
  _tile_stored(3, c + 16 * ldc + 16, stride);
}

__attribute__((target("amx-tile"))) void ConfigureTiles() {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = kTileRows;
    cfg.colsb[t] = 64;
  }
  // GCC does not see that ldtilecfg reads all 64 bytes and would drop the stores above.
  asm volatile("" : : "r"(&cfg) : "memory");
  _tile_loadconfig(&cfg);
}

__attribute__((target("amx-tile"))) void ReleaseTiles() { _tile_release(); }

// Thread t's share of C's 32-column blocks.
void Compute(const PackedBf16& b, const uint16_t* a, int64_t m, float* c, bool accumulate,
             int64_t nb_begin, int64_t nb_end) {
  const int64_t n = b.n(), steps = b.k_pad() / kStep, mblocks = RoundUp(m, 32) / 32;
  const int64_t panel = b.k_pad() * 16;  // BF16 values per 16-column panel
  alignas(64) float scratch[32 * 32];
  for (int64_t s0 = 0; s0 < steps; s0 += kChunkSteps) {
    const int64_t ns = std::min(kChunkSteps, steps - s0);
    const bool load = s0 > 0 || accumulate;
    for (int64_t mb0 = 0; mb0 < mblocks; mb0 += kChunkBlocks) {
      for (int64_t nb = nb_begin; nb < nb_end; ++nb) {
        const uint16_t* bb = b.data() + 2 * nb * panel + s0 * kTileElems;
        for (int64_t mb = mb0; mb < std::min(mblocks, mb0 + kChunkBlocks); ++mb) {
          const uint16_t* ab = a + (2 * mb * steps + s0) * kTileElems;
          const int64_t rows = std::min<int64_t>(32, m - 32 * mb);
          const int64_t cols = std::min<int64_t>(32, n - 32 * nb);
          float* cb = c + 32 * mb * n + 32 * nb;
          if (rows == 32 && cols == 32) {
            Block(ab, steps * kTileElems, bb, panel, ns, cb, n, load);
          } else {
            if (load) CopyBlock(cb, n, scratch, 32, rows, cols);
            Block(ab, steps * kTileElems, bb, panel, ns, scratch, 32, load);
            CopyBlock(scratch, 32, cb, n, rows, cols);
          }
        }
      }
    }
  }
}

}  // namespace

bool AmxBf16Available() {
  static const bool available = DetectAmx();
  return available;
}

PackedBf16::PackedBf16(const Tensor& w, int64_t k, int64_t n)
    : k_(k), n_(n), k_pad_(RoundUp(k, kStep)), n_pad_(RoundUp(n, 32)) {
  if (w.format != Format::kBF16) FailRuntime("BF16 packing of a non-BF16 weight");
  // Zeroed: the padding stays zero.
  data_ = AllocateLargeArray<uint16_t>(k_pad_ * n_pad_);
}

PackedBf16 PackedBf16::Transposed(const Tensor& w) {
  PackedBf16 p(w, w.cols, w.rows);
  const uint16_t* src = w.bf16();
  // B(kk, c) = W[c][kk]: each column c of B is row c of W, read in order.
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < w.rows; ++c) {
    uint16_t* dst = &p.data_[p.Index(0, c)];
    const uint16_t* row = src + c * w.cols;
    for (int64_t kk = 0; kk < w.cols; ++kk) dst[(kk / 2) * 32 + kk % 2] = row[kk];
  }
  return p;
}

PackedBf16 PackedBf16::AsIs(const Tensor& w) {
  PackedBf16 p(w, w.rows, w.cols);
  const uint16_t* src = w.bf16();
  // B(kk, c) = W[kk][c]: rows 2kp and 2kp+1 of W interleave into pair-row kp of every panel.
#pragma omp parallel for schedule(static)
  for (int64_t kk = 0; kk < w.rows; ++kk) {
    const uint16_t* row = src + kk * w.cols;
    for (int64_t c = 0; c < w.cols; ++c) p.data_[p.Index(kk, c)] = row[c];
  }
  return p;
}

void GemmAmx(const PackedBf16& b, const float* a, int64_t m, float* c, bool accumulate) {
  if (!AmxBf16Available()) FailRuntime("BF16 GEMM needs AMX-BF16, which this CPU lacks");
  if (m <= 0) return;
  const int64_t m_pad = RoundUp(m, 32);
  thread_local std::vector<uint16_t> a_tiles;
  a_tiles.resize(static_cast<size_t>(m_pad * b.k_pad()));
  uint16_t* at = a_tiles.data();
  const int64_t nblocks = b.n_pad() / 32;
#pragma omp parallel
  {
    const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
    ConvertRows(a, m, b.k(), b.k_pad(), m_pad * t / nt, m_pad * (t + 1) / nt, at);
    ConfigureTiles();
#pragma omp barrier
    Compute(b, at, m, c, accumulate, nblocks * t / nt, nblocks * (t + 1) / nt);
    ReleaseTiles();
  }
  // Keep the buffer for the next call (every projection of a step has one), unless it grew
  // for an exceptional one, such as lm_head's dx over a large batch.
  constexpr size_t kKeepBytes = size_t{256} << 20;
  if (a_tiles.size() * sizeof(uint16_t) > kKeepBytes) std::vector<uint16_t>().swap(a_tiles);
}

void GemmAmxReference(const PackedBf16& b, const float* a, int64_t m, float* c, bool accumulate) {
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < b.n(); ++j) {
      double acc = accumulate ? c[i * b.n() + j] : 0.0;
      for (int64_t kk = 0; kk < b.k(); ++kk) {
        acc +=
            static_cast<double>(Bf16ToF32(F32ToBf16(a[i * b.k() + kk]))) * Bf16ToF32(b.At(kk, j));
      }
      c[i * b.n() + j] = static_cast<float>(acc);
    }
  }
}

}  // namespace tinylora
