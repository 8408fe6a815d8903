// A same-run reference for the demo's GB/s figure: how fast this machine copies the
// same number of bytes with plain memcpy.
#pragma once

#include <cstdint>

namespace shardwire::demo {

/// GB/s (1e9 B/s) of memcpy moving `bytes` (capped at 512 MiB, fresh destination
/// pages touched once beforehand) split over `threads` threads; best of 3 runs.
double MeasureMemcpyGBps(std::uint64_t bytes, int threads);

}  // namespace shardwire::demo
