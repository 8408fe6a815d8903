# Sourced by scripts/build.sh, scripts/test.sh and fuzz/run_fuzzer.sh (not run on its own).
#
# configure_build DIR [cmake arguments...]: configures the repository at $SHARDWIRE_ROOT (the
# folder above this script) into build folder DIR with
#   * ccache as the compiler launcher when installed, so a repeated build recompiles only what
#     changed (scripts/install-deps.sh installs it);
#   * Ninja (Debian ninja-build) for a new folder: one build graph over every target keeps both
#     cores busy. CMake's Makefiles compile a target's objects only once every target it links is
#     built, and build several `--target` goals one after another, so the last compile of each
#     left a core idle (a cold `.ci/run` kept the two cores 81% busy; docs/reliability.md,
#     "Stages of scripts/test.sh"). A folder configured before keeps its generator, since CMake
#     cannot switch one.
# Errors: cmake's own (exit status non-zero, its messages on stderr).
SHARDWIRE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

configure_build() {
  local dir="$1"
  shift
  local args=()
  if command -v ccache >/dev/null 2>&1; then
    args+=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache)
  fi
  if [ ! -f "$dir/CMakeCache.txt" ] && command -v ninja >/dev/null 2>&1; then
    args+=(-G Ninja)
  fi
  cmake -S "$SHARDWIRE_ROOT" -B "$dir" "${args[@]}" "$@" >/dev/null
}
