#include "workflows/first_touch_probe.h"

#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cstddef>

#include "core/thread_cpu_time.h"

namespace shardwire::workflows {

double FirstWriteMicrosecondsPerPage() {
  constexpr std::size_t kPage = 4096;
  constexpr std::size_t kBytes = std::size_t{4} << 20;
  double best = 1e9;
  for (int trial = 0; trial < 3; ++trial) {
    const double t0 = ThreadCpuSeconds();
    void* p = ::mmap(nullptr, kBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return 1e9;
    (void)::madvise(p, kBytes, MADV_NOHUGEPAGE);  // 4 KiB pages, as a shared-memory arena has
    auto* bytes = static_cast<unsigned char*>(p);
    for (std::size_t off = 0; off < kBytes; off += kPage) {
      std::atomic_ref<unsigned char>(bytes[off]).store(1, std::memory_order_relaxed);  // not optimised away
    }
    ::munmap(p, kBytes);
    const double s = ThreadCpuSeconds() - t0;
    best = std::min(best, s * 1e6 / static_cast<double>(kBytes / kPage));
  }
  return best;
}

}  // namespace shardwire::workflows
