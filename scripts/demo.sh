#!/usr/bin/env bash
# The main job: install, build, then run the RL weight-sync demo
# (2 FSDP trainer processes -> 2 engines x TP 2, 5 steps, verified byte for byte).
# Extra arguments go to `shardwire demo rl-sync` (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
exec ./build/src/cli/shardwire demo rl-sync "$@"
