#!/usr/bin/env bash
# Data-parallel training benchmark (issue: MPI): `mpirun -np 2 tinylora train --threads 1`
# against one process with `--threads 2`, the same global batch, on the fortunes (en), for the
# tiny preset and the tinyllama shape, a rank-8 all-linear LoRA and a depth-8 hard tree of
# rank-8 leaves on q_proj,v_proj.
#   bench/run_mpi.sh [--shapes "tiny tinyllama"] [--steps N]
# Per run: tokens/s over the steps after the first two, the share of step time in GradSync (the
# gradient sum; the mask counts' and losses' sums are a few bytes), and the bytes it sent per
# step. Results: JSON lines on stdout.
set -euo pipefail
source "$(dirname "$0")/common.sh"
shapes="tiny tinyllama"
steps=8
while [ $# -gt 0 ]; do
  case $1 in
    --shapes) shapes=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    *) echo "usage: bench/run_mpi.sh [--shapes L] [--steps N]" >&2; exit 2 ;;
  esac
done
bench_fortunes_vocab
summarise() {  # OUT LABEL...: one JSON line from OUT/metrics.jsonl
  /usr/bin/python3 - "$@" <<'PY'
import json, sys
out, shape, kind, ranks = sys.argv[1:5]
every = [json.loads(l) for l in open(out + "/metrics.jsonl")]
per_step = every[1]["tokens"] - every[0]["tokens"]  # B·T·grad-accum, every step
lines = every[2:]  # the first two steps warm the caches
step_times = [per_step / l["tokens_per_s"] for l in lines]
sync = [l.get("sync_s", 0.0) for l in lines]
print(json.dumps({"shape": shape, "adapter": kind, "ranks": int(ranks), "steps": len(lines),
                  "tokens_per_s": per_step * len(lines) / sum(step_times),
                  "sync_share": sum(sync) / sum(step_times),
                  "sync_bytes_per_step": max([l.get("sync_bytes", 0) for l in lines] or [0])}))
PY
}
for shape in $shapes; do
  case $shape in
    tiny) model=$dir/tiny-vocab; preset=tiny; batch=8; seq=256 ;;
    tinyllama) model=$dir/tinyllama-vocab-f32; preset=tinyllama; batch=2; seq=256 ;;
    *) echo "error: unknown shape $shape" >&2; exit 2 ;;
  esac
  [ -f "$model/model.safetensors" ] ||
    build/tinylora init --preset "$preset" --tokenizer "$dir/tok32k/tokenizer.model" --out "$model" \
      --force >/dev/null
  for kind in lora tree8; do
    # The tree on q_proj,v_proj: all-linear × 256 leaves is 6.4 GB of TinyLlama bank, four
    # times that with its gradients and moments, more than this machine's 24 GB.
    adapter=(--rank 8 --targets all-linear)
    [ "$kind" = tree8 ] && adapter=(--rank 8 --targets q_proj,v_proj --tree-depth 8 --routing hard)
    common=(train --model "$model" --data "$dir/fortunes/en.train.jsonl" --cache-dir "$dir/mpi-cache-$shape"
      --steps "$steps" --batch-size "$batch" --seq-len "$seq" --val-fraction 0 "${adapter[@]}")
    rm -rf "$dir/mpi-one" "$dir/mpi-two"
    build/tinylora "${common[@]}" --out "$dir/mpi-one" --threads 2 >/dev/null 2>"$dir/mpi-one.log"
    summarise "$dir/mpi-one" "$shape" "$kind" 1
    mpirun --allow-run-as-root --oversubscribe -np 2 build/tinylora "${common[@]}" --out "$dir/mpi-two" \
      --threads 1 >/dev/null 2>"$dir/mpi-two.log"
    summarise "$dir/mpi-two" "$shape" "$kind" 2
  done
done
