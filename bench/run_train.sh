#!/usr/bin/env bash
# LoRA training benchmark (issue: training engine): tinylora and the PyTorch-eager peer
# (bench/pytorch_lora_train.py, Debian's python3-torch) on the same shapes, machine and thread
# count, one after the other. tinylora's figures come with the sgemm ceiling of the same run.
#   bench/run_train.sh [--quick]     (--quick: the tiny preset only)
# Needs the models of bench/run.sh (it creates them) and /usr/bin/python3 with torch for the
# peer (apt-get install python3-torch). Results: JSON lines on stdout, tables on stderr.
set -euo pipefail
source "$(dirname "$0")/common.sh"
threads=$(nproc)
bench_model tiny-f32 tiny
run() {  # model preset batch targets
  build/bench/bench_train "$dir/$1" --batch "$3" --seq 256 --targets "$4" --steps "${5:-3}" --threads "$threads"
  if /usr/bin/python3 -c "import torch" 2>/dev/null; then
    /usr/bin/python3 bench/pytorch_lora_train.py --preset "$2" --batch-size "$3" --seq-len 256 \
      --targets "$4" --steps "${5:-3}" --threads "$threads" 2>/dev/null
  fi
}
run tiny-f32 tiny 1 q_proj,v_proj 8
run tiny-f32 tiny 4 q_proj,v_proj 8
run tiny-f32 tiny 4 all-linear 8
[ "${1:-}" = "--quick" ] && exit 0
bench_model tinyllama-f32 tinyllama
run tinyllama-f32 tinyllama 1 q_proj,v_proj 2
run tinyllama-f32 tinyllama 1 all-linear 2
run tinyllama-f32 tinyllama 4 q_proj,v_proj 2
run tinyllama-f32 tinyllama 4 all-linear 2
build/bench/bench_train "$dir/tinyllama-f32" --batch 4 --seq 256 --targets all-linear --steps 2 \
  --threads "$threads" --checkpoint-activations
