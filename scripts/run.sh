#!/usr/bin/env bash
# The main job, from a fresh Debian 12 machine: installs packages, builds, trains a tokenizer
# on the licence texts every Debian system ships, writes a small random model with `init`,
# and generates from it (random weights: the text is noise until training lands).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
scripts/build.sh >/dev/null
work=${TINYLORA_WORK_DIR:-$HOME/.cache/tinylora/demo}
mkdir -p "$work"
build/tinylora tokenizer train --data /usr/share/common-licenses --vocab-size 1000 --out "$work/tokenizer" 2>/dev/null
build/tinylora init --preset tiny --tokenizer "$work/tokenizer/tokenizer.model" --out "$work/tiny" --seed 1 --force
build/tinylora inspect "$work/tiny" 2>/dev/null
build/tinylora generate --model "$work/tiny" --prompt "This program is free software" --max-new-tokens 32 --seed 1
build/tinylora eval --model "$work/tiny" --data /usr/share/common-licenses/BSD
