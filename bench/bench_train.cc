// LoRA training (and pretraining) speed of a model directory, against this machine's sgemm
// ceiling measured in the same run (DESIGN.md §6). One step = forward + backward + AdamW.
//   achieved GFLOP/s = useful FLOPs per step / step time; FLOPs: forward 2·N·P over every
//   matrix (P = its parameters), backward 2·N·P for dX (+2·N·P for dW when pretraining),
//   causal attention 4·B·NH·HD·T²/2 forward and twice that backward, LoRA terms included.
// Usage: bench_train MODEL_DIR [--batch B] [--seq T] [--targets q_proj,v_proj|all-linear]
//                   [--rank R] [--tree-depth D] [--steps N] [--warmup N] [--pretrain]
//                   [--checkpoint-activations] [--bf16] [--quantize FORMAT [--double-quant]]
//                   [--threads N]
// --quantize: the frozen base's projections held quantised (q8_0, q4_0, nf4), as
// `train --quantize` holds them: QLoRA's step.
// --bf16: the BF16 base's products through the BF16 kernel in use (ops/gemm_bf16.h;
// TINYLORA_BF16_KERNEL forces one); that kernel's GEMM GFLOP/s at the same shapes is then
// printed beside sgemm's.
// Table on stderr, one JSON line on stdout.
#include <omp.h>
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>

#include "adapters/lora.h"
#include "ceilings.h"
#include "ops/format.h"
#include "ops/gemm.h"
#include "train/optimizer.h"
#include "train/trainable.h"
#include "util/error.h"
#include "util/wait_policy.h"

namespace tinylora {
namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

int Main(int argc, char** argv) {
  const bool help = argc >= 2 && (std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h");
  if (argc < 2 || help) {
    std::fprintf(help ? stdout : stderr,
                 "usage: bench_train MODEL_DIR [--batch B] [--seq T] [--targets T] [--rank R] "
                 "[--tree-depth D] [--steps N] [--warmup N] [--pretrain] "
                 "[--checkpoint-activations] [--bf16] [--quantize FORMAT [--double-quant]] "
                 "[--threads N]\n");
    return help ? 0 : 2;
  }
  const std::string dir = argv[1];
  int B = 1, T = 256, rank = 8, steps = 3, warmup = 1, threads = omp_get_num_procs(), depth = 0;
  std::string targets = "q_proj,v_proj";
  bool pretrain = false, checkpoint = false, bf16 = false;
  QuantizeOnLoad quantize;
  for (int i = 2; i < argc; ++i) {
    const std::string f = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) Fail(f + " needs a value");
      return argv[++i];
    };
    if (f == "--batch")
      B = std::atoi(value().c_str());
    else if (f == "--seq")
      T = std::atoi(value().c_str());
    else if (f == "--targets")
      targets = value();
    else if (f == "--rank")
      rank = std::atoi(value().c_str());
    else if (f == "--tree-depth")
      depth = std::atoi(value().c_str());
    else if (f == "--steps")
      steps = std::atoi(value().c_str());
    else if (f == "--warmup")
      warmup = std::atoi(value().c_str());
    else if (f == "--threads")
      threads = std::atoi(value().c_str());
    else if (f == "--pretrain")
      pretrain = true;
    else if (f == "--checkpoint-activations")
      checkpoint = true;
    else if (f == "--bf16")
      bf16 = true;
    else if (f == "--quantize")
      quantize = {true, QuantizedFormatNamed(value(), "--quantize"), quantize.double_quant, false};
    else if (f == "--double-quant")
      quantize.double_quant = true;
    else
      Fail("unknown flag " + f);
  }
  omp_set_num_threads(threads);
  SetGemmThreads(threads);

  if (quantize.enabled && (bf16 || pretrain))
    Fail("--quantize: for LoRA over the base's products in F32, not with --bf16 or --pretrain");
  auto w = ModelWeights::Load(dir, quantize);
  const LlamaConfig& c = w->config;
  if (bf16 && pretrain) Fail("--bf16 is for a frozen base (LoRA), not --pretrain");
  const int64_t packed_bytes = bf16 ? w->PrepareBf16(/*backward=*/true) : 0;
  std::unique_ptr<TrainableBase> base;
  std::unique_ptr<Adapter> adapter;
  ParamBlock* params = nullptr;
  if (pretrain) {
    base = MakeTrainable(*w);
    params = &base->params;
  } else {
    AdapterConfig ac;
    ac.r = rank;
    ac.alpha = 2.0 * rank;
    ac.targets = ParseTargets(targets, "--targets");
    ac.tree_depth = depth;
    adapter = Adapter::Create(c, ac, 1, true);
    params = &adapter->params();
  }
  const ModelWeights& mw = pretrain ? base->weights : *w;
  TrainModel model(mw, pretrain ? &base->grads : nullptr, adapter.get(), B, T, checkpoint);
  AdamW adam(params);
  AdamWOptions ao;

  // sgemm ceiling at the training shapes: forward x·Wᵀ of every distinct matrix, N = B·T rows.
  const int64_t N = static_cast<int64_t>(B) * T, C = c.hidden, F = c.intermediate;
  const std::vector<bench::GemmShape> shapes = {
      {N, c.q_dim(), C}, {N, c.kv_dim(), C}, {N, c.kv_dim(), C}, {N, C, c.q_dim()},
      {N, F, C},         {N, F, C},          {N, C, F},          {N, c.vocab, C}};
  const double sgemm = bench::SgemmGflops(shapes, 2);
  const Bf16Kernel kernel = bf16 ? Bf16KernelInUse() : Bf16Kernel::kFallback;
  const double bf16_gemm = bf16 ? bench::Bf16GemmGflops(shapes, 5, kernel) : 0;  // noisy

  std::mt19937 rng(7);
  std::vector<int32_t> in(static_cast<size_t>(N)), tgt(in.size());
  std::vector<uint8_t> mask(in.size(), 1);
  double best = 1e30, total = 0, optimizer_s = 0;
  int64_t touched = 0;
  // The first `warmup` steps are not timed: page faults of the map, first touches, and for a
  // tree the optimizer state of leaves seen for the first time.
  for (int s = 0; s < warmup + steps; ++s) {
    // A fresh batch each step, so a tree's tokens keep reaching leaves not used before.
    for (auto& x : in) x = static_cast<int32_t>(rng() % static_cast<uint32_t>(c.vocab));
    for (auto& x : tgt) x = static_cast<int32_t>(rng() % static_cast<uint32_t>(c.vocab));
    const double t0 = Now();
    params->ZeroGrads();
    model.ForwardBackward(in.data(), tgt.data(), mask.data(), 1.0f / static_cast<float>(N), 0);
    const double t1 = Now();
    adam.Step(ao, 1e-4, s + 1, ClipScale(GradNorm(*params), 1.0));
    const double dt = Now() - t0;
    if (s >= warmup) best = std::min(best, dt), total += dt, optimizer_s += Now() - t1;
    touched += params->touched_segments();
  }
  const double mean = total / steps;

  double matrix_params = 0;
  for (const auto& l : w->layers)
    for (const Tensor* t : {&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down})
      matrix_params += static_cast<double>(t->numel());
  const double head = static_cast<double>(w->lm_head.numel());
  // LoRA FLOPs: one leaf's worth per token (hard routing), plus d router rows per block.
  const double lora = pretrain ? 0 : static_cast<double>(adapter->ParamCount()) / (1 << depth);
  const double attn = 2.0 * 2.0 * c.n_layers * B * c.n_heads * c.head_dim * (T * (T + 1) / 2.0);
  double flops = 2.0 * N * (matrix_params + head + lora) + attn;  // forward
  flops +=
      2.0 * N * (matrix_params + head) + 2.0 * attn + 4.0 * N * lora;  // backward dX, LoRA dA dB
  if (pretrain) flops += 2.0 * N * (matrix_params + head);             // dW
  const double gflops = flops / mean / 1e9;
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  const double rss_mb = static_cast<double>(ru.ru_maxrss) / 1024.0;
  const std::string what =
      pretrain ? "pretrain"
               : (depth > 0 ? "tree d=" + std::to_string(depth) + " " : std::string()) +
                     "LoRA r=" + std::to_string(rank) + " " + targets;
  std::fprintf(
      stderr,
      "%s, %s, B=%d T=%d%s%s, %d threads\n"
      "ceiling: sgemm %.1f GFLOP/s at the training shapes%s\n"
      "step %.2f s (best %.2f; clip + AdamW %.3f s), %.1f tokens/s, %.1f GFLOP/s = %.0f%% of "
      "sgemm, peak RSS %.0f MB "
      "(activations %.0f MB)\n"
      "adapter %.1f M parameters, %.0f leaf/node segments touched per step, %lld with optimizer "
      "state\n",
      dir.c_str(), what.c_str(), B, T, checkpoint ? " (checkpointed activations)" : "",
      bf16 ? (std::string(" (BF16 base products, kernel ") + Bf16KernelName(kernel) + ")").c_str()
           : "",
      threads, sgemm,
      bf16 ? (std::string(", BF16 GEMM (") + Bf16KernelName(kernel) + ") " +
              std::to_string(static_cast<int>(bf16_gemm)) + " GFLOP/s (" +
              std::to_string(static_cast<int>(packed_bytes / 1000000)) + " MB prepared)")
                 .c_str()
           : "",
      mean, best, optimizer_s / steps, N / mean, gflops, 100 * gflops / sgemm, rss_mb,
      model.ActivationBytes() / 1e6, static_cast<double>(params->total()) / 1e6,
      static_cast<double>(touched) / (warmup + steps),
      static_cast<long long>(adam.segments_with_state()));
  nlohmann::json j = {
      {"model", dir},
      {"mode", what},
      {"batch", B},
      {"seq_len", T},
      {"threads", threads},
      {"checkpoint_activations", checkpoint},
      {"bf16", bf16},
      {"quantize", quantize.enabled ? std::string(Traits(quantize.format).name) +
                                          (quantize.double_quant ? "+dq" : "")
                                    : ""},
      {"sgemm_gflops", sgemm},
      {"bf16_kernel", bf16 ? Bf16KernelName(kernel) : ""},
      {"bf16_gemm_gflops", bf16_gemm},
      {"packed_mb", packed_bytes / 1e6},
      {"step_s", mean},
      {"optimizer_s", optimizer_s / steps},
      {"tokens_per_s", N / mean},
      {"gflops", gflops},
      {"fraction_of_sgemm", gflops / sgemm},
      {"peak_rss_mb", rss_mb},
      {"activation_bytes", model.ActivationBytes()},
      {"trainable_params", params->total()},
      {"warmup_steps", warmup},
      {"touched_segments_per_step", static_cast<double>(touched) / (warmup + steps)},
      {"segments_with_state", adam.segments_with_state()}};
  std::cout << j.dump() << std::endl;
  return 0;
}

}  // namespace
}  // namespace tinylora

int main(int argc, char** argv) {
  tinylora::UseWaitPolicy(tinylora::WaitPolicy::kPassive, argv);  // as train
  try {
    return tinylora::Main(argc, argv);
  } catch (const tinylora::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return static_cast<int>(e.code());
  }
}
