#!/usr/bin/env bash
# The main job: install, build, then run both workflows' demos:
#  1. the RL weight-sync demo (2 FSDP trainer processes -> 2 engines x TP 2, 5 steps,
#     verified byte for byte); extra arguments go to `shardwire demo rl-sync`;
#  2. the P2P model-loading demo (embedded coordinator, a seed, waves of instances with
#     other TP sizes, a source killed mid-load, a fleet round by round; every load
#     verified byte for byte): `shardwire demo p2p-load`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
./build/src/cli/shardwire demo rl-sync "$@"
echo
exec ./build/src/cli/shardwire demo p2p-load
