# Sourced by the bench/run*.sh scripts: from the repository root, a Release build, and the
# random benchmark models, made once and kept in $dir (${TINYLORA_BENCH_DIR}).
cd "$(dirname "$0")/.."
dir=${TINYLORA_BENCH_DIR:-/tmp/tinylora-bench}
scripts/build.sh >/dev/null
mkdir -p "$dir"
bench_model() {  # name preset [dtype]: $dir/name, written by `init` unless already there
  [ -f "$dir/$1/model.safetensors" ] ||
    build/tinylora init --preset "$2" --dtype "${3:-f32}" --out "$dir/$1" --force >/dev/null
}
bench_fortunes_vocab() {  # $dir/fortunes and a 32 000-piece tokenizer trained on them, $dir/tok32k
  [ -f "$dir/fortunes/en.train.jsonl" ] || build/tinylora data fortunes --out "$dir/fortunes" >/dev/null
  [ -f "$dir/tok32k/tokenizer.model" ] ||
    build/tinylora tokenizer train --data "$dir/fortunes" --out "$dir/tok32k" --vocab-size 32000 \
      >/dev/null
}
wait_port() {  # PORT: until something listens there on loopback (60 s)
  for _ in $(seq 600); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "error: nothing listens on port $1 after 60 s" >&2
  return 1
}
bf16_kernel_here() {  # KERNEL: a BF16 kernel of ops/gemm_bf16.h this CPU has (needs tiny-f32)
  local out
  out=$(TINYLORA_BF16_KERNEL=$1 build/bench/bench_train "$dir/tiny-f32" --steps 0 --bf16 2>&1 || true)
  ! grep -q "lacks it" <<<"$out"
}
