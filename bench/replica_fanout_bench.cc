// bench/replica_fanout_bench: what read-once-write-to-every-replica gains over copying a
// trainer's bytes once per replica (WeightSyncOptions::copy_into_mapped; docs/benchmarks_history.md,
// "Read once, write to every replica"). A source of MiB bytes goes into R destination buffers
// (private memory, every page touched before timing), on T threads, three ways:
//   memcpy       glibc memcpy of each thread's slice into each replica, one replica after
//                another (the demo's reference: memcpy of the same bytes);
//   per replica  workflows::CopyToReplicas with one destination per call, one call per replica
//                (streaming stores; what the lanes do: one transfer per engine rank);
//   fan-out      workflows::CopyToReplicas with all R destinations in one group (each 64 KiB
//                chunk of the source written into every replica while it is in cache).
// Each figure is the best of 5 passes in wall time, as GB/s of bytes written (MiB x R), and
// the last two are also printed as ratios to memcpy measured in the same run.
//
// Usage: replica_fanout_bench [MiB=256] [replicas=2] [threads=2]
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "workflows/replica_fanout.h"

namespace {

using shardwire::Move;
using namespace shardwire::workflows;

double BestGbps(std::uint64_t bytes_written, const std::function<void()>& f) {
  double best = 1e30;
  for (int i = 0; i < 5; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return static_cast<double>(bytes_written) / best / 1e9;
}

}  // namespace

int main(int argc, char** argv) {
  const std::uint64_t n = (argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 256) << 20;
  const int replicas = argc > 2 ? std::atoi(argv[2]) : 2;
  const int threads = argc > 3 ? std::atoi(argv[3]) : 2;
  if (n == 0 || replicas < 1 || replicas > 8 || threads < 1 || threads > 64) {
    fmt::print(stderr, "usage: replica_fanout_bench [MiB >= 1] [replicas 1..8] [threads 1..64]\n");
    return 1;
  }
  std::vector<std::byte> source(n, std::byte{1});  // every page touched
  std::vector<std::vector<std::byte>> dsts(static_cast<std::size_t>(replicas), std::vector<std::byte>(n));
  const std::vector<Move> moves{{.src_offset = 0, .dst_offset = 0, .length = n}};
  const FanoutSource from{source, {}};
  const std::uint64_t written = n * static_cast<std::uint64_t>(replicas);

  const double memcpy_gbps = BestGbps(written, [&] {
    std::vector<std::thread> ts;
    const std::uint64_t slice = (n + static_cast<std::uint64_t>(threads) - 1) / static_cast<std::uint64_t>(threads);
    for (int t = 0; t < threads; ++t) {
      ts.emplace_back([&, t] {
        const std::uint64_t a = std::min(n, slice * static_cast<std::uint64_t>(t)), b = std::min(n, a + slice);
        for (auto& d : dsts) std::memcpy(d.data() + a, source.data() + a, b - a);
      });
    }
    for (auto& t : ts) t.join();
  });
  const double per_replica_gbps = BestGbps(written, [&] {
    for (auto& d : dsts) CopyToReplicas({{&moves, {d.data()}}}, from, static_cast<std::size_t>(threads));
  });
  FanoutGroup all{&moves, {}};
  for (auto& d : dsts) all.destinations.push_back(d.data());
  const double fanout_gbps = BestGbps(written, [&] { CopyToReplicas({all}, from, static_cast<std::size_t>(threads)); });
  for (const auto& d : dsts) {
    if (std::memcmp(d.data(), source.data(), n) != 0) {
      fmt::print(stderr, "replica_fanout_bench: a destination differs from the source\n");
      return 1;
    }
  }
  fmt::print("replica_fanout_bench: {} MiB source -> {} replicas, {} thread(s); GB/s of bytes written, best of 5\n",
             n >> 20, replicas, threads);
  fmt::print("  memcpy per replica (reference)  {:6.2f}\n", memcpy_gbps);
  fmt::print("  streaming copy per replica      {:6.2f}  = {:.2f}x memcpy\n", per_replica_gbps,
             per_replica_gbps / memcpy_gbps);
  fmt::print("  fan-out (read once)             {:6.2f}  = {:.2f}x memcpy, {:.2f}x per replica\n", fanout_gbps,
             fanout_gbps / memcpy_gbps, fanout_gbps / per_replica_gbps);
  return 0;
}
