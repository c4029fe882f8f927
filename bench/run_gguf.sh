#!/usr/bin/env bash
# Side by side with llama.cpp on the same GGUF files (issue: GGUF and bitsandbytes files): the
# `tinyllama` shape's random BF16 base written by `tinylora quantize --gguf` in f32, bf16, q8_0
# and q4_0 (embedding and head kept BF16 in the block formats), then per format, interleaved:
#   llama.cpp  llama-bench -p 512 -n 128 -t THREADS -r REPS     (pp512, tg128)
#   tinylora   bench_forward FILE --prefill 512 --decode 1      (prefill; and --bf16 for bf16)
#              bench_forward FILE --prefill 1 --decode 128      (decode from an empty cache, as
#                                                                tg128; and --int8-activations
#                                                                for q8_0 and q4_0)
#   bench/run_gguf.sh [--rounds N] [--formats "f32 bf16 q8_0 q4_0"]
# llama.cpp is built beside the project, never inside it: ${LLAMA_CPP:-../llama.cpp}/build/bin
# (cmake -B build -DGGML_NATIVE=ON -DLLAMA_CURL=OFF && cmake --build build --target llama-bench).
# Results: JSON lines on stdout (one per run, then one summary per format and round).
set -euo pipefail
source "$(dirname "$0")/common.sh"
threads=$(nproc)
rounds=1
formats="f32 bf16 q8_0 q4_0"
while [ $# -gt 0 ]; do
  case $1 in
    --rounds) rounds=$2; shift 2 ;;
    --formats) formats=$2; shift 2 ;;
    *) echo "usage: bench/run_gguf.sh [--rounds N] [--formats LIST]" >&2; exit 2 ;;
  esac
done
llama=${LLAMA_CPP:-../llama.cpp}/build/bin
[ -x "$llama/llama-bench" ] || { echo "error: no $llama/llama-bench (see the header)" >&2; exit 2; }
bench_model tinyllama-bf16 tinyllama bf16
for f in $formats; do
  [ -f "$dir/tinyllama-$f.gguf" ] || build/tinylora quantize --model "$dir/tinyllama-bf16" \
    --format "$f" --gguf --out "$dir/tinyllama-$f.gguf" >/dev/null
done
for round in $(seq "$rounds"); do
  for f in $formats; do
    file=$dir/tinyllama-$f.gguf
    ll=$("$llama/llama-bench" -m "$file" -p 512 -n 128 -t "$threads" -r 2 -o json \
      2>"$dir/llama-bench.log") || { tail -5 "$dir/llama-bench.log" >&2; exit 1; }
    tl=$(build/bench/bench_forward "$file" --prefill 512 --decode 1 --threads "$threads")
    td=$(build/bench/bench_forward "$file" --prefill 1 --decode 128 --threads "$threads")
    echo "$tl"; echo "$td"
    tlb='{}'
    if [ "$f" = bf16 ]; then
      tlb=$(build/bench/bench_forward "$file" --prefill 512 --decode 1 --threads "$threads" --bf16)
      echo "$tlb"
    fi
    ti8='{}'
    if [ "$f" = q8_0 ] || [ "$f" = q4_0 ]; then
      ti8=$(build/bench/bench_forward "$file" --prefill 1 --decode 128 --threads "$threads" \
        --int8-activations)
      echo "$ti8"
    fi
    /usr/bin/python3 -c '
import json, sys
ll = json.loads(sys.argv[1]); tl = json.loads(sys.argv[2]); tlb = json.loads(sys.argv[3])
td = json.loads(sys.argv[6]); ti8 = json.loads(sys.argv[7])
pp = next(r["avg_ts"] for r in ll if r["n_prompt"] > 0)
tg = next(r["avg_ts"] for r in ll if r["n_gen"] > 0)
row = {"summary": sys.argv[4], "round": int(sys.argv[5]),
       "llama_pp512": round(pp, 2), "llama_tg128": round(tg, 2),
       "tinylora_prefill512": round(tl["prefill_tokens_per_s"], 2),
       "tinylora_decode": round(td["decode_tokens_per_s"], 2),
       "prefill_ratio": round(tl["prefill_tokens_per_s"] / pp, 3),
       "decode_ratio": round(td["decode_tokens_per_s"] / tg, 3),
       "prefill_fraction_of_sgemm": round(tl["prefill_fraction_of_sgemm"], 3),
       "decode_fraction_of_bandwidth": round(td["decode_fraction_of_bandwidth"], 3),
       "decode_kernel_gbs": round(td.get("decode_kernel_gbs", 0), 1),
       "read_gbs": round(td["read_gbs"], 1)}
if ti8:
    row["tinylora_decode_int8"] = round(ti8["decode_tokens_per_s"], 2)
    row["int8_decode_ratio"] = round(ti8["decode_tokens_per_s"] / tg, 3)
    row["int8_kernel_gbs"] = round(ti8["decode_kernel_gbs"], 1)
if tlb:
    row["tinylora_prefill512_bf16"] = round(tlb["prefill_tokens_per_s"], 2)
    row["bf16_prefill_ratio"] = round(tlb["prefill_tokens_per_s"] / pp, 3)
print(json.dumps(row))' "$ll" "$tl" "$tlb" "$f" "$round" "$td" "$ti8"
  done
done
