#!/usr/bin/env bash
# The main job, from a fresh Debian 12 machine: installs packages, builds, writes a small
# random model with `init` and generates from it with `generate`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
scripts/build.sh >/dev/null
work=${TINYLORA_WORK_DIR:-$HOME/.cache/tinylora/demo}
mkdir -p "$work"
build/tinylora init --preset tiny --out "$work/tiny" --seed 1 --force
build/tinylora inspect "$work/tiny" >/dev/null
build/tinylora generate --model "$work/tiny" --prompt-ids "1 450 4996 17354" --max-new-tokens 32 --seed 1
