#!/usr/bin/env bash
# Large tree banks (issue: tree-routed LoRA, "large banks"): a training step's cost and memory
# as the bank grows from one leaf to 2^10 (TinyLlama's shape, q_proj,v_proj) and 2^12 (the
# tiny preset, all-linear), and decode speed with the bank. Hard routing, rank 8, random
# bases, a fresh batch each step, 2 threads; every depth in one run. Steps are timed after
# untimed warm-up steps (the first steps also create the optimizer state of new leaves).
#   bench/run_bank.sh [--quick]    (--quick: the tiny preset only)
set -euo pipefail
source "$(dirname "$0")/common.sh"
bench_model tiny-f32 tiny
runs=("tiny-f32 all-linear 0 4 8 10 12")
if [ "${1:-}" != "--quick" ]; then
  bench_model tinyllama-f32 tinyllama
  runs+=("tinyllama-f32 q_proj,v_proj 0 4 8 10")
fi
for run in "${runs[@]}"; do
  read -r m targets depths <<<"$run"
  if [ "$m" = tiny-f32 ]; then train=(--batch 4 --warmup 8 --steps 3); decode=(--prefill 64 --decode 200);
  else train=(--batch 1 --warmup 5 --steps 2); decode=(--prefill 32 --decode 24); fi
  for depth in $depths; do
    build/bench/bench_train "$dir/$m" "${train[@]}" --seq 256 --rank 8 --tree-depth "$depth" \
      --targets "$targets" 2>/dev/null |
      sed "s/^{/{\"bench\":\"train\",\"targets\":\"$targets\",\"tree_depth\":$depth,/"
    build/bench/bench_forward "$dir/$m" "${decode[@]}" --lora-rank 8 --tree-depth "$depth" \
      --targets "$targets" 2>/dev/null |
      sed "s/^{/{\"bench\":\"decode\",\"targets\":\"$targets\",\"tree_depth\":$depth,/"
  done
done
