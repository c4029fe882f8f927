#!/usr/bin/env bash
# Forward-pass benchmark (issue: engine foundation). Writes random models with `init` and
# measures prefill and decode against this machine's ceilings, measured in the same run.
#   bench/run.sh [--threads N]      (default: all cores)
# Models go to ${TINYLORA_BENCH_DIR:-/tmp/tinylora-bench} (about 7 GB for the tinyllama pair).
# Results: one JSON line per model on stdout, a table on stderr.
set -euo pipefail
source "$(dirname "$0")/common.sh"
threads=$(nproc)
[ "${1:-}" = "--threads" ] && threads=$2
bench_model tiny-f32 tiny
bench_model tinyllama-f32 tinyllama
bench_model tinyllama-bf16 tinyllama bf16
build/bench/bench_forward "$dir/tiny-f32" --prefill 256 --decode 128 --threads "$threads"
build/bench/bench_forward "$dir/tinyllama-f32" --prefill 512 --decode 16 --threads "$threads"
build/bench/bench_forward "$dir/tinyllama-bf16" --prefill 512 --decode 16 --threads "$threads"
# --bf16: the prefill through each BF16 kernel this CPU has (ops/gemm_bf16.h)
for kernel in amx avx512bf16 fallback; do
  bf16_kernel_here "$kernel" || { echo "bf16 kernel $kernel: not on this CPU" >&2; continue; }
  TINYLORA_BF16_KERNEL=$kernel build/bench/bench_forward "$dir/tinyllama-bf16" --prefill 512 \
    --decode 16 --threads "$threads" --bf16
done
