#include "transport/local_message_channel.h"

#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

namespace shardwire::transport {

namespace {

// sockaddr_un of an abstract address (`name` without the leading NUL).
socklen_t AbstractAddress(std::span<const std::byte> name, sockaddr_un& out) {
  std::memset(&out, 0, sizeof(out));
  out.sun_family = AF_UNIX;
  const std::size_t n = std::min(name.size(), sizeof(out.sun_path) - 1);
  std::memcpy(out.sun_path + 1, name.data(), n);
  return static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + n);
}

std::string Printable(std::span<const std::byte> name) {
  return std::string(reinterpret_cast<const char*>(name.data()), name.size());
}

}  // namespace

Result<std::unique_ptr<LocalMessageLink>> LocalMessageLink::Connect(std::span<const std::byte> address) {
  if (address.empty() || address.size() > sizeof(sockaddr_un{}.sun_path) - 1)
    return CorruptData(fmt::format("local message address of {} bytes", address.size()));
  FileDescriptor fd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) return Internal(fmt::format("socket(AF_UNIX, SOCK_SEQPACKET): {}", std::strerror(errno)));
  sockaddr_un sa;
  const socklen_t len = AbstractAddress(address, sa);
  // A Unix-domain connect completes at once (the listener's backlog takes it) or
  // fails at once: EAGAIN when that backlog is full (a peer that stopped accepting).
  if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&sa), len) != 0)
    return PeerDisconnected(
        fmt::format("connect to local message channel @{}: {}", Printable(address), std::strerror(errno)));
  return std::unique_ptr<LocalMessageLink>(new LocalMessageLink(std::move(fd)));
}

Result<bool> LocalMessageLink::Send(std::vector<std::byte> message, Done done) {
  if (message.empty()) return InvalidArgument("an empty local message (a zero-length record reads as end of stream)");
  if (message.size() > kMaxLocalMessageBytes)
    return InvalidArgument(fmt::format("a local message of {} bytes exceeds {}", message.size(), kMaxLocalMessageBytes));
  if (!fd_) return PeerDisconnected("local message link closed");
  constexpr std::size_t kPayload = kMaxLocalRecordBytes - 1;
  const bool was_empty = queue_.empty();
  for (std::size_t at = 0; at < message.size(); at += kPayload) {
    const std::size_t n = std::min(kPayload, message.size() - at);
    const bool last = at + n == message.size();
    Pending p;
    p.record.reserve(n + 1);
    p.record.push_back(last ? kLastRecord : std::byte{0});
    p.record.insert(p.record.end(), message.begin() + static_cast<std::ptrdiff_t>(at),
                    message.begin() + static_cast<std::ptrdiff_t>(at + n));
    if (last) p.done = std::move(done);
    queue_.push_back(std::move(p));
  }
  if (!was_empty) return false;  // behind records that wait already
  // Send what the connection takes now. The queue holds this message only: a
  // message that left whole, or an error, reports no `done`.
  while (!queue_.empty()) {
    const Result<bool> sent = SendFront();
    if (!sent.ok()) {
      queue_.clear();
      return sent.status();
    }
    if (!*sent) return false;  // the connection is full: queued
    queue_.pop_front();
  }
  return true;
}

Result<bool> LocalMessageLink::SendFront() {
  const Pending& p = queue_.front();
  const ssize_t n = ::send(fd_.get(), p.record.data(), p.record.size(), MSG_DONTWAIT | MSG_NOSIGNAL | MSG_EOR);
  if (n == static_cast<ssize_t>(p.record.size())) return true;
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return false;
  // The peer closed its end (or is gone): only these say so. Anything else (EMSGSIZE for a
  // lowered socket buffer, ENOBUFS, ENOMEM) is this host's trouble, not the peer's.
  if (n < 0 && errno != EPIPE && errno != ECONNRESET && errno != ENOTCONN) {
    return Internal(fmt::format("send on a local message link: {}", std::strerror(errno)));
  }
  return PeerDisconnected(
      fmt::format("send on a local message link: {}", n >= 0 ? "short record" : std::strerror(errno)));
}

bool LocalMessageLink::Flush() {
  while (!queue_.empty() && fd_) {
    const Result<bool> sent = SendFront();
    if (!sent.ok()) {
      FailQueued(sent.status());
      return false;
    }
    if (!*sent) return true;  // still full
    Done done = std::move(queue_.front().done);
    queue_.pop_front();
    if (done) done(nullptr);
  }
  return !queue_.empty();
}

void LocalMessageLink::FailQueued(const Status& why) {
  while (!queue_.empty()) {
    Done done = std::move(queue_.front().done);
    queue_.pop_front();
    if (done) done(&why);
  }
}

void LocalMessageLink::Close() {
  fd_ = FileDescriptor();
  FailQueued(PeerDisconnected("local message link closed"));
}

Result<std::unique_ptr<LocalMessageChannel>> LocalMessageChannel::Open(std::uint64_t serial, std::uint32_t lane) {
  std::unique_ptr<LocalMessageChannel> c(new LocalMessageChannel());
  const std::string name = fmt::format("shardwire-{}-{}-{}", ::getpid(), serial, lane);
  c->address_.assign(reinterpret_cast<const std::byte*>(name.data()),
                     reinterpret_cast<const std::byte*>(name.data()) + name.size());
  c->listener_ = FileDescriptor(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!c->listener_) return Internal(fmt::format("socket(AF_UNIX, SOCK_SEQPACKET): {}", std::strerror(errno)));
  sockaddr_un sa;
  const socklen_t len = AbstractAddress(c->address_, sa);
  if (::bind(c->listener_.get(), reinterpret_cast<const sockaddr*>(&sa), len) != 0)
    return Internal(fmt::format("bind @{}: {}", name, std::strerror(errno)));
  if (::listen(c->listener_.get(), SOMAXCONN) != 0) return Internal(fmt::format("listen @{}: {}", name, std::strerror(errno)));
  c->epoll_ = FileDescriptor(::epoll_create1(EPOLL_CLOEXEC));
  if (!c->epoll_) return Internal(fmt::format("epoll_create1: {}", std::strerror(errno)));
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = c->listener_.get();
  if (::epoll_ctl(c->epoll_.get(), EPOLL_CTL_ADD, c->listener_.get(), &ev) != 0)
    return Internal(fmt::format("epoll_ctl(ADD listener): {}", std::strerror(errno)));
  c->buffer_.resize(kMaxLocalRecordBytes + 1);
  return c;
}

unsigned LocalMessageChannel::Accept() {
  unsigned accepted = 0;
  for (;;) {
    FileDescriptor fd(::accept4(listener_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (!fd) return accepted;  // EAGAIN, or an error (EMFILE) the next poll retries
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd.get();
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd.get(), &ev) != 0) {
      spdlog::warn("shardwire: epoll_ctl(ADD) of a local message connection: {}", std::strerror(errno));
      continue;
    }
    const int key = fd.get();
    connections_.emplace(key, Connection{std::move(fd), {}});
    ++accepted;
  }
}

unsigned LocalMessageChannel::Poll(const std::function<void(const std::byte*, std::size_t)>& deliver) {
  epoll_event events[16];
  const int ready = ::epoll_wait(epoll_.get(), events, 16, 0);
  unsigned delivered = 0;
  unsigned changed = 0;  // connections accepted or closed
  for (int i = 0; i < ready; ++i) {
    const int fd = events[i].data.fd;
    if (fd == listener_.get()) {
      changed += Accept();
      continue;
    }
    auto it = connections_.find(fd);
    if (it == connections_.end()) continue;
    Connection& c = it->second;
    bool close = false;
    for (;;) {
      const ssize_t n = ::recv(fd, buffer_.data(), buffer_.size(), MSG_DONTWAIT | MSG_TRUNC);
      if (n < 0) {
        close = errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR;
        break;
      }
      if (n == 0) {  // the sender closed (or died): its records were all read
        close = true;
        break;
      }
      const auto length = static_cast<std::size_t>(n);
      if (length > kMaxLocalRecordBytes || length < 2 || c.partial.size() + length - 1 > kMaxLocalMessageBytes) {
        spdlog::warn("shardwire: dropped a local message connection that sent a {}-byte record after {} bytes of a "
                     "message (records 2..{} bytes, messages at most {})",
                     length, c.partial.size(), kMaxLocalRecordBytes, kMaxLocalMessageBytes);
        close = true;
        break;
      }
      const bool last = buffer_[0] == kLastRecord;
      if (last && c.partial.empty()) {
        deliver(buffer_.data() + 1, length - 1);  // a message of one record: no copy
        ++delivered;
        continue;
      }
      c.partial.insert(c.partial.end(), buffer_.begin() + 1, buffer_.begin() + static_cast<std::ptrdiff_t>(length));
      if (last) {
        deliver(c.partial.data(), c.partial.size());
        ++delivered;
        c.partial.clear();
        c.partial.shrink_to_fit();
      }
    }
    if (close) {
      ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, fd, nullptr);
      connections_.erase(it);
      ++changed;
    }
  }
  return delivered + changed;
}

}  // namespace shardwire::transport
