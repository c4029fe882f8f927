// One table of ops, as ggml's test-backend-ops: every op × weight format × SIMD target compiled
// in, its forward against its plain reference on odd sizes; every backward against central
// finite differences. A target (or the AMX kernel) this CPU lacks is reported as skipped, by
// name — never passed silently.
//   test_backend_ops [gtest flags]      the checks
//   test_backend_ops --perf             GFLOP/s or GB/s of each op on this machine instead
#include <gtest/gtest.h>
#include <hwy/targets.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "adapters/lora.h"
#include "adapters/tree.h"
#include "backend/backend.h"
#include "ops/attention.h"
#include "ops/dropout.h"
#include "ops/format.h"
#include "ops/gemm.h"
#include "ops/lora_rows.h"
#include "ops/loss.h"
#include "ops/matmul.h"
#include "ops/ops.h"
#include "test_util.h"
#include "util/half.h"

namespace tinylora {
namespace {

using test::Random;

double MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(double{a[i]} - b[i]));
  return m;
}

// A weight (out, in) in `f`, its bytes kept alive by the holder. F16/BF16 values are drawn as
// F32 and narrowed (F16 by its bit pattern: exponents in ±5, every mantissa).
struct Weight {
  std::vector<float> f32;
  std::vector<uint16_t> half;
  Tensor t;
};
Weight MakeWeight(Format f, int64_t out, int64_t in, uint32_t seed) {
  Weight w;
  w.f32 = Random(static_cast<size_t>(out * in), seed, 0.5f);
  w.half.resize(w.f32.size());
  for (size_t i = 0; i < w.half.size(); ++i) {
    w.half[i] = f == Format::kF16
                    ? static_cast<uint16_t>(((i * 2654435761u) & 0x83ffu) | ((10 + i % 11) << 10))
                    : F32ToBf16(w.f32[i]);
  }
  w.t = Tensor{f, out, in,
               f == Format::kF32 ? static_cast<const void*>(w.f32.data())
                                 : static_cast<const void*>(w.half.data())};
  return w;
}

// The largest error relative to the reference's largest magnitude (at least 1).
double RelErr(const std::vector<float>& y, const std::vector<float>& ref) {
  double m = 1;
  for (float v : ref) m = std::max(m, std::fabs(double{v}));
  return MaxAbsDiff(y, ref) / m;
}

constexpr Format kFormats[] = {Format::kF32, Format::kF16, Format::kBF16};

// ---------------------------------------------------------------------------------------------
// Forward ops: each case returns its largest error against the plain reference, relative to
// the reference's largest magnitude.

struct ForwardCase {
  std::string name;
  std::function<double()> error;
  double tolerance;
};

std::vector<ForwardCase> ForwardCases() {
  std::vector<ForwardCase> cases;
  for (Format f : kFormats) {
    const std::string fn = Traits(f).name;
    for (int64_t T : {1, 3, 4, 7, 13}) {
      cases.push_back({"matvec " + fn + " T=" + std::to_string(T),
                       [f, T] {
                         Weight w = MakeWeight(f, 37, 133, 1);
                         const std::vector<float> x = Random(T * 133, 2);
                         std::vector<float> y(T * 37), ref(y.size());
                         MatVecRows(w.t, x.data(), T, 0, 37, y.data());
                         MatMulReference(w.t, x.data(), T, ref.data());
                         return RelErr(y, ref);
                       },
                       1e-4});
    }
    cases.push_back({"matmul " + fn + " T=20 (sgemm / dequantised panels)",
                     [f] {
                       Weight w = MakeWeight(f, 300, 70, 3);
                       const std::vector<float> x = Random(20 * 70, 4);
                       std::vector<float> y(20 * 300), ref(y.size());
                       MatMul(w.t, x.data(), 20, y.data());
                       MatMulReference(w.t, x.data(), 20, ref.data());
                       return RelErr(y, ref);
                     },
                     1e-4});
    cases.push_back({"matmul_backward_x " + fn,
                     [f] {  // dx = dy · W, added to what dx holds
                       Weight w = MakeWeight(f, 29, 41, 5);
                       const std::vector<float> dy = Random(11 * 29, 6);
                       std::vector<float> dx = Random(11 * 41, 7), ref = dx;
                       MatMulBackwardX(w.t, dy.data(), 11, dx.data(), true);
                       MatMulBackwardXReference(w.t, dy.data(), 11, ref.data(), true);
                       return RelErr(dx, ref);
                     },
                     1e-4});
    cases.push_back({"gather_rows " + fn,
                     [f] {
                       Weight w = MakeWeight(f, 9, 23, 7);
                       const int32_t ids[] = {8, 0, 8, 3};
                       std::vector<float> out(4 * 23), ref(23), all(9 * 23);
                       GatherRows(w.t, ids, 4, out.data());
                       Traits(f).dequantize_reference(w.t.data, 9 * 23, all.data());
                       double e = 0;
                       for (int t = 0; t < 4; ++t)
                         for (int i = 0; i < 23; ++i)
                           e = std::max(e,
                                        std::fabs(double{out[t * 23 + i]} - all[ids[t] * 23 + i]));
                       return e;
                     },
                     0.0});
  }
  cases.push_back(
      {"gemm (4 transposes, strided, β 0 and 1)",
       [] {
         double e = 0;
         for (int ta = 0; ta < 2; ++ta)
           for (int tb = 0; tb < 2; ++tb) {
             const int64_t M = 7, N = 13, K = 19;
             const int64_t lda = (ta ? M : K) + 2, ldb = (tb ? K : N) + 2, ldc = N + 1;
             const auto a = Random((ta ? K : M) * lda, 1), b = Random((tb ? N : K) * ldb, 2);
             std::vector<float> c = Random(M * ldc, 3), ref = c;
             Gemm(ta, tb, M, N, K, 0.5f, a.data(), lda, b.data(), ldb, 1.0f, c.data(), ldc);
             GemmReference(ta, tb, M, N, K, 0.5f, a.data(), lda, b.data(), ldb, 1.0f, ref.data(),
                           ldc);
             e = std::max(e, MaxAbsDiff(c, ref));
           }
         return e;
       },
       1e-5});
  cases.push_back({"lora_rows (two adapters, leaves, rows without)",
                   [] {
                     const int64_t in = 67, out = 45, T = 19;
                     const auto a = Random(3 * 4 * in, 1), b = Random(3 * out * 4, 2);
                     std::vector<LoraRow> rows(T);
                     for (int64_t t = 1; t < T; ++t)
                       rows[t] = {a.data() + t % 3 * 4 * in, b.data() + t % 3 * out * 4, 4, 0.3f};
                     const auto x = Random(T * in, 3);
                     std::vector<float> y = Random(T * out, 4), ref = y;
                     LoraRowsForward(rows.data(), T, in, out, x.data(), y.data());
                     LoraRowsForwardReference(rows.data(), T, in, out, x.data(), ref.data());
                     return RelErr(y, ref);
                   },
                   1e-4});
  // Both attentions of inference over P queries of one sequence (AttentionShape {4, 2, 16}),
  // against the plain reference; `run` computes all heads into out.
  using AttentionKernel = std::function<void(const AttentionShape&, const float* q, const float* k,
                                             const float* v, int64_t P, float* out)>;
  auto attention_error = [](int64_t P, AttentionKernel run) {
    const AttentionShape s{4, 2, 16};
    const int64_t ldq = 64, ldkv = 32;
    const auto q = Random(P * ldq, 1), k = Random(P * ldkv, 2), v = Random(P * ldkv, 3);
    std::vector<float> out(P * ldq), ref(out.size());
    run(s, q.data(), k.data(), v.data(), P, out.data());
    AttentionReference(s, q.data(), ldq, k.data(), v.data(), ldkv, P, 0, ref.data(), ldq);
    return RelErr(out, ref);
  };
  cases.push_back({"attention (query blocks, sgemm)",
                   [attention_error] {
                     return attention_error(
                         70, [](const AttentionShape& s, const float* q, const float* k,
                                const float* v, int64_t P, float* out) {
                           std::vector<float> scratch(P * P);
                           for (int h = 0; h < s.n_heads; ++h)
                             AttentionHead(s, h, q, 64, k, v, 32, P, 0, out, 64, scratch.data());
                         });
                   },
                   1e-5});
  cases.push_back(
      {"attention batch-invariant",
       [attention_error] {
         return attention_error(21, [](const AttentionShape& s, const float* q, const float* k,
                                       const float* v, int64_t P, float* out) {
           std::vector<float> scratch(P);
           for (int g = 0; g < s.n_kv_heads; ++g)
             AttentionGroupInvariant(s, g, q, 64, k, v, 32, P, 0, out, 64, scratch.data());
         });
       },
       1e-5});
  // The backends' whole-batch ops: the CPU table against the reference table.
  const Ops& cpu = CpuBackend().ops();
  const Ops& ref = ReferenceBackend().ops();
  for (bool invariant : {false, true}) {
    cases.push_back({std::string("attention_cached") + (invariant ? "_invariant" : "") +
                         " (runs of 1, 7 and 70 queries, cached prefixes)",
                     [&cpu, &ref, invariant] {
                       const AttentionShape s{4, 2, 16};
                       const int64_t n[3] = {1, 7, 70}, p0[3] = {5, 0, 3}, Q = 64, KV = 32;
                       std::vector<std::vector<float>> k, v;
                       std::vector<AttentionRun> runs;
                       int64_t T = 0;
                       for (int i = 0; i < 3; ++i) {
                         k.push_back(Random((p0[i] + n[i]) * KV, 10 + i));
                         v.push_back(Random((p0[i] + n[i]) * KV, 20 + i));
                         runs.push_back({T, n[i], p0[i], k.back().data(), v.back().data()});
                         T += n[i];
                       }
                       const auto q = Random(T * Q, 1);
                       std::vector<float> out(T * Q), want(T * Q);
                       (invariant ? cpu.attention_cached_invariant : cpu.attention_cached)(
                           s, runs.data(), 3, q.data(), out.data());
                       ref.attention_cached(s, runs.data(), 3, q.data(), want.data());
                       return RelErr(out, want);
                     },
                     1e-5});
  }
  cases.push_back(
      {"attention_train forward (probabilities and output) and backward",
       [&cpu, &ref] {
         const AttentionShape s{4, 2, 8};
         const int64_t B = 2, T = 67, N = B * T, Q = 32, KV = 16;
         const auto q = Random(N * Q, 1), k = Random(N * KV, 2), v = Random(N * KV, 3);
         const auto datt = Random(N * Q, 4);
         std::vector<float> p[2], att[2], dq[2], dk[2], dv[2];
         for (int i = 0; i < 2; ++i) {
           const Ops& o = i == 0 ? cpu : ref;
           p[i].resize(B * 4 * T * T), att[i].resize(N * Q);
           dq[i].resize(N * Q), dk[i] = Random(N * KV, 5), dv[i] = Random(N * KV, 6);
           o.attention_train(s, B, T, q.data(), k.data(), v.data(), p[i].data(), att[i].data());
           o.attention_train_backward(s, B, T, q.data(), k.data(), v.data(), p[i].data(),
                                      datt.data(), dq[i].data(), dk[i].data(), dv[i].data());
         }
         return std::max({RelErr(p[0], p[1]), RelErr(att[0], att[1]), RelErr(dq[0], dq[1]),
                          RelErr(dk[0], dk[1]), RelErr(dv[0], dv[1])});
       },
       1e-5});
  cases.push_back({"matmul_backward_w and scatter_add_rows (added to existing values)",
                   [&cpu, &ref] {
                     const int64_t T = 13, out = 29, in = 41;
                     const auto dy = Random(T * out, 1), x = Random(T * in, 2);
                     std::vector<float> dw = Random(out * in, 3), want = dw;
                     cpu.matmul_backward_w(dy.data(), x.data(), T, out, in, dw.data());
                     ref.matmul_backward_w(dy.data(), x.data(), T, out, in, want.data());
                     const int32_t ids[] = {3, 0, 3, 7};
                     std::vector<float> table = Random(8 * in, 4), sum = table;
                     cpu.scatter_add_rows(x.data(), ids, 4, in, table.data());
                     for (int t = 0; t < 4; ++t)
                       for (int64_t i = 0; i < in; ++i) sum[ids[t] * in + i] += x[t * in + i];
                     return std::max(RelErr(dw, want), MaxAbsDiff(table, sum));
                   },
                   1e-5});
  cases.push_back({"cross_entropy forward-backward (masked rows)",
                   [&cpu, &ref] {
                     const int64_t N = 5, V = 301;
                     std::vector<float> logits = Random(N * V, 1, 3.0f), want = logits;
                     const int32_t targets[] = {0, 300, 17, 5, 150};
                     const uint8_t mask[] = {1, 1, 0, 1, 1};
                     const double l = cpu.cross_entropy(logits.data(), targets, mask, N, V, 0.25f);
                     const double lr = ref.cross_entropy(want.data(), targets, mask, N, V, 0.25f);
                     return std::max(std::fabs(l - lr) / lr, RelErr(logits, want));
                   },
                   1e-5});
  cases.push_back({"rmsnorm",
                   [] {
                     const int64_t T = 3, C = 37;
                     const auto x = Random(T * C, 1), w = Random(C, 2);
                     std::vector<float> y(T * C), ref(T * C);
                     RmsNorm(x.data(), w.data(), T, C, 1e-5f, y.data());
                     for (int64_t t = 0; t < T; ++t) {
                       double ss = 0;
                       for (int64_t i = 0; i < C; ++i) ss += double{x[t * C + i]} * x[t * C + i];
                       const double r = 1.0 / std::sqrt(ss / C + 1e-5);
                       for (int64_t i = 0; i < C; ++i)
                         ref[t * C + i] = static_cast<float>(x[t * C + i] * r * w[i]);
                     }
                     return RelErr(y, ref);
                   },
                   1e-5});
  cases.push_back({"swiglu",
                   [] {
                     const auto g = Random(77, 1), u = Random(77, 2);
                     std::vector<float> y(77), ref(77);
                     SwiGlu(g.data(), u.data(), 77, y.data());
                     SwiGluReference(g.data(), u.data(), 77, ref.data());
                     return RelErr(y, ref);
                   },
                   1e-5});
  cases.push_back({"softmax",
                   [] {
                     std::vector<float> x = Random(53, 1, 3.0f), ref = x;
                     Softmax(x.data(), 53);
                     SoftmaxReference(ref.data(), 53);
                     return RelErr(x, ref);
                   },
                   1e-6});
  return cases;
}

// The compiled Highway targets, supported here or not.
std::vector<int64_t> CompiledTargets() {
  std::vector<int64_t> out;
  for (int64_t bits = HWY_TARGETS; bits != 0; bits &= bits - 1) out.push_back(bits & -bits);
  return out;
}

class OnTarget : public ::testing::TestWithParam<int64_t> {};

TEST_P(OnTarget, EveryForwardOpMatchesItsReference) {
  const int64_t target = GetParam();
  if ((hwy::SupportedTargets() & target) == 0)
    GTEST_SKIP() << hwy::TargetName(target) << ": compiled in, but this CPU lacks it";
  hwy::SetSupportedTargetsForTest(target);
  for (const ForwardCase& c : ForwardCases()) {
    SCOPED_TRACE(c.name);
    const double e = c.error();
    if (c.tolerance == 0) {
      EXPECT_EQ(e, 0.0) << c.name;
    } else {
      EXPECT_LT(e, c.tolerance) << c.name;
    }
  }
  hwy::SetSupportedTargetsForTest(0);
}

INSTANTIATE_TEST_SUITE_P(Highway, OnTarget, ::testing::ValuesIn(CompiledTargets()),
                         [](const ::testing::TestParamInfo<int64_t>& i) {
                           return std::string(hwy::TargetName(i.param));
                         });

// ---------------------------------------------------------------------------------------------
// Backward ops against central finite differences of L = Σ g · forward(·).

double Dot(const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += double{a[i]} * b[i];
  return s;
}

// Relative error of the analytic gradient of L(v) against central differences over every
// coordinate of v (the float values are perturbed in place and restored).
template <typename L>
double FdError(float* v, int64_t n, const std::vector<float>& analytic, L loss) {
  double num2 = 0, diff2 = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float orig = v[i], h = 1e-2f * std::max(1.0f, std::fabs(orig));
    v[i] = orig + h;
    const double up = loss();
    v[i] = orig - h;
    const double down = loss();
    v[i] = orig;
    const double fd = (up - down) / (2.0 * h);
    num2 += fd * fd;
    diff2 += (fd - analytic[static_cast<size_t>(i)]) * (fd - analytic[static_cast<size_t>(i)]);
  }
  return num2 > 0 ? std::sqrt(diff2 / num2) : std::sqrt(diff2);
}

TEST(Backward, MatMulWeightGradient) {
  const int64_t T = 6, out = 9, in = 11;
  std::vector<float> w = Random(out * in, 1), x = Random(T * in, 2), g = Random(T * out, 3);
  auto loss = [&] {
    std::vector<float> y(T * out);
    MatMulReference(Tensor{Format::kF32, out, in, w.data()}, x.data(), T, y.data());
    return Dot(g, y);
  };
  std::vector<float> dw(out * in, 0.0f);
  MatMulBackwardW(g.data(), x.data(), T, out, in, dw.data());
  EXPECT_LT(FdError(w.data(), out * in, dw, loss), 1e-3);
  std::vector<float> dx(T * in);
  MatMulBackwardX(Tensor{Format::kF32, out, in, w.data()}, g.data(), T, dx.data(), false);
  EXPECT_LT(FdError(x.data(), T * in, dx, loss), 1e-3);
}

// A small adapter with random A and B (d = 0: a LoRA; d > 0: a tree) on a tiny config.
std::unique_ptr<Adapter> SmallAdapter(int depth) {
  LlamaConfig c;
  c.hidden = 12;
  c.intermediate = 20;
  c.n_layers = 1;
  c.n_heads = 2;
  c.n_kv_heads = 1;
  c.head_dim = 6;
  c.vocab = 16;
  c.max_pos = 16;
  AdapterConfig ac;
  ac.r = 3;
  ac.alpha = 6;
  ac.tree_depth = depth;
  ac.targets = {Module::kQ};
  auto a = Adapter::Create(c, ac, 7, true);
  std::mt19937 rng(8);
  std::normal_distribution<float> nd(0.0f, 0.5f);
  for (int i = 0; i < a->params().size(); ++i)
    for (int64_t k = 0; k < a->params().numel(i); ++k) a->params().value(i)[k] = nd(rng);
  return a;
}

TEST(Backward, LoraKernels) {
  auto a = SmallAdapter(0);
  const LoraWeights& l = *a->Get(0, Module::kQ);
  const int64_t N = 5;
  std::vector<float> x = Random(N * l.in, 1), g = Random(N * l.out, 2);
  auto loss = [&] {
    std::vector<float> u(N * l.r), y(N * l.out, 0.0f);
    LoraForward(Gemm, l, 2.0f, x.data(), N, u.data(), y.data());
    return Dot(g, y);
  };
  std::vector<float> u(N * l.r), y(N * l.out, 0.0f), du(N * l.r), dx(N * l.in, 0.0f);
  LoraForward(Gemm, l, 2.0f, x.data(), N, u.data(), y.data());
  a->params().ZeroGrads();
  LoraBackward(Gemm, l, 2.0f, x.data(), u.data(), g.data(), N, du.data());
  LoraBackwardX(Gemm, l, du.data(), N, dx.data());
  EXPECT_LT(FdError(x.data(), N * l.in, dx, loss), 1e-3);
  EXPECT_LT(FdError(l.A, l.r * l.in, a->params().DenseGrad(l.a_index), loss), 1e-3);
  EXPECT_LT(FdError(l.B, l.out * l.r, a->params().DenseGrad(l.b_index), loss), 1e-3);
}

// Tree leaf kernels with a fixed routing (drawn from a separate router input, so perturbing
// the projection's input or the leaves never moves a token to another leaf).
TEST(Backward, TreeLeafKernelsHardAndSoft) {
  for (bool soft : {false, true}) {
    SCOPED_TRACE(soft ? "soft" : "hard");
    auto a = SmallAdapter(2);
    const LoraWeights& l = *a->Get(0, Module::kQ);
    const int64_t N = 9;
    const std::vector<float> xr = Random(N * 12, 3);
    Routing rt;
    if (soft) {
      RouteSoft(Gemm, *a->Router(0), xr.data(), N, &rt);
    } else {
      RouteHard(*a->Router(0), xr.data(), N, GateKind::kPath, &rt);
    }
    std::vector<float> x = Random(N * l.in, 1), g = Random(N * l.out, 2);
    const int64_t U = N * (soft ? l.R() : l.r);
    TreeScratch sc;
    auto loss = [&] {
      std::vector<float> u(U), y(N * l.out, 0.0f);
      if (soft) {
        TreeLoraForwardSoft(Gemm, l, 2.0f, x.data(), N, rt, u.data(), y.data(), sc);
      } else {
        TreeLoraForwardHard(Gemm, l, 2.0f, x.data(), N, rt, u.data(), y.data(), sc);
      }
      return Dot(g, y);
    };
    std::vector<float> u(U), y(N * l.out, 0.0f), dx(N * l.in, 0.0f);
    if (soft) {
      TreeLoraForwardSoft(Gemm, l, 2.0f, x.data(), N, rt, u.data(), y.data(), sc);
    } else {
      TreeLoraForwardHard(Gemm, l, 2.0f, x.data(), N, rt, u.data(), y.data(), sc);
    }
    a->params().ZeroGrads();
    if (soft) {
      TreeLoraBackwardSoft(Gemm, l, 2.0f, x.data(), u.data(), g.data(), N, rt, dx.data(), sc);
    } else {
      TreeLoraBackwardHard(Gemm, l, 2.0f, x.data(), u.data(), g.data(), N, rt, dx.data(), sc);
    }
    EXPECT_LT(FdError(x.data(), N * l.in, dx, loss), 1e-3);
    EXPECT_LT(FdError(l.A, l.R() * l.in, a->params().DenseGrad(l.a_index), loss), 1e-3);
    EXPECT_LT(FdError(l.B, l.leaves * l.out * l.r, a->params().DenseGrad(l.b_index), loss), 1e-3);
    // the gate / path-probability gradients the router receives
    if (soft) {
      EXPECT_LT(FdError(rt.probs.data(), N * l.leaves, rt.dprobs, loss), 1e-3);
    } else {
      EXPECT_LT(FdError(rt.gate.data(), N, rt.dgate, loss), 1e-3);
    }
  }
}

// The router: L = Σ c · gate (hard) or Σ c · p (soft) plus the hardening and balance losses.
TEST(Backward, RouterHardAndSoft) {
  for (bool soft : {false, true}) {
    SCOPED_TRACE(soft ? "soft" : "hard");
    auto a = SmallAdapter(2);
    const RouterWeights& r = *a->Router(0);
    const int64_t N = 8, C = r.hidden;
    std::vector<float> x = Random(N * C, 4);
    const std::vector<float> c = Random(N * (soft ? 4 : 1), 5);
    const AuxLoss aux{0.3, 0.2, 1.0};
    Routing rt;
    auto route = [&] {
      if (soft) {
        RouteSoft(Gemm, r, x.data(), N, &rt);
      } else {
        RouteHard(r, x.data(), N, GateKind::kPath, &rt);
      }
    };
    route();
    const std::vector<int32_t> leaves = rt.leaf;
    bool flipped = false;
    auto loss = [&] {
      route();
      flipped = flipped || rt.leaf != leaves;
      return Dot(c, soft ? rt.probs : rt.gate) + RouterAuxLoss(rt, aux);
    };
    route();
    (soft ? rt.dprobs : rt.dgate) = c;
    std::vector<float> dx(N * C, 0.0f);
    a->params().ZeroGrads();
    RouterBackward(Gemm, r, x.data(), rt, aux, dx.data());
    const std::vector<float> dw = a->params().DenseGrad(r.w_index),
                             db = a->params().DenseGrad(r.b_index);
    EXPECT_LT(FdError(x.data(), N * C, dx, loss), 2e-3);
    EXPECT_LT(FdError(r.W, r.nodes() * C, dw, loss), 2e-3);
    EXPECT_LT(FdError(r.b, r.nodes(), db, loss), 2e-3);
    EXPECT_FALSE(flipped) << "a difference step moved a token to another leaf: pick other inputs";
  }
}

TEST(Backward, RmsNormRopeCrossEntropy) {
  const int64_t T = 3, C = 8;
  std::vector<float> x = Random(T * C, 1), w = Random(C, 2), g = Random(T * C, 3), y(T * C), rs(T);
  auto norm_loss = [&] {
    RmsNorm(x.data(), w.data(), T, C, 1e-5f, y.data(), rs.data());
    return Dot(g, y);
  };
  norm_loss();
  std::vector<float> dx(T * C, 0.0f), dw(C, 0.0f);
  RmsNormBackward(g.data(), x.data(), w.data(), rs.data(), T, C, dx.data(), dw.data());
  EXPECT_LT(FdError(x.data(), T * C, dx, norm_loss), 1e-3);
  EXPECT_LT(FdError(w.data(), C, dw, norm_loss), 1e-3);

  RopeTable table(8, 16, 10000.0);
  const std::vector<int32_t> pos = {0, 5, 11};
  std::vector<float> q = Random(3 * 2 * 8, 4), gq = Random(q.size(), 5);
  auto rope_loss = [&] {
    std::vector<float> r = q;
    Rope(r.data(), pos.data(), 3, 2, table);
    return Dot(gq, r);
  };
  std::vector<float> dq = gq;
  RopeBackward(dq.data(), pos.data(), 3, 2, table);
  EXPECT_LT(FdError(q.data(), static_cast<int64_t>(q.size()), dq, rope_loss), 1e-3);

  const int64_t N = 4, V = 9;
  std::vector<float> logits = Random(N * V, 6);
  const std::vector<int32_t> tg = {1, 8, 0, 3};
  const std::vector<uint8_t> mask = {1, 0, 1, 1};
  auto ce = [&] { return CrossEntropyLoss(logits.data(), tg.data(), mask.data(), N, V); };
  std::vector<float> grad = logits;
  EXPECT_NEAR(CrossEntropyForwardBackward(grad.data(), tg.data(), mask.data(), N, V, 1.0f), ce(),
              1e-5);
  for (int64_t j = 0; j < V; ++j) EXPECT_EQ(grad[1 * V + j], 0.0f);  // the masked row
  EXPECT_LT(FdError(logits.data(), N * V, grad, ce), 1e-3);
}

TEST(Backward, DropoutAndResidualAdd) {
  const int64_t n = 4000;
  std::vector<float> x = Random(n, 1), g = Random(n, 2), y(n);
  DropoutForward(77, 0.25, x.data(), n, y.data());
  int64_t dropped = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (y[i] == 0.0f) {
      ++dropped;
    } else {
      ASSERT_EQ(y[i], x[i] * static_cast<float>(1.0 / 0.75)) << i;
    }
  }
  EXPECT_NEAR(static_cast<double>(dropped) / n, 0.25, 0.03);
  std::vector<float> again(n);
  DropoutForward(77, 0.25, x.data(), n, again.data());
  EXPECT_EQ(again, y);  // the same key draws the same mask
  DropoutForward(78, 0.25, x.data(), n, again.data());
  EXPECT_NE(again, y);
  // A slice from element k (a rank's rows) draws the whole array's mask there, and its
  // backward the same.
  const int64_t k = 1234;
  std::vector<float> part(static_cast<size_t>(n - k)), dpart(part.size(), 0.0f);
  DropoutForward(77, 0.25, x.data() + k, n - k, part.data(), k);
  EXPECT_EQ(part, std::vector<float>(y.begin() + k, y.end()));
  DropoutBackwardAdd(77, 0.25, g.data() + k, n - k, dpart.data(), k);
  for (int64_t i = k; i < n; ++i)
    ASSERT_EQ(dpart[static_cast<size_t>(i - k)] == 0.0f, y[i] == 0.0f);
  std::vector<float> small(x.begin(), x.begin() + 50);
  auto loss = [&] {
    std::vector<float> out(50);
    DropoutForward(77, 0.25, small.data(), 50, out.data());
    return Dot(std::vector<float>(g.begin(), g.begin() + 50), out);
  };
  std::vector<float> dx(50, 0.0f);
  DropoutBackwardAdd(77, 0.25, g.data(), 50, dx.data());
  EXPECT_LT(FdError(small.data(), 50, dx, loss), 1e-3);
  std::vector<float> sum(n);
  Add(x.data(), g.data(), n, sum.data());
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(sum[i], x[i] + g[i]);
}

TEST(Backward, SwiGluAndTrainingAttention) {
  std::vector<float> g = Random(20, 6), u = Random(20, 7), d2 = Random(20, 8), dg(20), du(20);
  auto swiglu_loss = [&] {
    std::vector<float> y(20);
    SwiGluReference(g.data(), u.data(), 20, y.data());
    return Dot(d2, y);
  };
  SwiGluBackward(d2.data(), g.data(), u.data(), 20, dg.data(), du.data());
  EXPECT_LT(FdError(g.data(), 20, dg, swiglu_loss), 1e-3);
  EXPECT_LT(FdError(u.data(), 20, du, swiglu_loss), 1e-3);

  const AttentionShape s{4, 2, 8};
  const int64_t T = 6, ldq = 32, ldkv = 16;
  std::vector<float> q = Random(T * ldq, 9), k = Random(T * ldkv, 10), v = Random(T * ldkv, 11);
  const std::vector<float> da = Random(T * ldq, 12);
  auto attn_loss = [&] {
    std::vector<float> out(T * ldq), probs(T * T);
    for (int h = 0; h < 4; ++h)
      AttentionTrainHead(s, h, q.data(), ldq, k.data(), v.data(), ldkv, T, probs.data(), out.data(),
                         ldq);
    return Dot(da, out);
  };
  std::vector<float> dq(q.size()), dk(k.size(), 0.0f), dv(v.size(), 0.0f), probs(4 * T * T),
      out(T * ldq), scratch(T * T), ref(T * ldq);
  for (int h = 0; h < 4; ++h)
    AttentionTrainHead(s, h, q.data(), ldq, k.data(), v.data(), ldkv, T, &probs[h * T * T],
                       out.data(), ldq);
  AttentionReference(s, q.data(), ldq, k.data(), v.data(), ldkv, T, 0, ref.data(), ldq);
  EXPECT_LT(MaxAbsDiff(out, ref), 1e-5);
  for (int h = 0; h < 4; ++h)
    AttentionTrainHeadBackward(s, h, q.data(), ldq, k.data(), v.data(), ldkv, T, &probs[h * T * T],
                               da.data(), ldq, dq.data(), dk.data(), dv.data(), scratch.data());
  EXPECT_LT(FdError(q.data(), T * ldq, dq, attn_loss), 1e-3);
  EXPECT_LT(FdError(k.data(), T * ldkv, dk, attn_loss), 1e-3);
  EXPECT_LT(FdError(v.data(), T * ldkv, dv, attn_loss), 1e-3);
}

// ---------------------------------------------------------------------------------------------
// --perf: each op's speed at shapes of the TinyLlama class, on the best target this CPU has.

double Seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
template <typename F>
double Best(F f) {  // best of 5 after one warm-up
  f();
  double best = 1e30;
  for (int i = 0; i < 5; ++i) {
    const double t0 = Seconds();
    f();
    best = std::min(best, Seconds() - t0);
  }
  return best;
}

int Perf() {
  std::printf("%-44s %12s\n", "op (shape)", "speed");
  const int64_t C = 2048, F = 5632;
  for (Format f : kFormats) {
    Weight w = MakeWeight(f, F, C, 1);
    const auto x = Random(256 * C, 2);
    std::vector<float> y(256 * F);
    const double dec = Best([&] { MatMul(w.t, x.data(), 1, y.data()); });
    std::printf("%-44s %8.1f GB/s\n",
                (std::string("matvec ") + Traits(f).name + " 5632x2048 T=1").c_str(),
                w.t.nbytes() / dec / 1e9);
    const double pre = Best([&] { MatMul(w.t, x.data(), 256, y.data()); });
    std::printf("%-44s %8.1f GFLOP/s\n",
                (std::string("matmul ") + Traits(f).name + " T=256").c_str(),
                2.0 * 256 * F * C / pre / 1e9);
    const double inv = Best([&] { MatMulBatchInvariant(w.t, x.data(), 256, y.data()); });
    std::printf("%-44s %8.1f GFLOP/s\n",
                (std::string("matmul batch-invariant ") + Traits(f).name + " T=256").c_str(),
                2.0 * 256 * F * C / inv / 1e9);
  }
  {
    const auto a = Random(8 * C, 1), b = Random(C * 8, 2), x = Random(256 * C, 3);
    std::vector<float> y(256 * C, 0.0f);
    std::vector<LoraRow> rows(256, LoraRow{a.data(), b.data(), 8, 1.0f});
    const double t = Best([&] { LoraRowsForward(rows.data(), 256, C, C, x.data(), y.data()); });
    std::printf("%-44s %8.1f GFLOP/s\n", "lora_rows r=8 2048x2048 T=256",
                4.0 * 256 * 8 * C / t / 1e9);
  }
  {
    const AttentionShape s{32, 4, 64};
    const int64_t P = 512, ldq = 2048, ldkv = 256;
    const auto q = Random(P * ldq, 1), k = Random(P * ldkv, 2), v = Random(P * ldkv, 3);
    std::vector<float> out(P * ldq), scratch(P * P);
    const double flops = 2.0 * 2.0 * 32 * 64 * (P * (P + 1) / 2.0);
    const double t = Best([&] {
      for (int g = 0; g < 4; ++g)
        AttentionGroupInvariant(s, g, q.data(), ldq, k.data(), v.data(), ldkv, P, 0, out.data(),
                                ldq, scratch.data());
    });
    std::printf("%-44s %8.1f GFLOP/s (1 thread)\n", "attention batch-invariant 32h T=512",
                flops / t / 1e9);
    const double t2 = Best([&] {
      for (int h = 0; h < 32; ++h)
        AttentionHead(s, h, q.data(), ldq, k.data(), v.data(), ldkv, P, 0, out.data(), ldq,
                      scratch.data());
    });
    std::printf("%-44s %8.1f GFLOP/s (1 thread)\n", "attention query blocks 32h T=512",
                flops / t2 / 1e9);
  }
  {
    const auto x = Random(256 * C, 1), w = Random(C, 2);
    std::vector<float> y(256 * C);
    const double t = Best([&] { RmsNorm(x.data(), w.data(), 256, C, 1e-5f, y.data()); });
    std::printf("%-44s %8.1f GB/s\n", "rmsnorm 256x2048", 2.0 * 4 * 256 * C / t / 1e9);
    const auto g = Random(256 * F, 3), u = Random(256 * F, 4);
    std::vector<float> h(256 * F);
    const double t2 = Best([&] { SwiGlu(g.data(), u.data(), 256 * F, h.data()); });
    std::printf("%-44s %8.1f GB/s\n", "swiglu 256x5632", 3.0 * 4 * 256 * F / t2 / 1e9);
  }
  return 0;
}

}  // namespace
}  // namespace tinylora

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i)
    if (std::strcmp(argv[i], "--perf") == 0) return tinylora::Perf();
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
