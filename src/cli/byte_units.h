// Bytes as people read them in the CLI's text output (decimal units, as `df -H` and network
// figures use): the unit follows the size, so a 200 KB test model does not print "0.000 GB".
#pragma once

#include <string>

namespace shardwire::cli {

/// `bytes` (>= 0) with one decimal below 1 GB ("0.0 KB", "12.3 KB", "700.5 MB") and two from
/// 1 GB on ("1.32 GB", "688.58 GB"): 1 KB = 1e3 bytes, 1 MB = 1e6, 1 GB = 1e9. Thread-safe.
std::string FormatBytes(double bytes);

}  // namespace shardwire::cli
