// Helpers shared by the control-layer tests.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

namespace shardwire::testing_util {

inline std::vector<std::byte> BytesOf(std::string_view s) {
  const auto* b = reinterpret_cast<const std::byte*>(s.data());
  return std::vector<std::byte>(b, b + s.size());
}

// A deterministic, non-periodic-looking byte pattern of `n` bytes.
inline std::vector<std::byte> Pattern(std::size_t n, std::uint32_t seed = 1) {
  std::vector<std::byte> v(n);
  std::uint32_t x = seed * 2654435761u + 12345u;
  for (std::size_t i = 0; i < n; ++i) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    v[i] = static_cast<std::byte>(x & 0xFFu);
  }
  return v;
}

}  // namespace shardwire::testing_util
