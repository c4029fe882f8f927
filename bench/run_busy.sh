#!/usr/bin/env bash
# A training run on a busy machine (issue: --bf16 on every CPU, busy machines): the tiny
# preset's LoRA step, idle and with two CPU-bound processes (shell busy loops) running beside
# it, under three OpenMP wait policies, interleaved:
#   passive   OMP_WAIT_POLICY=PASSIVE (threads sleep at once: train's own choice)
#   spin3000  GOMP_SPINCOUNT=3000 (a short spin: generate's and serve's, util/wait_policy.h)
#   default   libgomp's default (GOMP_SPINCOUNT=300000, about 3 ms)
# Setting either variable keeps the binaries from choosing. Prints each measurement, then one
# JSON line: the tokens/s of every run and the medians' ratios busy/idle per policy.
#   bench/run_busy.sh [ROUNDS]        (default 3; about 60 s per round)
set -euo pipefail
source "$(dirname "$0")/common.sh"
rounds=${1:-3}
bench_model tiny-f32 tiny
run() {  # env...: tokens/s of a 12-step tiny LoRA run
  env "$@" build/bench/bench_train "$dir/tiny-f32" --batch 4 --seq 256 --targets q_proj,v_proj \
    --steps 12 --warmup 2 --threads "$(nproc)" 2>/dev/null | tail -1 |
    /usr/bin/python3 -c "import json, sys; print(round(json.load(sys.stdin)['tokens_per_s']))"
}
hogs=()
start_hogs() { for _ in 1 2; do sh -c 'while :; do :; done' & hogs+=($!); done; sleep 1; }
stop_hogs() { kill "${hogs[@]}" 2>/dev/null || true; wait "${hogs[@]}" 2>/dev/null || true; hogs=(); }
trap stop_hogs EXIT
declare -A env_of=([passive]=TINYLORA_BENCH=1 [spin3000]=GOMP_SPINCOUNT=3000
  [default]=GOMP_SPINCOUNT=300000)
policies="passive spin3000 default"
declare -A got
for ((r = 1; r <= rounds; r++)); do
  for p in $policies; do
    got[$p-idle]+=" $(run "${env_of[$p]}")"
    start_hogs
    got[$p-busy]+=" $(run "${env_of[$p]}")"
    stop_hogs
    echo "round $r: $p idle${got[$p-idle]##* } busy${got[$p-busy]##* } tokens/s" >&2
  done
done
args=()
for p in $policies; do args+=("$p" "${got[$p-idle]}" "${got[$p-busy]}"); done
/usr/bin/python3 - "${args[@]}" <<'PY'
import json, statistics, sys
m, out = statistics.median, {}
for k in range(1, len(sys.argv), 3):
    p, idle, busy = sys.argv[k], [int(x) for x in sys.argv[k + 1].split()], [int(x) for x in sys.argv[k + 2].split()]
    out[p + "_idle"], out[p + "_busy"] = idle, busy
    out[p + "_busy_over_idle"] = round(m(busy) / m(idle), 2)
print(json.dumps(out))
PY
