// Prefill and decode speed of a model directory, as fractions of this machine's ceilings
// measured in the same run (DESIGN.md §6):
//   prefill: achieved GFLOP/s (matmuls + attention) / sgemm GFLOP/s at the model's shapes
//   decode:  bytes of weights (+ KV cache) read per token × tokens/s / read bandwidth, and /
//            the decode kernel's GB/s over cache-resident rows where that is the lower bound
// Usage: bench_forward MODEL_DIR [--prefill T] [--decode N] [--threads N] [--bf16]
//                     [--quantize q8_0|q4_0|nf4 [--double-quant]] [--int8-activations]
//                     [--lora-rank R [--tree-depth D] [--targets q_proj,v_proj|all-linear]]
// --quantize: the projections held quantised (as `eval --quantize`); decode's bytes are theirs.
// --bf16: the shape-dependent prefill through the BF16 kernel in use (ops/gemm_bf16.h), whose
// GEMM GFLOP/s at the same shapes is then a ceiling of the run too.
// Table on stderr, one JSON line on stdout.
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>

#include "adapters/lora.h"
#include "ceilings.h"
#include "model/llama.h"
#include "ops/format.h"
#include "ops/gemm.h"
#include "ops/gemm_bf16.h"
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
                 "usage: bench_forward MODEL_DIR [--prefill T] [--decode N] [--threads N] [--bf16] "
                 "[--quantize FORMAT [--double-quant]] [--lora-rank R] [--tree-depth D] "
                 "[--targets LIST]\n");
    return help ? 0 : 2;
  }
  const std::string dir = argv[1];
  int prefill = 512, decode = 32, threads = omp_get_num_procs(), rank = 0, depth = 0;
  std::string targets = "q_proj,v_proj";
  bool bf16 = false;
  QuantizeOnLoad quantize;
  for (int i = 2; i < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--bf16" || flag == "--double-quant" || flag == "--int8-activations") {
      (flag == "--bf16"           ? bf16
       : flag == "--double-quant" ? quantize.double_quant
                                  : quantize.int8_activations) = true;
      --i;
      continue;
    }
    if (i + 1 == argc) Fail(flag + ": needs a value");
    const int v = std::atoi(argv[i + 1]);
    if (flag == "--prefill")
      prefill = v;
    else if (flag == "--decode")
      decode = v;
    else if (flag == "--threads")
      threads = v;
    else if (flag == "--lora-rank")
      rank = v;
    else if (flag == "--tree-depth")
      depth = v;
    else if (flag == "--targets")
      targets = argv[i + 1];
    else if (flag == "--quantize")
      quantize = {true, QuantizedFormatNamed(argv[i + 1], "--quantize"), quantize.double_quant,
                  false, quantize.int8_activations};
    else {
      std::fprintf(stderr, "error: unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  omp_set_num_threads(threads);
  SetGemmThreads(threads);

  if (quantize.enabled && bf16) Fail("--quantize with --bf16: not supported (as in the CLI)");
  auto w = ModelWeights::Load(dir, quantize);
  const LlamaConfig& c = w->config;
  if (decode < 1 || decode + 2 > c.max_pos) {
    Fail("--decode " + std::to_string(decode) + ": needs 1.." + std::to_string(c.max_pos - 2) +
         " tokens (the model's context is " + std::to_string(c.max_pos) + ")");
  }
  prefill = std::min(prefill, c.max_pos - decode - 1);
  // Optionally a random (tree-)LoRA adapter on top: its decode cost is what is measured.
  std::unique_ptr<Adapter> adapter;
  if (rank > 0) {
    AdapterConfig ac;
    ac.r = rank;
    ac.alpha = 2.0 * rank;
    ac.tree_depth = depth;
    ac.targets = ParseTargets(targets, "--targets");
    adapter = Adapter::Create(w->config, ac, 1, false);
  }
  const Bf16Kernel kernel = bf16 ? Bf16KernelInUse() : Bf16Kernel::kFallback;
  if (bf16) w->PrepareBf16(/*backward=*/false);
  LlamaModel model(*w, adapter.get());

  // Ceilings at this model's shapes.
  const int64_t C = c.hidden, F = c.intermediate, Q = c.q_dim(), KV = c.kv_dim(), T = prefill;
  std::vector<bench::GemmShape> layer = {{T, Q, C}, {T, KV, C}, {T, KV, C}, {T, C, Q},
                                         {T, F, C}, {T, F, C},  {T, C, F}};
  std::vector<bench::GemmShape> shapes;
  for (int l = 0; l < std::min(c.n_layers, 2); ++l)
    shapes.insert(shapes.end(), layer.begin(), layer.end());
  shapes.push_back({T, c.vocab, C});
  const double sgemm = bench::SgemmGflops(shapes, 3);
  const double bf16_gemm = bf16 ? bench::Bf16GemmGflops(shapes, 3, kernel) : 0;
  const double read_bw_before = bench::ReadBandwidthGBs(int64_t{1} << 30, 5);
  const double copy_bw = bench::CopyBandwidthGBs(int64_t{1} << 30, 5);
  // The decode kernel's own ceiling: 128 rows of the first up-projection (≤ 0.6 MB in F32),
  // cache-resident.
  const double kernel_gbs = bench::StreamingKernelGBs(w->layers[0].w_up, 128, 5);

  // Prefill: T tokens of one sequence, logits for the last only, best of 2 after a warm-up
  // (pages of the map, arena growth): with eval's shape-dependent kernels (sgemm, AMX), then
  // with generate's batch-invariant ones.
  KvCache cache(c, 1, prefill + decode + 1);
  Batch b;
  std::vector<float> logits;
  for (int i = 0; i < prefill; ++i) b.Add((i * 7919 + 3) % c.vocab, 0, i, i + 1 == prefill);
  auto time_prefill = [&](bool invariant) {
    model.SetBatchInvariant(invariant);
    double best = 1e30;
    for (int r = 0; r < 3; ++r) {
      cache.length[0] = 0;
      const double t0 = Now();
      model.Forward(b, cache, &logits);
      if (r > 0) best = std::min(best, Now() - t0);
    }
    return best;
  };
  const double prefill_s = time_prefill(false);
  const double prefill_inv_s = time_prefill(true);  // leaves the model batch-invariant
  double mm_flops = 0;
  for (const auto& l : w->layers) {
    for (const Tensor* t : {&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down}) {
      mm_flops += 2.0 * T * static_cast<double>(t->numel());
    }
  }
  mm_flops += 2.0 * 1 * static_cast<double>(w->lm_head.numel());  // one row of logits
  // attention: QKᵀ and PV over the causal triangle, every head
  const double attn_flops = 2.0 * 2.0 * c.n_layers * c.n_heads * c.head_dim * (T * (T + 1) / 2.0);
  const double prefill_gflops = (mm_flops + attn_flops) / prefill_s / 1e9;
  const double prefill_inv_gflops = (mm_flops + attn_flops) / prefill_inv_s / 1e9;

  // Decode (batch-invariant, as generate): `decode` tokens one at a time after the prompt.
  int pos = prefill;
  double t0 = Now();
  for (int i = 0; i < decode; ++i) {
    b.Clear();
    b.Add((i * 31 + 5) % c.vocab, 0, pos++, true);
    model.Forward(b, cache, &logits);
  }
  const double decode_s = Now() - t0;
  const double tok_s = decode / decode_s;
  const double kv_bytes = 2.0 * c.n_layers * (prefill + decode / 2.0) * KV * sizeof(float);
  const double bytes_per_token = static_cast<double>(w->MatrixBytes()) + kv_bytes;
  const double decode_gbs = bytes_per_token * tok_s / 1e9;
  // The read ceiling, measured again after decode (best of both bounds the machine's drift).
  // A fraction is reported only where it means something: not when a token's bytes fit in
  // the caches, and not above the ceiling (a disturbed ceiling run: rerun).
  const double read_bw = std::max(read_bw_before, bench::ReadBandwidthGBs(int64_t{1} << 30, 5));
  const long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
  const bool cache_resident = l3 > 0 && bytes_per_token <= 2.0 * static_cast<double>(l3);
  const bool above = decode_gbs > read_bw;
  // The bound of decode: the read bandwidth, or the format's kernel where that is slower.
  const bool compute_bound = !cache_resident && kernel_gbs < read_bw;
  const double decode_ceiling = compute_bound ? kernel_gbs : read_bw;
  const char* decode_note = cache_resident ? " (a token's bytes fit in the caches: no DRAM bound)"
                            : above        ? " (ABOVE the measured read ceiling: that run was "
                                             "disturbed; rerun on an idle machine)"
                                           : "";

  std::fprintf(
      stderr,
      "model %s: %lld matrix bytes (%s), %d threads\n"
      "ceilings: sgemm %.1f GFLOP/s at the model's shapes (T=%d), read %.1f GB/s, copy %.1f GB/s\n"
      "%s"
      "prefill %d tokens: %.2f s, %.1f tokens/s, %.1f GFLOP/s = %.0f%% of sgemm%s\n"
      "prefill batch-invariant: %.1f tokens/s = %.0f%% of sgemm\n"
      "decode %d tokens: %.2f tokens/s, %.1f GB/s = %.0f%% of read bandwidth%s\n"
      "decode kernel (%s) over cache-resident rows: %.1f GB/s, so decode is bound by %s: "
      "%.0f%% of it\n",
      dir.c_str(), static_cast<long long>(w->MatrixBytes()), Traits(w->layers[0].wq.format).name,
      threads, sgemm, prefill, read_bw, copy_bw,
      bf16 ? (std::string("ceiling: BF16 GEMM (") + Bf16KernelName(kernel) + ") " +
              std::to_string(static_cast<int>(bf16_gemm)) + " GFLOP/s; prefill through it\n")
                 .c_str()
           : "",
      prefill, prefill_s, prefill / prefill_s, prefill_gflops, 100 * prefill_gflops / sgemm,
      bf16 ? (", " + std::to_string(static_cast<int>(100 * prefill_gflops / bf16_gemm)) +
              "% of the BF16 GEMM")
                 .c_str()
           : "",
      prefill / prefill_inv_s, 100 * prefill_inv_gflops / sgemm, decode, tok_s, decode_gbs,
      100 * decode_gbs / read_bw, decode_note, Traits(w->layers[0].w_up.format).name, kernel_gbs,
      compute_bound ? "the kernel" : "memory", 100 * decode_gbs / decode_ceiling);
  nlohmann::json j = {{"model", dir},
                      {"dtype", Traits(w->layers[0].wq.format).name},
                      {"threads", threads},
                      {"sgemm_gflops", sgemm},
                      {"read_gbs", read_bw},
                      {"copy_gbs", copy_bw},
                      {"prefill_tokens", prefill},
                      {"prefill_tokens_per_s", prefill / prefill_s},
                      {"prefill_gflops", prefill_gflops},
                      {"prefill_fraction_of_sgemm", prefill_gflops / sgemm},
                      {"bf16_kernel", bf16 ? Bf16KernelName(kernel) : ""},
                      {"bf16_gemm_gflops", bf16_gemm},
                      {"prefill_fraction_of_bf16_gemm", bf16 ? prefill_gflops / bf16_gemm : 0.0},
                      {"prefill_invariant_tokens_per_s", prefill / prefill_inv_s},
                      {"prefill_invariant_fraction_of_sgemm", prefill_inv_gflops / sgemm},
                      {"decode_tokens_per_s", tok_s},
                      {"decode_gbs", decode_gbs},
                      {"decode_fraction_of_bandwidth", decode_gbs / read_bw},
                      {"decode_kernel_gbs", kernel_gbs},
                      {"decode_fraction_of_ceiling", decode_gbs / decode_ceiling},
                      {"decode_bound", cache_resident  ? "cache"
                                       : above         ? "above ceiling"
                                       : compute_bound ? "kernel"
                                                       : "dram"}};
  std::cout << j.dump() << std::endl;
  return 0;
}

}  // namespace
}  // namespace tinylora

int main(int argc, char** argv) {
  tinylora::UseWaitPolicy(tinylora::WaitPolicy::kShortSpin, argv);  // as generate and serve
  try {
    return tinylora::Main(argc, argv);
  } catch (const tinylora::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return static_cast<int>(e.code());
  }
}
