#!/usr/bin/env bash
# Installs dependencies (Debian packages) and builds Shardwire (Release) into build/.
# Usage: scripts/build.sh [extra cmake -D options]
# Ninja and ccache (Debian packages) as scripts/cmake_configure.sh says.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
source scripts/cmake_configure.sh
configure_build build -DCMAKE_BUILD_TYPE=Release "$@"
cmake --build build -j2
# `import shardwire` with Debian's /usr/bin/python3: a .pth file in its site directory points at
# the package this build assembled (build/python/shardwire). Only when that directory is writable.
site=$(/usr/bin/python3 -c 'import site; print(next(p for p in site.getsitepackages() if p.startswith("/usr/local")))' 2>/dev/null || true)
if [ -d build/python/shardwire ] && [ -n "$site" ] && mkdir -p "$site" 2>/dev/null && [ -w "$site" ]; then
  echo "$(pwd)/build/python" > "$site/shardwire.pth"
fi
