#!/usr/bin/env bash
# LoRA training benchmark (issue: training engine): tinylora and the PyTorch-eager peer
# (bench/pytorch_lora_train.py, Debian's python3-torch) on the same shapes, machine and thread
# count, one after the other. tinylora's figures come with the sgemm ceiling of the same run
# (and the BF16 kernel's GEMM, for --bf16 rows).
#   bench/run_train.sh [--quick]     (--quick: the tiny preset only)
# Rows: f32 base (both engines in float32) and BF16 base (tinylora `--bf16`: base products in
# BF16, one row per BF16 kernel this CPU has (amx, avx512bf16, fallback: ops/gemm_bf16.h);
# PyTorch `--bf16`: BF16 matrices under autocast). Needs /usr/bin/python3 with
# torch for the peer (apt-get install python3-torch). Results: JSON lines on stdout, tables on
# stderr, and one summary line per row: "ratio" is tinylora's tokens/s over PyTorch's.
set -euo pipefail
source "$(dirname "$0")/common.sh"
threads=$(nproc)
bench_model tiny-f32 tiny
run() {  # model preset batch targets steps [--bf16]
  local ours peer=""
  ours=$(build/bench/bench_train "$dir/$1" --batch "$3" --seq 256 --targets "$4" --steps "$5" \
    --threads "$threads" ${6:-})
  echo "$ours"
  if /usr/bin/python3 -c "import torch" 2>/dev/null; then
    peer=$(/usr/bin/python3 bench/pytorch_lora_train.py --preset "$2" --batch-size "$3" \
      --seq-len 256 --targets "$4" --steps "$5" --threads "$threads" ${6:-} 2>/dev/null)
    echo "$peer"
  fi
  /usr/bin/python3 - "$ours" "$peer" <<'PY'
import json, sys
o = json.loads(sys.argv[1]); p = json.loads(sys.argv[2]) if sys.argv[2] else None
row = {"summary": o["mode"], "model": o["model"].rsplit("/", 1)[-1], "batch": o["batch"],
       "bf16": o["bf16"] and o["bf16_kernel"], "tinylora_tokens_per_s": round(o["tokens_per_s"], 1),
       "tinylora_rss_mb": round(o["peak_rss_mb"]),
       "fraction_of_sgemm": round(o["fraction_of_sgemm"], 2)}
if o["bf16"]:
    row["fraction_of_bf16_gemm"] = round(o["gflops"] / o["bf16_gemm_gflops"], 2)
if p:
    row.update(pytorch_tokens_per_s=p["tokens_per_s"], pytorch_rss_mb=round(p["peak_rss_mb"]),
               ratio=round(o["tokens_per_s"] / p["tokens_per_s"], 2))
print(json.dumps(row))
PY
}
run tiny-f32 tiny 1 q_proj,v_proj 8
run tiny-f32 tiny 4 q_proj,v_proj 8
run tiny-f32 tiny 4 all-linear 8
[ "${1:-}" = "--quick" ] && exit 0
bench_model tinyllama-f32 tinyllama
bench_model tinyllama-bf16 tinyllama bf16
for batch in 1 4; do
  for targets in q_proj,v_proj all-linear; do
    run tinyllama-f32 tinyllama "$batch" "$targets" 2
    for kernel in amx avx512bf16 fallback; do
      if ! bf16_kernel_here "$kernel"; then
        echo "bf16 kernel $kernel: not on this CPU" >&2
        continue
      fi
      TINYLORA_BF16_KERNEL=$kernel run tinyllama-bf16 tinyllama "$batch" "$targets" 5 --bf16
    done
  done
done
build/bench/bench_train "$dir/tinyllama-f32" --batch 4 --seq 256 --targets all-linear --steps 2 \
  --threads "$threads" --checkpoint-activations
build/bench/bench_train "$dir/tinyllama-bf16" --batch 4 --seq 256 --targets all-linear --steps 2 \
  --threads "$threads" --checkpoint-activations --bf16  # the best kernel
