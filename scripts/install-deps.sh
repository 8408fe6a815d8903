#!/usr/bin/env bash
# Installs Shardwire's build and test dependencies from Debian 12 packages.
# Idempotent: when every package is already present it does nothing (no apt-get update).
set -euo pipefail

packages=(
  build-essential cmake pkg-config
  ninja-build                   # the build tool (scripts/cmake_configure.sh: keeps both cores busy)
  libucx-dev ucx-utils          # transport (UCX) and ucx_perftest, the benchmark reference
  nlohmann-json3-dev            # safetensors headers, HF config.json, index files
  libyaml-cpp-dev               # model rules files (models/rules/*.yaml), errors with file:line
  libspdlog-dev libfmt-dev      # logging and formatting
  libcli11-dev                  # command-line parsing
  libxxhash-dev                 # metadata blob checksums
  libzstd-dev                   # transfer plan compression
  libgtest-dev libgmock-dev     # unit and multi-process tests
  libbenchmark-dev              # micro-benchmarks
  python3                       # test helpers (independent oracle for safetensors)
  python3-numpy                 # numpy oracle of the convert tests (casts, FP8 block quantisation)
  python3-dev pybind11-dev      # the Python package (python/), built for Debian's /usr/bin/python3
  python3-torch python3-pytest  # torch tensors in the Python package; its tests and examples
  clang-14 libclang-rt-14-dev   # libFuzzer targets (fuzz/run_fuzzer.sh)
  ccache                        # keeps the repeated builds of scripts/test.sh (normal, ASan, TSan, fuzz) cheap
  iperf3                        # plain-TCP reference of bench/agent_transfer_bench
  iproute2                      # network namespaces + veth for the cross-"host" transport test
  libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc  # coordinator service (proto/)
  openssl                       # coordinator TLS test makes its certificate
  libhiredis-dev                # Redis-backed coordinator state
  libcpp-httplib-dev            # the optional /metrics HTTP endpoint (Prometheus scrape)
  redis-server redis-tools      # Redis for the coordinator tests (started by the fixture) and redis-benchmark
  libfaketime                   # a Redis whose clock runs ahead of this machine (coordinator clock tests)
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "install-deps: installing ${missing[*]}" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
