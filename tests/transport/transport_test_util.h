// Helpers shared by the transport tests: byte patterns, pumping two in-process
// agents, framed messages over a socketpair, waitpid with a timeout.
#pragma once

#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "shardwire/agent.h"

namespace shardwire::testing {

/// The bytes of `s` (a notification payload in tests).
inline std::vector<std::byte> Bytes(std::string_view s) {
  std::vector<std::byte> b(s.size());
  if (!s.empty()) std::memcpy(b.data(), s.data(), s.size());
  return b;
}

/// `b` as a string (a received payload in tests).
inline std::string Str(const std::vector<std::byte>& b) {
  return std::string(reinterpret_cast<const char*>(b.data()), b.size());
}

/// The byte expected at absolute position `i` of a pattern with `seed`,
/// computed independently of any buffer (a splitmix64 step per 8-byte word).
inline std::byte PatternByte(std::uint64_t seed, std::uint64_t i) {
  std::uint64_t z = seed * 0x9E3779B97F4A7C15ull + (i >> 3) + 1;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return static_cast<std::byte>((z >> (8 * (i & 7))) & 0xFF);
}

/// Fills `bytes` with the pattern, byte k getting PatternByte(seed, first + k).
inline void FillPattern(std::span<std::byte> bytes, std::uint64_t seed, std::uint64_t first = 0) {
  for (std::size_t k = 0; k < bytes.size(); ++k) bytes[k] = PatternByte(seed, first + k);
}

/// Index of the first byte that differs from the pattern, or nullopt.
inline std::optional<std::size_t> FirstMismatch(std::span<const std::byte> bytes, std::uint64_t seed,
                                                std::uint64_t first = 0) {
  for (std::size_t k = 0; k < bytes.size(); ++k)
    if (bytes[k] != PatternByte(seed, first + k)) return k;
  return std::nullopt;
}

/// Index of the first byte != `value`, or nullopt.
inline std::optional<std::size_t> FirstNotEqual(std::span<const std::byte> bytes, std::byte value) {
  for (std::size_t k = 0; k < bytes.size(); ++k)
    if (bytes[k] != value) return k;
  return std::nullopt;
}

/// Progresses both agents until `done()` is true or `timeout_s` passes.
/// Returns whether done() became true. Sleeps 50 us between idle rounds.
inline bool PumpUntil(Agent& a, Agent& b, const std::function<bool()>& done, double timeout_s = 20) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  while (std::chrono::steady_clock::now() < deadline) {
    a.Progress();
    b.Progress();
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
  return done();
}

/// Writes a length-prefixed frame (u64 little-endian length, bytes).
inline bool SendFrame(int fd, std::span<const std::byte> bytes) {
  std::uint64_t n = bytes.size();
  std::byte header[8];
  for (int i = 0; i < 8; ++i) header[i] = static_cast<std::byte>((n >> (8 * i)) & 0xFF);
  auto write_all = [fd](const std::byte* p, std::size_t len) {
    while (len > 0) {
      ssize_t w = ::write(fd, p, len);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) return false;
      p += w;
      len -= static_cast<std::size_t>(w);
    }
    return true;
  };
  return write_all(header, 8) && write_all(bytes.data(), bytes.size());
}

/// Reads one frame, waiting at most `timeout_s` overall. nullopt on timeout,
/// EOF or error.
inline std::optional<std::vector<std::byte>> RecvFrame(int fd, double timeout_s) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  auto read_all = [&](std::byte* p, std::size_t len) {
    while (len > 0) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return false;
      pollfd pfd{fd, POLLIN, 0};
      int r = ::poll(&pfd, 1, static_cast<int>(left.count()));
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) return false;
      ssize_t got = ::read(fd, p, len);
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) return false;
      p += got;
      len -= static_cast<std::size_t>(got);
    }
    return true;
  };
  std::byte header[8];
  if (!read_all(header, 8)) return std::nullopt;
  std::uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<std::uint64_t>(header[i]) << (8 * i);
  if (n > (std::uint64_t{1} << 30)) return std::nullopt;
  std::vector<std::byte> out(static_cast<std::size_t>(n));
  if (!read_all(out.data(), out.size())) return std::nullopt;
  return out;
}

/// waitpid with a timeout. Returns the exit status (as from waitpid) or
/// nullopt after SIGKILLing and reaping a child that did not exit in time.
inline std::optional<int> WaitPidFor(pid_t pid, double timeout_s) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  for (;;) {
    int status = 0;
    pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) return status;
    if (r < 0 && errno != EINTR) return std::nullopt;
    if (std::chrono::steady_clock::now() >= deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      return std::nullopt;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

}  // namespace shardwire::testing
