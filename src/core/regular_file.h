// Reading a small file whole, safely: config.json, rules files, a checkpoint's index, a
// coordinator's token and TLS files, a fabric description. Only a regular file is read, and only
// up to a bound, so a FIFO, /dev/zero, a directory or a huge file is a typed error at once
// rather than a hang (opening a FIFO waits for a writer, with signals blocked in `serve`) or a
// process that reads until it runs out of memory.
#pragma once

#include <cstdint>
#include <string>

#include "shardwire/status.h"

namespace shardwire {

/// Largest text file ReadRegularFile reads by default (config.json, rules files, a checkpoint's
/// index; the largest index of a published model is a few MiB), bytes.
inline constexpr std::uint64_t kMaxTextFileBytes = std::uint64_t{64} << 20;

/// Reads the whole regular file at `path` into `out`. kIoError naming the path when it
/// cannot be opened or read, is not a regular file (a FIFO, /dev/zero, a directory: nothing
/// is read from it, and opening never blocks) or holds more than `max_bytes`. Thread-safe.
Status ReadRegularFile(const std::string& path, std::string* out, std::uint64_t max_bytes = kMaxTextFileBytes);

}  // namespace shardwire
