#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine: installs packages, builds, and runs
#   1. the unit, fixture and CLI tests (Release build),
#   2. the same tests under AddressSanitizer + UndefinedBehaviorSanitizer,
#   3. the safetensors and GGUF parser fuzzers for a bounded time each,
#   4. a clang-format check.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
jobs=$(nproc)
fuzz_seconds=${TINYLORA_FUZZ_SECONDS:-30}

echo "== release build and tests" >&2
scripts/build.sh
ctest --test-dir build --output-on-failure

echo "== sanitizer build and tests (ASan + UBSan)" >&2
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DTINYLORA_SANITIZE=ON -DTINYLORA_BENCH=OFF >/dev/null
cmake --build build-asan -j"$jobs"
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build-asan --output-on-failure

cmake -S . -B build-fuzz -DCMAKE_CXX_COMPILER=clang++ -DTINYLORA_FUZZ=ON -DTINYLORA_BENCH=OFF \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build-fuzz -j"$jobs" --target fuzz_safetensors fuzz_gguf
for target in safetensors gguf; do  # fuzz/corpus (safetensors), fuzz/corpus-gguf
  echo "== fuzzing the $target parser for ${fuzz_seconds}s" >&2
  seeds=fuzz/corpus; [ "$target" = gguf ] && seeds=fuzz/corpus-gguf
  mkdir -p "build-fuzz/corpus-$target"
  cp "$seeds"/* "build-fuzz/corpus-$target/"
  "build-fuzz/fuzz/fuzz_$target" -max_total_time="$fuzz_seconds" -max_len=4096 \
    -print_final_stats=1 "build-fuzz/corpus-$target" 2> "build-fuzz/fuzz-$target.log" ||
    { tail -40 "build-fuzz/fuzz-$target.log"; exit 1; }
  grep -E "stat::number_of_executed_units" "build-fuzz/fuzz-$target.log" >&2
done

echo "== clang-format" >&2
bad=$(git ls-files '*.cc' '*.h' | xargs clang-format --dry-run -Werror 2>&1 | grep -c "error:" || true)
if [ "$bad" != "0" ]; then
  git ls-files '*.cc' '*.h' | xargs clang-format --dry-run -Werror 2>&1 | head -20 || true
  echo "clang-format: $bad problems; run: git ls-files '*.cc' '*.h' | xargs clang-format -i" >&2
  exit 1
fi
echo "all checks passed" >&2
