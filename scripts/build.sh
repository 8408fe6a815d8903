#!/usr/bin/env bash
# Installs dependencies (Debian packages) and builds Shardwire (Release) into build/.
# Usage: scripts/build.sh [extra cmake -D options]
# Uses ccache (Debian package) when installed, so repeated builds are cheap.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
launcher=()
if command -v ccache >/dev/null 2>&1; then
  launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache)
fi
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release "${launcher[@]}" "$@" >/dev/null
cmake --build build -j2
