#!/usr/bin/env bash
# Installs the Shardwire build tree into a fresh prefix, then builds and runs a consumer
# project against it twice: with find_package(shardwire) and with pkg-config.
# Usage: install_and_consume.sh BUILD_DIR WORK_DIR CONSUMER_SOURCE_DIR
set -euo pipefail
build=$1 work=$2 consumer=$3
rm -rf "$work"; mkdir -p "$work"
cmake --install "$build" --prefix "$work/prefix" >/dev/null
test -x "$work/prefix/bin/shardwire"
# The installed CLI runs (its libraries resolve) and knows its commands.
"$work/prefix/bin/shardwire" --help | grep -q "serve"
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
# A missing dependency is find_package's ordinary failure, naming the module: a consumer that
# asks QUIET configures on, one that asks REQUIRED is told what is missing.
mkdir -p "$work/no-pkgconfig"
quiet=$(mktemp -d "$work/quiet.XXXX")
cat > "$quiet/CMakeLists.txt" <<'CMAKE'
cmake_minimum_required(VERSION 3.25)
project(optional_shardwire LANGUAGES CXX)
find_package(shardwire QUIET)
message(STATUS "shardwire_FOUND=${shardwire_FOUND}")
find_package(shardwire REQUIRED)
CMAKE
set +e
log=$(PKG_CONFIG_LIBDIR="$work/no-pkgconfig" PKG_CONFIG_PATH="" cmake -S "$quiet" -B "$quiet/build" \
      -DCMAKE_PREFIX_PATH="$work/prefix" 2>&1)
rc=$?
set -e
echo "$log" | grep -Eq "shardwire_FOUND=(0|FALSE)"
echo "$log" | grep -q "pkg-config module 'ucx'"
[[ $rc -ne 0 ]]
echo "1 passed, 0 failed"
