#!/usr/bin/env bash
# Quantized-base benchmark (issue: quantized frozen base): the `tinyllama` shape's BF16 random
# base held as stored and under each `--quantize` format, one after the other in one run.
#   forward: prefill 512 (GFLOP/s over sgemm at the model's shapes: the quantised matrices are
#            dequantised into sgemm's panels) and decode (bytes held per token, i.e. read,
#            over the read-bandwidth ceiling of the same run);
#   training: a LoRA step, batch 1, seq 256, all-linear, --checkpoint-activations: tokens/s
#            and peak RSS, against the BF16 base (F32 products, the same GEMM path) and the
#            BF16 base under --bf16 (the BF16 kernel this CPU has).
#   bench/run_quant.sh [--forward-only|--train-only]
# Results: JSON lines on stdout, tables on stderr, one summary line per row.
set -euo pipefail
source "$(dirname "$0")/common.sh"
threads=$(nproc)
bench_model tinyllama-bf16 tinyllama bf16
m=$dir/tinyllama-bf16
formats=("" "--quantize q8_0" "--quantize q4_0" "--quantize nf4" "--quantize nf4 --double-quant")
summary() {  # JSON line of bench_forward or bench_train -> one summary line
  /usr/bin/python3 -c '
import json, sys
o = json.loads(sys.argv[1]); keep = sys.argv[2].split(",")
print(json.dumps({"summary": sys.argv[3] or "bf16 as stored", **{k: round(o[k], 3) if isinstance(o[k], float) else o[k] for k in keep}}))' "$@"
}
if [ "${1:-}" != "--train-only" ]; then
  for f in "${formats[@]}"; do
    # shellcheck disable=SC2086
    out=$(build/bench/bench_forward "$m" --prefill 512 --decode 32 --threads "$threads" $f)
    echo "$out"
    summary "$out" dtype,prefill_tokens_per_s,prefill_fraction_of_sgemm,decode_tokens_per_s,decode_gbs,decode_fraction_of_bandwidth,read_gbs "$f"
  done
fi
[ "${1:-}" = "--forward-only" ] && exit 0
for f in "${formats[@]}" "--bf16"; do
  # shellcheck disable=SC2086
  out=$(build/bench/bench_train "$m" --batch 1 --seq 256 --targets all-linear --steps 3 \
    --checkpoint-activations --threads "$threads" $f)
  echo "$out"
  summary "$out" tokens_per_s,peak_rss_mb,fraction_of_sgemm,sgemm_gflops "$f"
done
