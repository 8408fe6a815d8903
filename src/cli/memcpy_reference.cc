#include "cli/memcpy_reference.h"

#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

#include "core/thread_cpu_time.h"

namespace shardwire::cli {

double MeasureMemcpyGBps(std::uint64_t bytes, int threads) {
  const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(bytes, 512ull << 20));
  if (n == 0 || threads < 1) return 0;
  std::vector<char> src(n, 1), dst(n, 0);
  double best = 0;
  for (int trial = 0; trial < 3; ++trial) {
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<std::thread> workers;
    const std::size_t part = (n + static_cast<std::size_t>(threads) - 1) / static_cast<std::size_t>(threads);
    for (int t = 0; t < threads; ++t) {
      const std::size_t begin = std::min(n, part * static_cast<std::size_t>(t));
      const std::size_t len = std::min(n, begin + part) - begin;
      workers.emplace_back([&, begin, len] { std::memcpy(dst.data() + begin, src.data() + begin, len); });
    }
    for (auto& w : workers) w.join();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, static_cast<double>(n) / s / 1e9);
  }
  return best;
}

double MeasureMemcpyGBPerCpuSecond(std::uint64_t bytes, int threads) {
  const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(bytes, 512ull << 20));
  if (n == 0 || threads < 1) return 0;
  std::vector<char> src(n, 1), dst(n, 0);
  double best = 0;
  for (int trial = 0; trial < 3; ++trial) {
    std::vector<double> cpu(static_cast<std::size_t>(threads), 0);
    std::vector<std::thread> workers;
    const std::size_t part = (n + static_cast<std::size_t>(threads) - 1) / static_cast<std::size_t>(threads);
    for (int t = 0; t < threads; ++t) {
      const std::size_t begin = std::min(n, part * static_cast<std::size_t>(t));
      const std::size_t len = std::min(n, begin + part) - begin;
      workers.emplace_back([&, t, begin, len] {
        const double c0 = ThreadCpuSeconds();
        std::memcpy(dst.data() + begin, src.data() + begin, len);
        cpu[static_cast<std::size_t>(t)] = ThreadCpuSeconds() - c0;
      });
    }
    for (auto& w : workers) w.join();
    double total = 0;
    for (double c : cpu) total += c;
    if (total > 0) best = std::max(best, static_cast<double>(n) / total / 1e9);
  }
  return best;
}

}  // namespace shardwire::cli
