#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine: installs packages, builds, and runs
#   1. the unit, fixture and CLI tests (Release build),
#   2. the same tests under AddressSanitizer + UndefinedBehaviorSanitizer,
#   3. the safetensors header fuzzer for a bounded time,
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

echo "== fuzzing the safetensors header parser for ${fuzz_seconds}s" >&2
cmake -S . -B build-fuzz -DCMAKE_CXX_COMPILER=clang++ -DTINYLORA_FUZZ=ON -DTINYLORA_BENCH=OFF \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build-fuzz -j"$jobs" --target fuzz_safetensors
mkdir -p build-fuzz/corpus
cp fuzz/corpus/* build-fuzz/corpus/
build-fuzz/fuzz/fuzz_safetensors -max_total_time="$fuzz_seconds" -max_len=4096 -print_final_stats=1 \
  build-fuzz/corpus 2> build-fuzz/fuzz.log || { tail -40 build-fuzz/fuzz.log; exit 1; }
grep -E "stat::number_of_executed_units" build-fuzz/fuzz.log >&2

echo "== clang-format" >&2
bad=$(git ls-files '*.cc' '*.h' | xargs clang-format --dry-run -Werror 2>&1 | grep -c "error:" || true)
if [ "$bad" != "0" ]; then
  git ls-files '*.cc' '*.h' | xargs clang-format --dry-run -Werror 2>&1 | head -20 || true
  echo "clang-format: $bad problems; run: git ls-files '*.cc' '*.h' | xargs clang-format -i" >&2
  exit 1
fi
echo "all checks passed" >&2
