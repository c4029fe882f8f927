#!/usr/bin/env bash
# The serving benchmark (issue: tinylora serve): `tinylora serve` on loopback, the load generator
# (bench_serve load) in its own process, prompts of 128 random token ids and 128 generated tokens
# (ignore_eos), greedy, streamed. Per shape and scenario, at each concurrency C, 2·C requests
# (C clients back to back):
#   base      every request on the base
#   lora      every request on one LoRA (rank 8, q_proj,v_proj)
#   16loras   request i on LoRA i mod 16
#   tree      every request on a depth-4 tree adapter (tokens spread over 16 leaves)
#   bench/run_serve.sh [--shapes "tiny tinyllama-f32 tinyllama-bf16"] [--concurrency "1 4 16 64"]
#                      [--scenarios "base lora 16loras tree"] [--requests-per-client 2]
# Results: JSON lines on stdout, one per run, with the shape and scenario added.
set -euo pipefail
source "$(dirname "$0")/common.sh"
shapes="tiny tinyllama-bf16"
concurrency="1 4 16 64"
scenarios="base lora 16loras tree"
per_client=2
while [ $# -gt 0 ]; do
  case $1 in
    --shapes) shapes=$2; shift 2 ;;
    --concurrency) concurrency=$2; shift 2 ;;
    --scenarios) scenarios=$2; shift 2 ;;
    --requests-per-client) per_client=$2; shift 2 ;;
    *) echo "usage: bench/run_serve.sh [--shapes L] [--concurrency L] [--scenarios L]" >&2; exit 2 ;;
  esac
done
port=${TINYLORA_BENCH_PORT:-18181}
max_c=$(tr ' ' '\n' <<<"$concurrency" | sort -n | tail -1)
for shape in $shapes; do
  case $shape in
    tiny) bench_model tiny-f32 tiny; model=$dir/tiny-f32 ;;
    tinyllama-f32) bench_model tinyllama-f32 tinyllama; model=$dir/tinyllama-f32 ;;
    tinyllama-bf16) bench_model tinyllama-bf16 tinyllama bf16; model=$dir/tinyllama-bf16 ;;
    *) echo "error: unknown shape $shape" >&2; exit 2 ;;
  esac
  adapters=$dir/serve-adapters-${shape%%-*}
  if [ ! -d "$adapters/tree_0" ]; then
    build/bench/bench_serve adapters --model "$model" --out "$adapters" --count 16
    build/bench/bench_serve adapters --model "$model" --out "$adapters" --count 1 --depth 4
  fi
  vocab=$(/usr/bin/python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["vocab_size"])' \
    "$model/config.json")
  args=(--model "$model" --port "$port" --ctx 512 --max-sequences "$max_c" --adapter tree=$adapters/tree_0)
  for k in $(seq 0 15); do args+=(--adapter "lora_$k=$adapters/lora_$k"); done
  build/tinylora serve "${args[@]}" 2>"$dir/serve.log" &
  pid=$!
  trap 'kill $pid 2>/dev/null || true' EXIT
  wait_port "$port"
  for scenario in $scenarios; do
    case $scenario in
      base) models=- ;;
      lora) models=lora_0 ;;
      16loras) models=$(seq -s, -f "lora_%g" 0 15) ;;
      tree) models=tree ;;
    esac
    for c in $concurrency; do
      out=$(build/bench/bench_serve load --port "$port" --concurrency "$c" \
        --requests $((c * per_client)) --vocab "$vocab" --models "$models" || true)
      /usr/bin/python3 -c 'import json,sys; r=json.loads(sys.argv[1]); r["shape"]=sys.argv[2]; r["scenario"]=sys.argv[3]; print(json.dumps(r))' \
        "$out" "$shape" "$scenario"
    done
  done
  kill -TERM $pid
  wait $pid
  trap - EXIT
done
