#include "backend/backend.h"

#include <cstdlib>
#include <cstring>
#include <new>

#include "ops/dropout.h"
#include "ops/gemm.h"
#include "ops/loss.h"
#include "ops/matmul.h"
#include "util/error.h"

namespace tinylora {

Buffer& Buffer::operator=(Buffer&& o) noexcept {
  if (this != &o) {
    if (data_ != nullptr) release_(data_);
    data_ = o.data_, n_ = o.n_, release_ = o.release_;
    o.data_ = nullptr, o.n_ = 0;
  }
  return *this;
}

Buffer::~Buffer() {
  if (data_ != nullptr) release_(data_);
}

namespace {

void FreeHost(float* p) { std::free(p); }

// Both shipped backends compute on the host; they differ only in their tables.
class HostBackend : public Backend {
 public:
  HostBackend(const char* name, const Ops& ops) : name_(name), ops_(ops) {}
  const char* name() const override { return name_; }
  const Ops& ops() const override { return ops_; }
  Memory memory() const override { return Memory::kHost; }
  Buffer Alloc(int64_t n) const override {
    const size_t bytes = (static_cast<size_t>(n) * sizeof(float) + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, bytes == 0 ? 64 : bytes);
    if (p == nullptr) throw std::bad_alloc();
    std::memset(p, 0, bytes);
    return Buffer(static_cast<float*>(p), n, FreeHost);
  }
  void Synchronize() const override {}

 private:
  const char* name_;
  Ops ops_;
};

// Norms, RoPE, the residual add, dropout, the embedding gather and scatter, the optimizer's
// element-wise kernels and the loss-only pass are already plain loops (double sums where they
// sum): the reference table shares them with the CPU's.
Ops CpuOps() {
  Ops o{};
  o.matmul = MatMul;
  o.matmul_invariant = MatMulBatchInvariant;
  o.matmul_backward_x = MatMulBackwardX;
  o.matmul_backward_w = MatMulBackwardW;
  o.gemm = Gemm;
  o.lora_rows = LoraRowsForward;
  o.gather_rows = GatherRows;
  o.scatter_add_rows = ScatterAddRows;
  o.rms_norm = RmsNorm;
  o.rms_norm_backward = RmsNormBackward;
  o.rope = Rope;
  o.rope_backward = RopeBackward;
  o.swiglu = SwiGlu;
  o.swiglu_backward = SwiGluBackward;
  o.add = Add;
  o.dropout = DropoutForward;
  o.dropout_backward_add = DropoutBackwardAdd;
  o.attention_cached = AttentionCached;
  o.attention_cached_invariant = AttentionCachedInvariant;
  o.attention_train = AttentionTrain;
  o.attention_train_backward = AttentionTrainBackward;
  o.adamw_update = AdamWUpdate;
  o.sum_squares = SumSquares;
  o.scale = Scale;
  o.cross_entropy = CrossEntropyForwardBackward;
  o.cross_entropy_loss = CrossEntropyLoss;
  return o;
}

Ops ReferenceOps() {
  Ops o = CpuOps();
  o.matmul = MatMulReference;
  o.matmul_invariant = MatMulReference;
  o.matmul_backward_x = MatMulBackwardXReference;
  o.matmul_backward_w = MatMulBackwardWReference;
  o.gemm = GemmReference;
  o.lora_rows = LoraRowsForwardReference;
  o.swiglu = SwiGluReference;
  o.swiglu_backward = SwiGluBackwardReference;
  o.attention_cached = AttentionCachedReference;
  o.attention_cached_invariant = AttentionCachedReference;
  o.attention_train = AttentionTrainReference;
  o.attention_train_backward = AttentionTrainBackwardReference;
  o.cross_entropy = CrossEntropyForwardBackwardReference;
  return o;
}

}  // namespace

const Backend& CpuBackend() {
  static const HostBackend cpu("cpu", CpuOps());
  return cpu;
}

const Backend& ReferenceBackend() {
  static const HostBackend reference("reference", ReferenceOps());
  return reference;
}

const Backend& BackendNamed(const std::string& name) {
  if (name == "cpu") return CpuBackend();
  if (name == "reference") return ReferenceBackend();
  Fail("unknown backend '" + name + "' (choose cpu or reference)");
}

}  // namespace tinylora
