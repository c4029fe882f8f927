#!/usr/bin/env bash
# Tree-LoRA cost against plain LoRA (issue: tree-routed LoRA), interleaved in one run so the
# machine's drift hits both alike: decode tokens/s with a depth-4 tree vs rank-r LoRA, and
# hard-routing training tokens/s with depth 4 vs LoRA. Random adapters on random bases.
#   bench/run_tree.sh [--quick]    (--quick: the tiny preset only)
set -euo pipefail
source "$(dirname "$0")/common.sh"
bench_model tiny-f32 tiny
models="tiny-f32"
if [ "${1:-}" != "--quick" ]; then
  bench_model tinyllama-f32 tinyllama
  models="tiny-f32 tinyllama-f32"
fi
for m in $models; do
  if [ "$m" = tiny-f32 ]; then decode=(--prefill 64 --decode 400); train=(--batch 4 --steps 6);
  else decode=(--prefill 256 --decode 16); train=(--batch 1 --steps 2); fi
  for targets in q_proj,v_proj all-linear; do
    for round in 1 2; do
      for depth in 0 4; do
        build/bench/bench_forward "$dir/$m" "${decode[@]}" --lora-rank 8 --tree-depth "$depth" \
          --targets "$targets" 2>/dev/null |
          sed "s/^{/{\"bench\":\"decode\",\"targets\":\"$targets\",\"tree_depth\":$depth,\"round\":$round,/"
        build/bench/bench_train "$dir/$m" "${train[@]}" --seq 256 --rank 8 --tree-depth "$depth" \
          --targets "$targets" 2>/dev/null |
          sed "s/^{/{\"bench\":\"train\",\"tree_depth\":$depth,\"round\":$round,/"
      done
    done
  done
done
