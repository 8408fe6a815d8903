#!/usr/bin/env bash
# Installs, builds and runs every test (unit, property and multi-process tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
cd build
ctest --output-on-failure --timeout 900 "$@"
