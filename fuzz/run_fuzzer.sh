#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/*_fuzzer.cc) with clang and runs them.
#
#   fuzz/run_fuzzer.sh [NAME|all] [SECONDS] [WORK_DIR]
#
# NAME: a fuzzer (e.g. plan_codec_fuzzer) or "all" (default), run one after another.
# SECONDS (default 60): libFuzzer -max_total_time of each. WORK_DIR (default build-fuzz/
# under the repository root) holds the CMake build (clang, -DSHARDWIRE_BUILD_FUZZERS=ON),
# each fuzzer's growing corpus in corpus/<name>/ and any reproducer in crashes/<name>-*.
# A corpus starts from: the checked-in seeds in fuzz/corpus/<name>/, the output of
# <name>_seeds where the fuzzer has a seed writer, and real files of ../shared/models
# (or $SHARDWIRE_SHARED_DIR) chosen below. A dictionary fuzz/<name>.dict is used when present.
# Needs clang++ (Debian clang-14) and its libFuzzer runtime (libclang-rt-14-dev); exits 77
# ("skipped") when they are missing. Exit 0 = no crash in any fuzzer; 1 = a crash (the
# names of the reproducers are printed). Run nice'd on shared machines.
# SHARDWIRE_FUZZ_BUILD=<folder>: use that already configured clang build (configured with
# -DSHARDWIRE_BUILD_FUZZERS=ON, e.g. scripts/test.sh's build-asan/) instead of WORK_DIR/build.
set -euo pipefail
which_fuzzer="${1:-all}"
seconds="${2:-60}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="${3:-$root/build-fuzz}"
shared="${SHARDWIRE_SHARED_DIR:-$root/../shared}"
export SHARDWIRE_SHARED_DIR="$shared"

cxx=""
for c in clang++-14 clang++; do
  if command -v "$c" >/dev/null 2>&1; then cxx="$c"; break; fi
done
if [ -z "$cxx" ]; then echo "run_fuzzer: clang++ not found; skipping" >&2; exit 77; fi
cc="${cxx/clang++/clang}"
if ! echo 'extern "C" int LLVMFuzzerTestOneInput(const char*, unsigned long) { return 0; }' |
     "$cxx" -x c++ -fsanitize=fuzzer - -o /dev/null 2>/dev/null; then
  echo "run_fuzzer: $cxx cannot link -fsanitize=fuzzer (install libclang-rt-14-dev); skipping" >&2
  exit 77
fi

if [ "$which_fuzzer" = all ]; then
  fuzzers=()
  for f in "$root"/fuzz/*_fuzzer.cc; do fuzzers+=("$(basename "$f" .cc)"); done
else
  [ -f "$root/fuzz/$which_fuzzer.cc" ] || { echo "run_fuzzer: no fuzz/$which_fuzzer.cc" >&2; exit 2; }
  fuzzers=("$which_fuzzer")
fi

source "$root/scripts/cmake_configure.sh"
build="${SHARDWIRE_FUZZ_BUILD:-$work/build}"
if [ ! -f "$build/CMakeCache.txt" ]; then
  configure_build "$build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_C_COMPILER="$cc" \
    -DSHARDWIRE_BUILD_FUZZERS=ON -DSHARDWIRE_BUILD_TESTS=OFF -DSHARDWIRE_BUILD_BENCH=OFF -DSHARDWIRE_WERROR=OFF
fi
targets=()
for f in "${fuzzers[@]}"; do
  targets+=("$f")
  if grep -q SHARDWIRE_FUZZ_SEED_MAIN "$root/fuzz/$f.cc"; then targets+=("${f}_seeds"); fi
done
cmake --build "$build" -j2 --target "${targets[@]}" >/dev/null

# Copies files matching find(1) arguments into corpus folder $1 as <folder>-<file>.
copy_seeds() {
  local out="$1"; shift
  find "$shared/models" "$@" -print0 | while IFS= read -r -d '' f; do
    cp "$f" "$out/$(basename "$(dirname "$f")")-$(basename "$f")"
  done
}

# Real files of ../shared/models that seed each fuzzer (none for the rest).
shared_seeds() {
  local name="$1" out="$2"
  [ -d "$shared/models" ] || return 0
  case "$name" in
    safetensors_fuzzer) copy_seeds "$out" -name '*.safetensors' -size -200k ;;
    checkpoint_index_fuzzer) copy_seeds "$out" -name '*.index.json' ;;
    model_config_fuzzer) copy_seeds "$out" -name '*config.json' ;;
    *) ;;
  esac
}

status=0
mkdir -p "$work/crashes"
for f in "${fuzzers[@]}"; do
  corpus="$work/corpus/$f"
  mkdir -p "$corpus"
  if [ -d "$root/fuzz/corpus/$f" ]; then cp -t "$corpus" "$root/fuzz/corpus/$f"/*; fi
  # The built-in rules files seed the rules-file fuzzer (they are in the source tree).
  if [ "$f" = model_rules_fuzzer ]; then cp -t "$corpus" "$root"/models/rules/*.yaml; fi
  if [ -x "$build/fuzz/${f}_seeds" ]; then "$build/fuzz/${f}_seeds" "$corpus"; fi
  shared_seeds "$f" "$corpus"
  dict=()
  if [ -f "$root/fuzz/$f.dict" ]; then dict=(-dict="$root/fuzz/$f.dict"); fi
  echo "run_fuzzer: $f for ${seconds}s (corpus $corpus)"
  if ! "$build/fuzz/$f" -max_total_time="$seconds" -max_len=65536 -timeout=30 -rss_limit_mb=2048 \
       -print_final_stats=1 -artifact_prefix="$work/crashes/$f-" "${dict[@]}" "$corpus" \
       >"$work/$f.log" 2>&1; then
    status=1
    echo "run_fuzzer: $f FAILED; log $work/$f.log; reproducers:" >&2
    ls "$work/crashes/$f-"* >&2 || true
    tail -40 "$work/$f.log" >&2
  else
    grep -E '^stat::number_of_executed_units|^stat::new_units_added|^Done' "$work/$f.log" || true
  fi
done
exit "$status"
