#!/usr/bin/env bash
# Builds the metadata-blob libFuzzer target with clang and runs it.
#
#   fuzz/run_fuzzer.sh [SECONDS] [WORK_DIR]
#
# SECONDS (default 60): libFuzzer -max_total_time. WORK_DIR (default
# build-fuzz/ under the repository root) receives the binary, the corpus and
# any crash-* reproducer. Needs clang++ (Debian clang-14) and its libFuzzer
# runtime (libclang-rt-14-dev); exits 77 (the "skip" code the ctest test maps
# to SKIPPED) when they are missing. Exit 0 = no crash within the time.
set -euo pipefail
seconds="${1:-60}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="${2:-$root/build-fuzz}"

cxx=""
for c in clang++-14 clang++; do
  if command -v "$c" >/dev/null 2>&1; then cxx="$c"; break; fi
done
if [ -z "$cxx" ]; then echo "run_fuzzer: clang++ not found; skipping" >&2; exit 77; fi
if ! echo 'extern "C" int LLVMFuzzerTestOneInput(const char*, unsigned long) { return 0; }' |
     "$cxx" -x c++ -fsanitize=fuzzer - -o /dev/null 2>/dev/null; then
  echo "run_fuzzer: $cxx cannot link -fsanitize=fuzzer (install libclang-rt-14-dev); skipping" >&2
  exit 77
fi

mkdir -p "$work/corpus"
srcs=("$root/fuzz/metadata_blob_fuzzer.cc" "$root/src/transport/metadata_blob.cc" "$root/src/core/status.cc")
flags=(-std=c++20 -O1 -g -I"$root/include" -I"$root/src")
libs=(-lfmt -lxxhash)
if [ ! -x "$work/metadata_blob_fuzzer" ] || [ -n "$(find "${srcs[@]}" "$root/include/shardwire/metadata_blob.h" -newer "$work/metadata_blob_fuzzer")" ]; then
  "$cxx" "${flags[@]}" -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    "${srcs[@]}" "${libs[@]}" -o "$work/metadata_blob_fuzzer"
  "$cxx" "${flags[@]}" -DSHARDWIRE_FUZZ_SEED_MAIN "${srcs[@]}" "${libs[@]}" -o "$work/metadata_blob_seeds"
fi
"$work/metadata_blob_seeds" "$work/corpus"
cd "$work"
exec ./metadata_blob_fuzzer -max_total_time="$seconds" -max_len=4096 -print_final_stats=1 corpus
