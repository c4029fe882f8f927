#!/usr/bin/env bash
# Installs the Debian 12 packages tinylora builds and tests with. Idempotent: when every
# package is already installed it does nothing (no apt-get update).
set -euo pipefail

PACKAGES=(
  build-essential cmake pkg-config git
  libopenblas-openmp-dev libsentencepiece-dev nlohmann-json3-dev libcli11-dev libhwy-dev libdnnl-dev
  libcpp-httplib-dev libopenmpi-dev openmpi-bin
  libgtest-dev libbenchmark-dev
  clang libclang-rt-14-dev clang-format
  fortunes fortunes-de fortunes-es fortunes-it
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
