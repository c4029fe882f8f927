// The backend seam (DESIGN.md §8): where buffers live and which kernel computes each op.
// The model and training code call every FLOP through a backend's op table, so a backend is
// one table plus an allocator; they never name a kernel themselves.
//   cpu        the shipped one: Highway kernels, OpenBLAS, AMX where the CPU has it
//   reference  the ops' plain references (double sums, no blocking, one thread), so a whole
//              forward and training step can be checked against the fast path
// A device backend (CUDA) gives its buffers in device memory, owns one stream on which its ops
// run in call order (Synchronize waits for it before the host reads a loss or logits), and
// chooses its kernels when it fills its table (per weight format through ops/format's traits).
#pragma once

#include <cstdint>
#include <string>

#include "ops/adamw.h"
#include "ops/attention.h"
#include "ops/gemm.h"
#include "ops/lora_rows.h"
#include "ops/ops.h"
#include "ops/tensor.h"

namespace tinylora {

// One row per op, signatures as the CPU kernels declare them (ops/*.h documents each).
struct Ops {
  // products: y = x·Wᵀ (shape-dependent fast, and batch-invariant), its two gradients, F32 GEMM
  void (*matmul)(const Tensor& w, const float* x, int64_t T, float* y);
  void (*matmul_invariant)(const Tensor& w, const float* x, int64_t T, float* y);
  void (*matmul_backward_x)(const Tensor& w, const float* dy, int64_t T, float* dx,
                            bool accumulate);
  void (*matmul_backward_w)(const float* dy, const float* x, int64_t T, int64_t out, int64_t in,
                            float* dw);
  GemmFn gemm;
  void (*lora_rows)(const LoraRow* rows, int64_t T, int64_t in, int64_t out, const float* x,
                    float* y);
  void (*gather_rows)(const Tensor& table, const int32_t* ids, int64_t n, float* out);
  void (*scatter_add_rows)(const float* src, const int32_t* ids, int64_t n, int64_t C,
                           float* table);
  // per row and element-wise
  void (*rms_norm)(const float* x, const float* w, int64_t T, int64_t C, float eps, float* out,
                   float* rstd);
  void (*rms_norm_backward)(const float* dout, const float* x, const float* w, const float* rstd,
                            int64_t T, int64_t C, float* dx, float* dw);
  void (*rope)(float* x, const int32_t* pos, int64_t T, int n_heads, const RopeTable& table);
  void (*rope_backward)(float* dx, const int32_t* pos, int64_t T, int n_heads,
                        const RopeTable& table);
  void (*swiglu)(const float* gate, const float* up, int64_t n, float* out);
  void (*swiglu_backward)(const float* dout, const float* gate, const float* up, int64_t n,
                          float* dgate, float* dup);
  void (*add)(const float* a, const float* b, int64_t n, float* out);
  void (*dropout)(uint64_t key, double p, const float* x, int64_t n, float* out, int64_t first);
  void (*dropout_backward_add)(uint64_t key, double p, const float* dout, int64_t n, float* dx,
                               int64_t first);
  // attention
  void (*attention_cached)(const AttentionShape& s, const AttentionRun* runs, int64_t n_runs,
                           const float* q, float* att);
  void (*attention_cached_invariant)(const AttentionShape& s, const AttentionRun* runs,
                                     int64_t n_runs, const float* q, float* att);
  void (*attention_train)(const AttentionShape& s, int64_t B, int64_t T, const float* q,
                          const float* k, const float* v, float* probs, float* att);
  void (*attention_train_backward)(const AttentionShape& s, int64_t B, int64_t T, const float* q,
                                   const float* k, const float* v, const float* probs,
                                   const float* datt, float* dq, float* dk, float* dv);
  // optimizer
  void (*adamw_update)(const AdamWHyper& h, float scale, const float* grad, float* p, float* m,
                       float* v, int64_t n);
  double (*sum_squares)(const float* x, int64_t n);
  void (*scale)(float* x, int64_t n, float s);
  // loss
  double (*cross_entropy)(float* logits, const int32_t* targets, const uint8_t* mask, int64_t N,
                          int64_t V, float grad_scale);
  double (*cross_entropy_loss)(const float* logits, const int32_t* targets, const uint8_t* mask,
                               int64_t N, int64_t V);
};

enum class Memory { kHost, kDevice };

// n floats owned by a backend, zeroed and 64-byte aligned; move-only.
class Buffer {
 public:
  Buffer() = default;
  Buffer(float* data, int64_t n, void (*release)(float*)) : data_(data), n_(n), release_(release) {}
  Buffer(Buffer&& o) noexcept { *this = std::move(o); }
  Buffer& operator=(Buffer&& o) noexcept;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer();
  float* data() const { return data_; }
  int64_t size() const { return n_; }

 private:
  float* data_ = nullptr;
  int64_t n_ = 0;
  void (*release_)(float*) = nullptr;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;
  virtual const Ops& ops() const = 0;
  virtual Memory memory() const = 0;
  virtual Buffer Alloc(int64_t n) const = 0;
  // Returns once every op issued so far has finished (host backends: at once).
  virtual void Synchronize() const = 0;
};

const Backend& CpuBackend();
const Backend& ReferenceBackend();
// "cpu" or "reference"; Error (exit 2) naming the choices otherwise.
const Backend& BackendNamed(const std::string& name);

}  // namespace tinylora
