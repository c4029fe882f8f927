#!/usr/bin/env bash
# The serving benchmark side by side with llama.cpp's llama-server (issue: tinylora serve). One
# base (the tinyllama shape, random weights, a 32000-piece SentencePiece vocabulary trained on the
# fortunes, since llama-server needs a vocabulary) written by `tinylora quantize --gguf`, and 16
# rank-8 q_proj,v_proj LoRAs: tinylora serves the PEFT directories, llama-server their
# `tinylora export-lora` GGUF files (--lora-init-without-apply; a request names its LoRA by id).
# Both serve the same GGUF base with 2 threads, prompts of 128 random token ids, 128 generated
# tokens (ignore_eos), greedy, streamed, C clients with 2·C requests:
#   base      every request on the base
#   lora      every request on one LoRA
#   16loras   request i on LoRA i mod 16
#   bench/run_serve_peer.sh --llama-server PATH [--format bf16|f32] [--concurrency "1 16"]
#                           [--scenarios "base lora 16loras"] [--requests-per-client 2]
# Results: JSON lines on stdout, one per run, with the format and scenario added.
set -euo pipefail
source "$(dirname "$0")/common.sh"
llama_server=""
format=bf16
concurrency="1 16"
scenarios="base lora 16loras"
per_client=2
while [ $# -gt 0 ]; do
  case $1 in
    --llama-server) llama_server=$2; shift 2 ;;
    --format) format=$2; shift 2 ;;
    --concurrency) concurrency=$2; shift 2 ;;
    --scenarios) scenarios=$2; shift 2 ;;
    --requests-per-client) per_client=$2; shift 2 ;;
    *) echo "usage: bench/run_serve_peer.sh --llama-server PATH [--format F] [--concurrency L] [--scenarios L]" >&2; exit 2 ;;
  esac
done
[ -x "$llama_server" ] || { echo "error: --llama-server PATH: the llama-server binary to compare with" >&2; exit 2; }
port=${TINYLORA_BENCH_PORT:-18181}
max_c=$(tr ' ' '\n' <<<"$concurrency" | sort -n | tail -1)

# The base with a vocabulary, its GGUF file, and the adapters in both layouts.
bench_fortunes_vocab
base=$dir/tinyllama-vocab-bf16
[ -f "$base/model.safetensors" ] ||
  build/tinylora init --preset tinyllama --tokenizer "$dir/tok32k/tokenizer.model" --dtype bf16 \
    --out "$base" --force >/dev/null
gguf=$dir/tinyllama-vocab-$format.gguf
[ -f "$gguf" ] || build/tinylora quantize --model "$base" --format "$format" --gguf --out "$gguf" >/dev/null
adapters=$dir/serve-adapters-vocab
[ -d "$adapters/lora_15" ] || build/bench/bench_serve adapters --model "$base" --out "$adapters" --count 16
for k in $(seq 0 15); do
  [ -f "$adapters/lora_$k.gguf" ] ||
    build/tinylora export-lora --model "$base" --adapter "$adapters/lora_$k" --out "$adapters/lora_$k.gguf" >/dev/null
done

run_load() {  # SCENARIO C [bench_serve flags]: one JSON line
  local scenario=$1 c=$2 models
  shift 2
  case $scenario in
    base) models=- ;;
    lora) models=${LORA_0} ;;
    16loras) models=${LORAS_16} ;;
  esac
  out=$(build/bench/bench_serve load --port "$port" --concurrency "$c" --requests $((c * per_client)) \
    --vocab 32000 --models "$models" "$@" || true)
  /usr/bin/python3 -c 'import json,sys; r=json.loads(sys.argv[1]); r["format"]=sys.argv[2]; r["scenario"]=sys.argv[3]; print(json.dumps(r))' \
    "$out" "$format" "$scenario"
}

# tinylora serve: adapters by name.
args=(--model "$gguf" --port "$port" --ctx 512 --max-sequences "$max_c")
for k in $(seq 0 15); do args+=(--adapter "lora_$k=$adapters/lora_$k"); done
build/tinylora serve "${args[@]}" 2>"$dir/serve.log" &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
wait_port "$port"
LORA_0=lora_0 LORAS_16=$(seq -s, -f "lora_%g" 0 15)
for scenario in $scenarios; do
  for c in $concurrency; do run_load "$scenario" "$c"; done
done
kill -TERM $pid
wait $pid
trap - EXIT

# llama-server: the same base and adapters, one slot per client, 512 positions each.
args=(-m "$gguf" --port "$port" -t 2 -tb 2 -np "$max_c" -c $((max_c * 512)) --lora-init-without-apply)
for k in $(seq 0 15); do args+=(--lora "$adapters/lora_$k.gguf"); done
"$llama_server" "${args[@]}" >"$dir/llama-server.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
wait_port "$port"
for _ in $(seq 600); do  # the port opens before the model is loaded: /health says 200 when ready
  (exec 3<>"/dev/tcp/127.0.0.1/$port" && printf 'GET /health HTTP/1.0\r\n\r\n' >&3 &&
    head -1 <&3 | grep -q ' 200') 2>/dev/null && break
  sleep 0.2
done
LORA_0=0 LORAS_16=$(seq -s, 0 15)
for scenario in $scenarios; do
  for c in $concurrency; do run_load "$scenario" "$c" --llama-server; done
done
kill -TERM $pid
wait $pid || true
trap - EXIT
