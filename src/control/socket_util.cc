#include "control/socket_util.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <fmt/format.h>

#include <cerrno>
#include <system_error>
#include <vector>

namespace shardwire::control_internal {

void UniqueFd::Reset() {
  if (fd_ >= 0) {
    // close() must not be retried on EINTR on Linux: the fd is released either way.
    ::close(fd_);
    fd_ = -1;
  }
}

std::string ErrnoText(int err) { return std::system_category().message(err); }

Status SocketError(int err, std::string_view what) {
  std::string m = fmt::format("{}: {}", what, ErrnoText(err));
  switch (err) {
    case ECONNRESET:
    case EPIPE:
    case ENOTCONN:
    case ECONNABORTED:
      return PeerDisconnected(std::move(m));
    default:
      return IoError(std::move(m));
  }
}

Status SetNonBlocking(int fd) {
  int flags = ::fcntl(fd, F_GETFL, 0);
  if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
    return SocketError(errno, "fcntl(O_NONBLOCK)");
  }
  return Status::Ok();
}

void SetNoDelay(int fd) {
  int one = 1;
  // Best effort: only latency depends on it.
  (void)::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

Status WaitFd(int fd, short events, Deadline deadline) {
  while (true) {
    pollfd p{fd, events, 0};
    int r = ::poll(&p, 1, PollTimeoutMs(deadline));
    if (r < 0) {
      if (errno == EINTR) continue;
      return SocketError(errno, "poll");
    }
    if (r > 0) return Status::Ok();
    if (Clock::now() >= deadline) return TimedOut("socket wait exceeded its deadline");
  }
}

Status SendAll(int fd, std::span<const std::span<const std::byte>> pieces, Deadline deadline) {
  std::vector<iovec> iov;
  iov.reserve(pieces.size());
  for (auto piece : pieces) {
    if (!piece.empty()) {
      iov.push_back(iovec{const_cast<std::byte*>(piece.data()), piece.size()});
    }
  }
  std::size_t first = 0;
  while (first < iov.size()) {
    msghdr msg{};
    msg.msg_iov = iov.data() + first;
    msg.msg_iovlen = iov.size() - first;
    ssize_t n = ::sendmsg(fd, &msg, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        SW_RETURN_IF_ERROR(WaitFd(fd, POLLOUT, deadline));
        continue;
      }
      return SocketError(errno, "send");
    }
    auto sent = static_cast<std::size_t>(n);
    while (first < iov.size() && sent >= iov[first].iov_len) {
      sent -= iov[first].iov_len;
      ++first;
    }
    if (first < iov.size()) {
      iov[first].iov_base = static_cast<char*>(iov[first].iov_base) + sent;
      iov[first].iov_len -= sent;
    }
  }
  return Status::Ok();
}

Status RecvExact(int fd, std::span<std::byte> out, Deadline deadline) {
  std::size_t got = 0;
  while (got < out.size()) {
    ssize_t n = ::recv(fd, out.data() + got, out.size() - got, 0);
    if (n == 0) return PeerDisconnected("connection closed by peer");
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        SW_RETURN_IF_ERROR(WaitFd(fd, POLLIN, deadline));
        continue;
      }
      return SocketError(errno, "recv");
    }
    got += static_cast<std::size_t>(n);
  }
  return Status::Ok();
}

std::string HostPort(std::string_view host, std::uint16_t port) {
  if (host.find(':') != std::string_view::npos) return fmt::format("[{}]:{}", host, port);
  return fmt::format("{}:{}", host.empty() ? "*" : host, port);
}

}  // namespace shardwire::control_internal
