#!/usr/bin/env bash
# The experiment tinylora exists for (DESIGN.md §2): at equal per-token inference cost, does a
# tree of 2^d rank-r leaves reach lower held-out loss than one rank-r LoRA, approaching a
# rank-2^d·r LoRA? On Debian's fortune collections (English, German, Spanish, Italian):
#   1. a tokenizer on all languages, a small base pretrained on English only;
#   2. with the same steps, data and seed on the mixed languages:
#        (a) LoRA rank r   (b) tree depth d rank r, hard   (c) tree, soft-then-hard
#        (d) LoRA rank 2^d·r
#   3. held-out loss per language, trainable and active parameters, training and decode tokens/s.
# Usage: bench/tree_experiment.sh [--depth D] [--rank R] [--steps N] [--base-steps N]
# Defaults finish in under 10 minutes on 2 cores. Work files: ${TINYLORA_EXPERIMENT_DIR}.
set -euo pipefail
cd "$(dirname "$0")/.."
depth=2 rank=8 steps=300 base_steps=400
while [ $# -gt 0 ]; do
  case "$1" in
    --depth) depth=$2; shift 2 ;;
    --rank) rank=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --base-steps) base_steps=$2; shift 2 ;;
    *) echo "error: unknown flag $1" >&2; exit 2 ;;
  esac
done
work=${TINYLORA_EXPERIMENT_DIR:-/tmp/tinylora-tree-experiment}
t=build/tinylora
bash scripts/setup.sh
scripts/build.sh >/dev/null
mkdir -p "$work"
langs="en de es it"
field() { sed -E "s/.*\"$1\":([-0-9.eE+]+).*/\1/"; }  # a number from a JSON line

$t data fortunes --out "$work/data" >/dev/null
cat "$work"/data/{en,de,es,it}.train.jsonl > "$work/mixed.train.jsonl"
cat "$work"/data/{en,de,es,it}.val.jsonl > "$work/mixed.val.jsonl"
[ -f "$work/tok/tokenizer.model" ] ||
  $t tokenizer train --data "$work/mixed.train.jsonl" --vocab-size 2000 --out "$work/tok" 2>/dev/null >/dev/null
if [ ! -f "$work/base/model.safetensors" ]; then
  echo "pretraining the base on English ($base_steps steps)" >&2
  $t pretrain --preset tiny --tokenizer "$work/tok/tokenizer.model" --data "$work/data/en.train.jsonl" \
    --val-data "$work/data/en.val.jsonl" --out "$work/base" --steps "$base_steps" --batch-size 8 \
    --seq-len 128 --lr 3e-3 --warmup 40 --log-every 50 --eval-batches 4 >/dev/null
fi

big=$(( (1 << depth) * rank ))
common=(--model "$work/base" --data "$work/mixed.train.jsonl" --val-data "$work/mixed.val.jsonl"
        --steps "$steps" --batch-size 8 --seq-len 128 --lr 3e-3 --warmup 20 --seed 1
        --targets all-linear --log-every 50 --eval-batches 4)
declare -A args=(
  [a_lora_r$rank]="--rank $rank --alpha $((2 * rank))"
  [b_tree_d${depth}_hard]="--rank $rank --alpha $((2 * rank)) --tree-depth $depth --routing hard --balance 0.01"
  [c_tree_d${depth}_soft_then_hard]="--rank $rank --alpha $((2 * rank)) --tree-depth $depth --routing soft-then-hard --balance 0.01 --hardening 0.01"
  [d_lora_r$big]="--rank $big --alpha $((2 * big))"
)
printf "%-26s" "variant" >&2; for l in $langs; do printf "%9s" "$l" >&2; done
printf "%12s %12s %10s %10s\n" "trainable" "active/tok" "train t/s" "decode t/s" >&2
row() {  # name adapter-dir-or-empty trainable active train_tps
  local name=$1 adapter=$2
  printf "%-26s" "$name" >&2
  local json="{\"variant\":\"$name\""
  for l in $langs; do
    local extra=(); [ -n "$adapter" ] && extra=(--adapter "$adapter")
    local loss
    loss=$($t eval --model "$work/base" "${extra[@]}" --data "$work/data/$l.val.jsonl" --context 128 2>/dev/null | field loss)
    printf "%9.4f" "$loss" >&2
    json+=",\"loss_$l\":$loss"
  done
  local extra=(); [ -n "$adapter" ] && extra=(--adapter "$adapter")
  local dec
  dec=$($t generate --model "$work/base" "${extra[@]}" --prompt "The" --max-new-tokens 64 --greedy 2>&1 >/dev/null |
        sed -E 's/.*generated [0-9]+ tokens, ([0-9.]+) tokens.s.*/\1/')
  printf "%12s %12s %10s %10s\n" "$3" "$4" "$5" "$dec" >&2
  echo "$json,\"trainable\":$3,\"active_per_token\":$4,\"train_tokens_per_s\":$5,\"decode_tokens_per_s\":$dec}"
}
row "base (no adapter)" "" 0 0 0
for name in $(printf "%s\n" "${!args[@]}" | sort); do
  out="$work/$name"
  # shellcheck disable=SC2086
  summary=$($t train "${common[@]}" ${args[$name]} --out "$out" 2>/dev/null)
  info=$($t inspect "$out" 2>/dev/null)
  row "$name" "$out" "$(echo "$info" | field params)" "$(echo "$info" | field active_params_per_token)" \
    "$(printf "%.0f" "$(echo "$summary" | field tokens_per_s)")"
done
