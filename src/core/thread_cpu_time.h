// The calling thread's CPU time, for figures that must not count time spent waiting
// for a core (2-core development machines run many processes at once).
//
// Internal header (src/core), usable from every layer; not part of the public API.
// Thread-safety: reads only the calling thread's clock.
#pragma once

#include <time.h>

namespace shardwire {

/// Seconds of CPU time (user + system) the calling thread has used,
/// clock_gettime(CLOCK_THREAD_CPUTIME_ID); 0 if the clock is unavailable.
inline double ThreadCpuSeconds() {
  timespec ts{};
  if (::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0) return 0;
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

}  // namespace shardwire
