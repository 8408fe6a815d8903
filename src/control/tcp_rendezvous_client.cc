// TcpRendezvousClient: a pool of blocking-style exchanges over non-blocking sockets.
// Every wait is a poll() bounded by a deadline; nothing spins or sleeps in a loop
// except the backoff between connection attempts while the server is not up yet.
#include "shardwire/tcp_rendezvous.h"

#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <mutex>
#include <thread>

#include "control/rendezvous_internal.h"
#include "control/socket_util.h"
#include "control/wire.h"

namespace shardwire {

namespace ci = control_internal;
namespace wire = control_internal::wire;

namespace {

/// Idle connections kept for reuse; more may exist while many calls are in flight.
constexpr std::size_t kMaxIdleConnections = 16;

struct ReplyMsg {
  wire::ReplyStatus status = wire::kOk;
  std::vector<std::byte> payload;
};

// One TCP connection attempt to any address of host:port, bounded by `deadline`.
Result<ci::UniqueFd> ConnectOnce(const std::string& host, std::uint16_t port, ci::Deadline deadline) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* res = nullptr;
  const std::string port_str = std::to_string(port);
  int gai = ::getaddrinfo(host.c_str(), port_str.c_str(), &hints, &res);
  if (gai != 0) {
    return IoError(fmt::format("cannot resolve '{}': {}", host, ::gai_strerror(gai)));
  }
  std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> guard(res, &::freeaddrinfo);
  Status last = IoError("no address to connect to");
  for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
    ci::UniqueFd fd(::socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                             ai->ai_protocol));
    if (!fd.valid()) {
      last = ci::SocketError(errno, "socket");
      continue;
    }
    if (::connect(fd.get(), ai->ai_addr, ai->ai_addrlen) != 0) {
      // EINTR on a non-blocking connect: the connection proceeds asynchronously.
      if (errno != EINPROGRESS && errno != EINTR) {
        last = ci::SocketError(errno, "connect");
        continue;
      }
      Status waited = ci::WaitFd(fd.get(), POLLOUT, deadline);
      if (!waited.ok()) {
        last = waited.code() == ErrorCode::kTimedOut ? TimedOut("connect did not complete in time")
                                                     : waited;
        continue;
      }
      int err = 0;
      socklen_t len = sizeof err;
      if (::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
      if (err != 0) {
        last = ci::SocketError(err, "connect");
        continue;
      }
    }
    ci::SetNoDelay(fd.get());
    return fd;
  }
  return last;
}

Status SendRequest(int fd, wire::Op op, std::string_view key, std::span<const std::byte> value,
                   ci::Deadline deadline) {
  std::array<std::byte, wire::kRequestHeadBytes> head{};
  head[0] = static_cast<std::byte>(op);
  ci::StoreU32(head.data() + 1, static_cast<std::uint32_t>(key.size()));
  std::array<std::byte, 8> len{};
  ci::StoreU64(len.data(), value.size());
  const std::array<std::span<const std::byte>, 4> pieces = {
      std::span<const std::byte>(head), std::as_bytes(std::span<const char>(key.data(), key.size())),
      std::span<const std::byte>(len), value};
  return ci::SendAll(fd, pieces, deadline);
}

Result<ReplyMsg> ReadReply(int fd, ci::Deadline deadline) {
  std::array<std::byte, wire::kReplyHeadBytes> head{};
  SW_RETURN_IF_ERROR(ci::RecvExact(fd, head, deadline));
  ReplyMsg reply;
  const auto status = static_cast<std::uint8_t>(head[0]);
  if (status > wire::kUnsupported) {
    return CorruptData(fmt::format("reply has unknown status byte {}", status));
  }
  reply.status = static_cast<wire::ReplyStatus>(status);
  const std::uint64_t len = ci::LoadU64(head.data() + 1);
  if (len > wire::kMaxReplyPayload) {
    return CorruptData(fmt::format("reply payload of {} bytes exceeds the limit of {} bytes", len,
                                   wire::kMaxReplyPayload));
  }
  reply.payload.resize(static_cast<std::size_t>(len));
  SW_RETURN_IF_ERROR(ci::RecvExact(fd, reply.payload, deadline));
  return reply;
}

std::string PayloadText(const ReplyMsg& r) {
  return std::string(reinterpret_cast<const char*>(r.payload.data()), r.payload.size());
}

// HELLO: checks the peer speaks this protocol and returns its instance id.
Result<std::uint64_t> Handshake(int fd, ci::Deadline deadline) {
  SW_RETURN_IF_ERROR(SendRequest(fd, wire::kHello, "", wire::kHelloMagic, deadline));
  SW_ASSIGN_OR_RETURN(ReplyMsg reply, ReadReply(fd, deadline));
  if (reply.status == wire::kUnsupported) return Unsupported(PayloadText(reply));
  if (reply.status != wire::kOk || reply.payload.size() != 8) {
    return CorruptData("unexpected answer to HELLO: the peer is not a compatible rendezvous server");
  }
  return ci::LoadU64(reply.payload.data());
}

}  // namespace

class TcpRendezvousClient::Impl {
 public:
  Impl(std::string host, std::uint16_t port, double request_timeout_s, std::uint64_t server_id)
      : host_(std::move(host)),
        port_(port),
        where_(ci::HostPort(host_, port)),
        request_timeout_s_(request_timeout_s),
        server_id_(server_id) {}

  const std::string& host() const { return host_; }
  std::uint16_t port() const { return port_; }

  void Release(ci::UniqueFd fd) {
    std::lock_guard<std::mutex> lock(mu_);
    if (idle_.size() < kMaxIdleConnections) idle_.push_back(std::move(fd));
  }

  // Borrows an idle connection or opens (and verifies) a new one.
  Result<ci::UniqueFd> Acquire() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!idle_.empty()) {
        ci::UniqueFd fd = std::move(idle_.back());
        idle_.pop_back();
        return fd;
      }
    }
    const ci::Deadline deadline = RequestDeadline();
    auto fd = ConnectOnce(host_, port_, deadline);
    if (!fd.ok()) {
      return PeerDisconnected(fmt::format("rendezvous server {} is no longer reachable: {}", where_,
                                          fd.status().message()));
    }
    auto id = Handshake(fd->get(), deadline);
    if (!id.ok()) return Failed("handshake", id.status());
    if (*id != server_id_) {
      return PeerDisconnected(fmt::format(
          "rendezvous server {} was restarted (instance id changed); the state this client "
          "relied on is gone",
          where_));
    }
    return std::move(fd).value();
  }

  ci::Deadline RequestDeadline() const { return ci::DeadlineAfter(request_timeout_s_); }

  // Annotates a socket/protocol failure with the server and the call.
  Status Failed(std::string_view call, const Status& s) const {
    if (s.code() == ErrorCode::kTimedOut) {
      return TimedOut(fmt::format("rendezvous server {}: {}: no answer within {} s", where_, call,
                                  request_timeout_s_));
    }
    return s.WithContext(fmt::format("rendezvous server {}: {}", where_, call));
  }

  // Turns an error reply into a Status.
  Status ErrorReply(std::string_view call, const ReplyMsg& r) const {
    switch (r.status) {
      case wire::kInvalidArgument: return InvalidArgument(PayloadText(r));
      case wire::kUnsupported: return Unsupported(PayloadText(r));
      default:
        return CorruptData(fmt::format("rendezvous server {}: {}: unexpected reply status {}", where_,
                                       call, static_cast<int>(r.status)));
    }
  }

  // Sends one request and reads its reply on a borrowed connection; the connection
  // goes back to the pool only if the exchange left it in a known state.
  Result<ReplyMsg> Exchange(std::string_view call, wire::Op op, std::string_view key,
                            std::span<const std::byte> value) {
    SW_ASSIGN_OR_RETURN(ci::UniqueFd fd, Acquire());
    const ci::Deadline deadline = RequestDeadline();
    Status sent = SendRequest(fd.get(), op, key, value, deadline);
    if (!sent.ok()) return Failed(call, sent);
    auto reply = ReadReply(fd.get(), deadline);
    if (!reply.ok()) return Failed(call, reply.status());
    Release(std::move(fd));
    return std::move(reply).value();
  }

  Result<std::vector<std::byte>> Get(const std::string& key, double timeout_s) {
    const ci::Deadline key_deadline = ci::DeadlineAfter(timeout_s);
    const std::string call = fmt::format("Get '{}'", key);
    SW_ASSIGN_OR_RETURN(ci::UniqueFd fd, Acquire());
    Status sent = SendRequest(fd.get(), wire::kGet, key, {}, RequestDeadline());
    if (!sent.ok()) return Failed(call, sent);
    // The server holds the GET until the key exists; wait for its answer (or for the
    // socket to close) until our own deadline.
    Status waited = ci::WaitFd(fd.get(), POLLIN, key_deadline);
    if (!waited.ok() && waited.code() != ErrorCode::kTimedOut) return Failed(call, waited);
    if (!waited.ok()) {
      // Timed out: withdraw the GET. The server answers it with NOT_READY, or has
      // already answered it with the value; either way one reply follows.
      Status cancelled = SendRequest(fd.get(), wire::kCancelGet, key, {}, RequestDeadline());
      if (!cancelled.ok()) return Failed(call, cancelled);
    }
    auto reply = ReadReply(fd.get(), RequestDeadline());
    if (!reply.ok()) return Failed(call, reply.status());
    Release(std::move(fd));
    if (reply->status == wire::kOk) return std::move(reply->payload);
    if (reply->status == wire::kNotReady) return ci::GetTimedOut(key, timeout_s);
    return ErrorReply(call, *reply);
  }

 private:
  const std::string host_;
  const std::uint16_t port_;
  const std::string where_;
  const double request_timeout_s_;
  const std::uint64_t server_id_;
  std::mutex mu_;
  std::vector<ci::UniqueFd> idle_;
};

TcpRendezvousClient::TcpRendezvousClient(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
TcpRendezvousClient::~TcpRendezvousClient() = default;

const std::string& TcpRendezvousClient::host() const { return impl_->host(); }
std::uint16_t TcpRendezvousClient::port() const { return impl_->port(); }

Result<std::unique_ptr<TcpRendezvousClient>> TcpRendezvousClient::Connect(const std::string& host,
                                                                          std::uint16_t port,
                                                                          double timeout_s,
                                                                          double request_timeout_s) {
  const std::string where = ci::HostPort(host, port);
  SW_RETURN_IF_ERROR(ci::ValidateTimeout(timeout_s, fmt::format("connect to rendezvous {}", where)));
  SW_RETURN_IF_ERROR(
      ci::ValidateTimeout(request_timeout_s, fmt::format("connect to rendezvous {}", where)));
  if (host.empty()) return InvalidArgument("rendezvous server host is empty");
  if (port == 0) return InvalidArgument(fmt::format("rendezvous server {}: port 0 is not connectable", where));

  const ci::Deadline deadline = ci::DeadlineAfter(timeout_s);
  auto backoff = std::chrono::milliseconds(10);
  Status last = TimedOut("no attempt was made");
  while (true) {
    // Cap each attempt so a black-holed SYN does not eat the whole budget.
    const ci::Deadline attempt_deadline =
        std::min(deadline, ci::Clock::now() + std::chrono::seconds(5));
    auto fd = ConnectOnce(host, port, attempt_deadline);
    if (fd.ok()) {
      auto id = Handshake(fd->get(), ci::DeadlineAfter(request_timeout_s));
      if (id.ok()) {
        auto impl = std::make_unique<Impl>(host, port, request_timeout_s, *id);
        impl->Release(std::move(fd).value());
        return std::unique_ptr<TcpRendezvousClient>(new TcpRendezvousClient(std::move(impl)));
      }
      if (id.status().code() == ErrorCode::kCorruptData ||
          id.status().code() == ErrorCode::kUnsupported) {
        return id.status().WithContext(fmt::format("rendezvous server {}", where));
      }
      last = id.status();  // e.g. the server closed while starting or stopping: retry
    } else {
      last = fd.status();
    }
    const auto left = deadline - ci::Clock::now();
    if (left <= ci::Clock::duration::zero()) break;
    // Nothing to poll on until the server exists: back off before the next attempt.
    std::this_thread::sleep_for(std::min<ci::Clock::duration>(backoff, left));
    backoff = std::min(backoff * 2, std::chrono::milliseconds(200));
  }
  return TimedOut(fmt::format("could not connect to rendezvous server {} within {} s: {}", where,
                              timeout_s, last.ToString()));
}

Status TcpRendezvousClient::Put(const std::string& key, std::span<const std::byte> value) {
  SW_RETURN_IF_ERROR(ci::ValidateKey(key));
  SW_RETURN_IF_ERROR(ci::ValidateValueSize(value.size(), key));
  const std::string call = fmt::format("Put '{}'", key);
  SW_ASSIGN_OR_RETURN(ReplyMsg reply, impl_->Exchange(call, wire::kPut, key, value));
  if (reply.status != wire::kOk) return impl_->ErrorReply(call, reply);
  return Status::Ok();
}

Result<std::vector<std::byte>> TcpRendezvousClient::Get(const std::string& key, double timeout_s) {
  SW_RETURN_IF_ERROR(ci::ValidateKey(key));
  SW_RETURN_IF_ERROR(ci::ValidateTimeout(timeout_s, fmt::format("Get '{}'", key)));
  return impl_->Get(key, timeout_s);
}

Result<std::int64_t> TcpRendezvousClient::Add(const std::string& key, std::int64_t delta) {
  SW_RETURN_IF_ERROR(ci::ValidateKey(key));
  const std::string call = fmt::format("Add '{}'", key);
  std::array<std::byte, 8> d{};
  ci::StoreU64(d.data(), static_cast<std::uint64_t>(delta));
  SW_ASSIGN_OR_RETURN(ReplyMsg reply, impl_->Exchange(call, wire::kAdd, key, d));
  if (reply.status != wire::kOk) return impl_->ErrorReply(call, reply);
  if (reply.payload.size() != 8) {
    return CorruptData(fmt::format("rendezvous server {}:{}: {}: reply of {} bytes, expected 8",
                                   impl_->host(), impl_->port(), call, reply.payload.size()));
  }
  return static_cast<std::int64_t>(ci::LoadU64(reply.payload.data()));
}

}  // namespace shardwire
