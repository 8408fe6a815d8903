// A same-run reference for the demo's GB/s figure: how fast this machine copies the
// same number of bytes with plain memcpy.
#pragma once

#include <cstdint>

namespace shardwire::cli {

/// GB/s (1e9 B/s) of memcpy moving `bytes` (capped at 512 MiB, fresh destination
/// pages touched once beforehand) split over `threads` threads; best of 3 runs.
double MeasureMemcpyGBps(std::uint64_t bytes, int threads);

/// The same copy (`bytes` capped at 512 MiB, split over `threads` threads, best of 3), as GB
/// (1e9 B) per CPU-second: bytes over the copying threads' summed CPU time
/// (CLOCK_THREAD_CPUTIME_ID). Unlike wall time this hardly moves when other processes
/// share the cores, so it is the reference for a lane's copy speed per CPU-second.
double MeasureMemcpyGBPerCpuSecond(std::uint64_t bytes, int threads);

}  // namespace shardwire::cli
