#include "cli/common.h"

#include <omp.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "cli/commands.h"
#include "ops/gemm.h"
#include "ops/gemm_bf16.h"
#include "util/error.h"

namespace tinylora {

std::vector<int> ParseIds(const std::string& text, const std::string& what) {
  std::vector<int> ids;
  const char* p = text.c_str();
  while (*p != '\0') {
    if (std::isspace(static_cast<unsigned char>(*p))) {
      ++p;
      continue;
    }
    char* end = nullptr;
    errno = 0;
    long v = std::strtol(p, &end, 10);
    if (end == p || errno != 0 || v < 0 || v > (1L << 30) ||
        (*end != '\0' && !std::isspace(static_cast<unsigned char>(*end)))) {
      std::string token(p, std::min<size_t>(std::strcspn(p, " \t\r\n"), 32));
      Fail(what + ": '" + token + "' (token " + std::to_string(ids.size() + 1) +
           ") is not a token id");
    }
    ids.push_back(static_cast<int>(v));
    p = end;
  }
  return ids;
}

void SetThreads(int n) {
  if (n <= 0) n = omp_get_max_threads();  // OMP_NUM_THREADS, else every core
  omp_set_num_threads(n);
  SetGemmThreads(n);
}

void AddThreadsOption(CLI::App* cmd, int* threads) {
  cmd->add_option("--threads", *threads, "threads for compute (0 = all cores)")
      ->check(kNonNegative);
}

void AddBf16Flag(CLI::App* cmd, bool* bf16, const std::string& what) {
  cmd->add_flag("--bf16", *bf16,
                what +
                    " in BF16: inputs rounded to BF16, f32 sums (as torch.autocast does to the "
                    "base's matrices). Kernel on this CPU: " +
                    Bf16KernelSummary(BestBf16Kernel()) +
                    " (TINYLORA_BF16_KERNEL=amx|avx512bf16|fallback forces one)");
}

void AddQuantizeFlags(CLI::App* cmd, QuantizeFlags* q) {
  cmd->add_option("--quantize", q->format,
                  "hold the seven projections of every block quantised on load, QLoRA's way "
                  "(q8_0, q4_0: GGML's blocks; nf4: bitsandbytes' NormalFloat4); products use "
                  "their dequantised values in F32. A base stored in that format (a GGUF file, a "
                  "bitsandbytes directory) is kept as stored; one in another block format is "
                  "requantised from its dequantised values (a second rounding)");
  cmd->add_flag("--double-quant", q->double_quant,
                "nf4: quantise the absmaxes through bitsandbytes' 8-bit map, as "
                "bnb_4bit_use_double_quant does");
  cmd->add_flag("--quantize-head", q->head, "quantise the embedding and the head too");
}

QuantizeOnLoad QuantizeFlags::Get(bool bf16) const {
  QuantizeOnLoad q;
  if (format.empty()) {
    if (double_quant || head) Fail("--double-quant and --quantize-head need --quantize");
    return q;
  }
  q.enabled = true;
  q.format = QuantizedFormatNamed(format, "--quantize");
  if (bf16) Fail("--bf16 with --quantize: not supported (quantised matrices multiply in F32)");
  q.double_quant = double_quant;
  q.head = head;
  return q;
}

nlohmann::json QuantizeFlags::ToJson() const {
  if (format.empty()) return nullptr;
  return {{"format", format}, {"double_quant", double_quant}, {"head", head}};
}

namespace {
CLI::Validator Bound(bool strict) {
  return CLI::Validator(
      [strict](std::string& text) -> std::string {
        double v = 0;
        try {
          size_t used = 0;
          v = std::stod(text, &used);
          if (used != text.size()) return "expected a number, got " + text;
        } catch (const std::exception&) {
          return "expected a number, got " + text;
        }
        if (strict ? v > 0 : v >= 0) return "";
        return std::string(strict ? "must be > 0" : "must be ≥ 0") + ", got " + text;
      },
      strict ? "POSITIVE" : "NONNEGATIVE");
}
}  // namespace

const CLI::Validator kPositive = Bound(true), kNonNegative = Bound(false);

double Mean(const std::vector<double>& x) {
  double s = 0;
  for (double v : x) s += v;
  return x.empty() ? 0 : s / static_cast<double>(x.size());
}

double SampleStdDev(const std::vector<double>& x) {
  if (x.size() < 2) return 0;
  const double m = Mean(x);
  double s = 0;
  for (double v : x) s += (v - m) * (v - m);
  return std::sqrt(s / static_cast<double>(x.size() - 1));
}

}  // namespace tinylora
