#!/usr/bin/env bash
# The main job, from a fresh Debian 12 machine: installs packages, builds, and runs the whole
# pipeline on text every Debian system ships (/usr/share/common-licenses): a tokenizer, a small
# base model pretrained for a minute, a tree-routed LoRA on top of it, evaluation with and
# without the adapter, and a generated sample. (The multilingual `quickstart` replaces it later.)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
scripts/build.sh >/dev/null
work=${TINYLORA_WORK_DIR:-$HOME/.cache/tinylora/demo}
data=/usr/share/common-licenses
mkdir -p "$work"
t=build/tinylora
$t tokenizer train --data "$data" --vocab-size 1000 --out "$work/tokenizer" 2>/dev/null
$t pretrain --preset tiny --tokenizer "$work/tokenizer/tokenizer.model" --data "$data" \
  --out "$work/base" --steps 150 --batch-size 8 --seq-len 128 --lr 3e-3 --warmup 15 \
  --val-fraction 0.1 --eval-every 50 --log-every 10
$t train --model "$work/base" --data "$data/GPL-3" --out "$work/tree" --tree-depth 2 --rank 4 \
  --targets all-linear --routing soft-then-hard --steps 40 --batch-size 4 --seq-len 128 \
  --lr 3e-3 --val-fraction 0.1 --log-every 10
$t inspect "$work/tree" 2>/dev/null
echo "held-out loss on the BSD licence, base then base + tree adapter:" >&2
$t eval --model "$work/base" --data "$data/BSD" 2>/dev/null
$t eval --model "$work/base" --adapter "$work/tree" --data "$data/BSD" 2>/dev/null
$t generate --model "$work/base" --adapter "$work/tree" --prompt "This program is free software" \
  --max-new-tokens 40 --temperature 0.7 --seed 1
