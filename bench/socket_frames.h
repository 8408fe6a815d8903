// Length-prefixed frames over a socket or pipe, for the benchmarks' parent and child
// processes to exchange transport metadata blobs and small control messages.
#pragma once

#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

namespace shardwire::bench {

/// Writes all `n` bytes (retrying on EINTR and short writes); false on error or EOF.
inline bool WriteAll(int fd, const void* p, std::size_t n) {
  const char* c = static_cast<const char*>(p);
  while (n > 0) {
    ssize_t w = ::write(fd, c, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    c += w;
    n -= static_cast<std::size_t>(w);
  }
  return true;
}

/// Reads exactly `n` bytes (retrying on EINTR and short reads); false on error or EOF.
inline bool ReadAll(int fd, void* p, std::size_t n) {
  char* c = static_cast<char*>(p);
  while (n > 0) {
    ssize_t r = ::read(fd, c, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    c += r;
    n -= static_cast<std::size_t>(r);
  }
  return true;
}

/// One frame: u64 length (host order; both ends are on one host) then the bytes.
inline bool SendFrame(int fd, const std::vector<std::byte>& b) {
  std::uint64_t n = b.size();
  return WriteAll(fd, &n, sizeof(n)) && WriteAll(fd, b.data(), b.size());
}

/// The next frame, or nullopt on error, EOF or a frame above 1 GiB.
inline std::optional<std::vector<std::byte>> RecvFrame(int fd) {
  std::uint64_t n = 0;
  if (!ReadAll(fd, &n, sizeof(n)) || n > (1u << 30)) return std::nullopt;
  std::vector<std::byte> b(n);
  if (!ReadAll(fd, b.data(), b.size())) return std::nullopt;
  return b;
}

}  // namespace shardwire::bench
