// Internal: small POSIX socket helpers for the TCP rendezvous (RAII fds, EINTR-safe
// and deadline-bounded send/recv on non-blocking sockets, errno -> Status).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>

#include "control/rendezvous_internal.h"
#include "shardwire/status.h"

namespace shardwire::control_internal {

/// Owns a file descriptor; closes it on destruction.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd() { Reset(); }
  UniqueFd(UniqueFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) {
      Reset();
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  void Reset();

 private:
  int fd_ = -1;
};

/// Human text of an errno value.
std::string ErrnoText(int err);

/// Maps an errno from a socket call to a Status: connection resets / broken pipes
/// become kPeerDisconnected, everything else kIoError. `what` says what failed.
Status SocketError(int err, std::string_view what);

Status SetNonBlocking(int fd);
/// Disables Nagle's algorithm (requests and replies are small and latency-bound).
void SetNoDelay(int fd);

/// Waits with poll() until `fd` reports any of `events` (or an error / hang-up,
/// which the following send/recv will surface). kTimedOut at `deadline`.
Status WaitFd(int fd, short events, Deadline deadline);

/// Sends all bytes of `pieces` in order on a non-blocking socket (sendmsg with
/// MSG_NOSIGNAL, so a closed peer is an error, not SIGPIPE). Handles partial writes
/// and EINTR. kTimedOut at `deadline`.
Status SendAll(int fd, std::span<const std::span<const std::byte>> pieces, Deadline deadline);

/// Receives exactly out.size() bytes on a non-blocking socket. Handles partial reads
/// and EINTR. kPeerDisconnected on EOF, kTimedOut at `deadline`.
Status RecvExact(int fd, std::span<std::byte> out, Deadline deadline);

/// "host:port", with brackets around IPv6 hosts.
std::string HostPort(std::string_view host, std::uint16_t port);

}  // namespace shardwire::control_internal
