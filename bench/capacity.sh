#!/usr/bin/env bash
# The knowledge-capacity experiment (issue: the seed's claim, measured in bits): LoRA ranks,
# trees of rank-r leaves and their dense comparators trained on synthetic biographies, bits of
# knowledge stored per parameter. A wrapper over `tinylora experiment capacity` that keeps its
# stages under the bench directory, so a second run (or more seeds) reuses what is built.
#   bench/capacity.sh [--seeds K] [--scale small|large] [other experiment capacity flags]
# The default, one seed at scale small, takes about 50 minutes on 2 cores; --seeds 3 about
# three times that: run it in the background. The report (report.md, report.json,
# capacity.svg) goes to $dir/capacity/runs/TIMESTAMP; its path is on stdout.
set -euo pipefail
source "$(dirname "$0")/common.sh"
build/tinylora experiment capacity --work-dir "$dir/capacity" "$@"
