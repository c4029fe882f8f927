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
