#!/usr/bin/env bash
# A training run on a busy machine (issue: --bf16 on every CPU, busy machines): the tiny
# preset's LoRA step, idle and with two CPU-bound processes (shell busy loops) running beside
# it, under tinylora's wait policy (OpenMP passive: util/wait_policy.h) and under libgomp's
# default (GOMP_SPINCOUNT=300000, which also keeps tinylora from choosing). Rounds interleave
# the two; prints each measurement and the medians' ratios busy/idle.
#   bench/run_busy.sh [ROUNDS]        (default 3; about 40 s per round)
set -euo pipefail
source "$(dirname "$0")/common.sh"
rounds=${1:-3}
bench_model tiny-f32 tiny
run() {  # env...: tokens/s of a 12-step tiny LoRA run
  env "$@" build/bench/bench_train "$dir/tiny-f32" --batch 4 --seq 256 --targets q_proj,v_proj \
    --steps 12 --warmup 2 --threads "$(nproc)" 2>/dev/null |
    /usr/bin/python3 -c "import json, sys; print(round(json.load(sys.stdin)['tokens_per_s']))"
}
hogs=()
start_hogs() { for _ in 1 2; do sh -c 'while :; do :; done' & hogs+=($!); done; sleep 1; }
stop_hogs() { kill "${hogs[@]}" 2>/dev/null || true; wait "${hogs[@]}" 2>/dev/null || true; hogs=(); }
trap stop_hogs EXIT
declare -A got
for ((r = 1; r <= rounds; r++)); do
  for policy in passive spin; do
    if [ "$policy" = spin ]; then envs=(GOMP_SPINCOUNT=300000); else envs=(TINYLORA_BENCH=1); fi
    got[$policy-idle]+=" $(run "${envs[@]}")"
    start_hogs
    got[$policy-busy]+=" $(run "${envs[@]}")"
    stop_hogs
  done
  echo "round $r: passive idle${got[passive-idle]##* } busy${got[passive-busy]##* }," \
    "libgomp default idle${got[spin-idle]##* } busy${got[spin-busy]##* } tokens/s" >&2
done
/usr/bin/python3 - "${got[passive-idle]}" "${got[passive-busy]}" "${got[spin-idle]}" \
  "${got[spin-busy]}" <<'PY'
import json, statistics, sys
pi, pb, si, sb = ([int(x) for x in a.split()] for a in sys.argv[1:])
m = statistics.median
print(json.dumps({"passive_idle": pi, "passive_busy": pb, "default_idle": si, "default_busy": sb,
                  "passive_busy_over_idle": round(m(pb) / m(pi), 2),
                  "default_busy_over_idle": round(m(sb) / m(si), 2),
                  "passive_idle_over_default_idle": round(m(pi) / m(si), 3)}))
PY
