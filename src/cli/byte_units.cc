#include "cli/byte_units.h"

#include <fmt/format.h>

namespace shardwire::cli {

std::string FormatBytes(double bytes) {
  // Each unit from the size that rounds to 1 of it, so no "1000.0 KB".
  if (bytes >= 0.995e9) return fmt::format("{:.2f} GB", bytes / 1e9);
  if (bytes >= 0.99995e6) return fmt::format("{:.1f} MB", bytes / 1e6);
  return fmt::format("{:.1f} KB", bytes / 1e3);
}

}  // namespace shardwire::cli
