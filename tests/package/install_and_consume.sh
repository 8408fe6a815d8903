#!/usr/bin/env bash
# Installs the Shardwire build tree into a fresh prefix, then builds and runs a consumer
# project against it twice: with find_package(shardwire) and with pkg-config.
# Usage: install_and_consume.sh BUILD_DIR WORK_DIR CONSUMER_SOURCE_DIR
set -euo pipefail
build=$1 work=$2 consumer=$3
rm -rf "$work"; mkdir -p "$work"
cmake --install "$build" --prefix "$work/prefix" >/dev/null
test -x "$work/prefix/bin/shardwire"
test -f "$work/prefix/include/shardwire/planner.h"
test -f "$work/prefix/lib/cmake/shardwire/shardwireConfig.cmake" || test -f "$work"/prefix/lib*/cmake/shardwire/shardwireConfig.cmake
cmake -S "$consumer" -B "$work/cmake-build" -DCMAKE_PREFIX_PATH="$work/prefix" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$work/cmake-build" >/dev/null
out=$("$work/cmake-build/consumer")
echo "find_package consumer: $out"
[[ $out == planned* ]]
pcdir=$(dirname "$(find "$work/prefix" -name shardwire.pc | head -n1)")
PKG_CONFIG_PATH="$pcdir" g++ -std=c++20 -O1 "$consumer/main.cc" -o "$work/pc-consumer" \
  $(PKG_CONFIG_PATH="$pcdir" pkg-config --cflags --libs shardwire)
out2=$("$work/pc-consumer")
echo "pkg-config consumer: $out2"
[[ $out2 == "$out" ]]
echo "1 passed, 0 failed"
