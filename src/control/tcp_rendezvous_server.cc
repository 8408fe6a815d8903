// TcpRendezvousServer: a single-threaded poll() event loop over non-blocking sockets.
//
// Each connection reads one request at a time straight into its frame fields (so an
// oversized length is rejected after its 4 or 8 bytes, before any allocation), is
// answered, and only then is its next request read. A GET of a missing key parks
// the connection in `waiters_`; a PUT/ADD of that key answers every parked GET.
// Values are shared_ptr so one 64 MiB value sent to many waiters is never copied.
#include "shardwire/tcp_rendezvous.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <mutex>
#include <random>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "control/rendezvous_internal.h"
#include "control/socket_util.h"
#include "control/wire.h"

namespace shardwire {

namespace ci = control_internal;
namespace wire = control_internal::wire;
using Bytes = std::vector<std::byte>;
using SharedBytes = std::shared_ptr<const Bytes>;

namespace {

std::string PeerName(const sockaddr_storage& addr) {
  char host[NI_MAXHOST] = "?";
  char serv[NI_MAXSERV] = "?";
  if (::getnameinfo(reinterpret_cast<const sockaddr*>(&addr), sizeof addr, host, sizeof host, serv,
                    sizeof serv, NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
    return "unknown peer";
  }
  return ci::HostPort(host, static_cast<std::uint16_t>(std::atoi(serv)));
}

std::uint64_t RandomInstanceId() {
  std::random_device rd;
  std::uint64_t id = (static_cast<std::uint64_t>(rd()) << 32) ^ rd();
  id ^= static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  return id == 0 ? 1 : id;
}

struct Connection {
  enum class Stage { kHead, kKey, kValueLen, kValue };

  std::uint64_t id = 0;
  ci::UniqueFd fd;
  std::string peer;

  // The request being read.
  Stage stage = Stage::kHead;
  std::array<std::byte, 8> small{};  // head (5 bytes) or value length (8 bytes)
  std::size_t got = 0;               // bytes of the current stage received
  std::uint8_t op = 0;
  std::string key;
  std::uint64_t value_len = 0;
  Bytes value;  // grows as bytes arrive, so memory follows what the peer really sent

  // A GET parked until its key appears.
  bool waiting = false;
  std::string waiting_key;

  // The reply being written: head + body.
  bool has_out = false;
  std::array<std::byte, wire::kReplyHeadBytes> out_head{};
  SharedBytes out_body;
  std::size_t out_sent = 0;

  bool closing = false;
};

}  // namespace

class TcpRendezvousServer::Impl {
 public:
  Impl(ci::UniqueFd listen_fd, ci::UniqueFd wake_r, ci::UniqueFd wake_w, std::uint16_t port,
       std::string where)
      : listen_fd_(std::move(listen_fd)),
        wake_r_(std::move(wake_r)),
        wake_w_(std::move(wake_w)),
        port_(port),
        where_(std::move(where)),
        instance_id_(RandomInstanceId()) {}

  void StartThread() { thread_ = std::thread([this] { Loop(); }); }

  std::uint16_t port() const { return port_; }

  void Stop() {
    std::lock_guard<std::mutex> lock(stop_mu_);
    if (stopped_) return;
    stopped_ = true;
    const char byte = 1;
    while (::write(wake_w_.get(), &byte, 1) < 0 && errno == EINTR) {
    }
    if (thread_.joinable()) thread_.join();
    conns_.clear();
    waiters_.clear();
    store_.clear();
    listen_fd_.Reset();
    spdlog::info("rendezvous server on {} stopped", where_);
  }

 private:
  void Loop();
  void AcceptAll();
  void OnReadable(Connection& c);
  void OnWritable(Connection& c);
  // Called when the current stage of `c`'s request is complete. false = close.
  bool StageComplete(Connection& c);
  void Dispatch(Connection& c);
  void Reply(Connection& c, wire::ReplyStatus status, SharedBytes body);
  void ReplyBytes(Connection& c, wire::ReplyStatus status, const void* data, std::size_t size);
  void WakeWaiters(const std::string& key, const SharedBytes& value);
  void Drop(Connection& c, std::string_view why, bool warn);
  void Erase(std::uint64_t id);

  ci::UniqueFd listen_fd_;
  ci::UniqueFd wake_r_;
  ci::UniqueFd wake_w_;
  const std::uint16_t port_;
  const std::string where_;
  const std::uint64_t instance_id_;

  std::thread thread_;
  std::mutex stop_mu_;
  bool stopped_ = false;

  // Touched only by the server thread (and by Stop after joining it).
  std::uint64_t next_id_ = 1;
  std::unordered_map<std::uint64_t, std::unique_ptr<Connection>> conns_;
  std::unordered_map<std::string, SharedBytes> store_;
  std::unordered_map<std::string, std::unordered_set<std::uint64_t>> waiters_;
  ci::Deadline accept_paused_until_{};
};

void TcpRendezvousServer::Impl::Loop() {
  std::vector<pollfd> pfds;
  std::vector<std::uint64_t> ids;
  while (true) {
    pfds.clear();
    ids.clear();
    const bool accept_paused = ci::Clock::now() < accept_paused_until_;
    pfds.push_back(pollfd{wake_r_.get(), POLLIN, 0});
    pfds.push_back(pollfd{listen_fd_.get(), static_cast<short>(accept_paused ? 0 : POLLIN), 0});
    for (auto& [id, c] : conns_) {
      pfds.push_back(pollfd{c->fd.get(), static_cast<short>(c->has_out ? POLLOUT : POLLIN), 0});
      ids.push_back(id);
    }
    int timeout = accept_paused ? ci::PollTimeoutMs(accept_paused_until_) : -1;
    int r = ::poll(pfds.data(), pfds.size(), timeout);
    if (r < 0) {
      if (errno == EINTR) continue;
      spdlog::error("rendezvous server on {}: poll failed ({}); shutting down", where_,
                    ci::ErrnoText(errno));
      break;
    }
    if (pfds[0].revents != 0) break;  // Stop()
    if (pfds[1].revents != 0) AcceptAll();
    for (std::size_t i = 0; i < ids.size(); ++i) {
      const short rev = pfds[i + 2].revents;
      if (rev == 0) continue;
      auto it = conns_.find(ids[i]);
      if (it == conns_.end()) continue;
      Connection& c = *it->second;
      if (c.closing) continue;
      if (rev & (POLLERR | POLLHUP | POLLNVAL)) {
        // Reset, fully closed or invalid: nothing more can be read or answered.
        Drop(c, (rev & POLLNVAL) ? "invalid descriptor"
                : (rev & POLLERR) ? "socket error"
                                  : "peer hung up",
             false);
      } else if (rev & POLLOUT) {
        OnWritable(c);
      } else if (rev & POLLIN) {
        OnReadable(c);
      }
    }
    for (auto it = conns_.begin(); it != conns_.end();) {
      if (it->second->closing) {
        std::uint64_t id = it->first;
        ++it;
        Erase(id);
      } else {
        ++it;
      }
    }
  }
  // Close every connection here, whether stopping or failing, so that no client
  // is left waiting on a server that no longer answers.
  waiters_.clear();
  conns_.clear();
  listen_fd_.Reset();
}

void TcpRendezvousServer::Impl::AcceptAll() {
  while (true) {
    sockaddr_storage addr{};
    socklen_t len = sizeof addr;
    int fd = ::accept4(listen_fd_.get(), reinterpret_cast<sockaddr*>(&addr), &len,
                       SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      const int err = errno;
      if (err == EINTR || err == ECONNABORTED) continue;
      if (err == EAGAIN || err == EWOULDBLOCK) return;
      spdlog::warn("rendezvous server on {}: accept failed ({}); pausing accepts for 100 ms",
                   where_, ci::ErrnoText(err));
      accept_paused_until_ = ci::Clock::now() + std::chrono::milliseconds(100);
      return;
    }
    ci::SetNoDelay(fd);
    auto c = std::make_unique<Connection>();
    c->fd = ci::UniqueFd(fd);
    c->peer = PeerName(addr);
    const std::uint64_t id = next_id_++;
    c->id = id;
    spdlog::debug("rendezvous server on {}: connection from {}", where_, c->peer);
    conns_.emplace(id, std::move(c));
  }
}

void TcpRendezvousServer::Impl::Drop(Connection& c, std::string_view why, bool warn) {
  if (c.closing) return;
  if (warn) {
    spdlog::warn("rendezvous server on {}: closing connection from {}: {}", where_, c.peer, why);
  } else {
    spdlog::debug("rendezvous server on {}: connection from {} closed: {}", where_, c.peer, why);
  }
  c.closing = true;
}

void TcpRendezvousServer::Impl::Erase(std::uint64_t id) {
  auto it = conns_.find(id);
  if (it == conns_.end()) return;
  Connection& c = *it->second;
  if (c.waiting) {
    auto w = waiters_.find(c.waiting_key);
    if (w != waiters_.end()) {
      w->second.erase(id);
      if (w->second.empty()) waiters_.erase(w);
    }
  }
  conns_.erase(it);
}

void TcpRendezvousServer::Impl::OnReadable(Connection& c) {
  // Read until the socket is drained, one request at a time; stop while a reply
  // is still being written (back-pressure on clients that do not read).
  while (!c.closing && !c.has_out) {
    std::byte* dst = nullptr;
    std::size_t need = 0;
    switch (c.stage) {
      case Connection::Stage::kHead:
        dst = c.small.data() + c.got;
        need = wire::kRequestHeadBytes - c.got;
        break;
      case Connection::Stage::kKey:
        dst = reinterpret_cast<std::byte*>(c.key.data()) + c.got;
        need = c.key.size() - c.got;
        break;
      case Connection::Stage::kValueLen:
        dst = c.small.data() + c.got;
        need = 8 - c.got;
        break;
      case Connection::Stage::kValue:
        if (c.value.size() == c.got) {
          const std::size_t grown = std::max<std::size_t>(c.value.size() * 2, 64 * 1024);
          const auto size = static_cast<std::size_t>(std::min<std::uint64_t>(c.value_len, grown));
          c.value.reserve(size);  // exact capacity: the stored value wastes no memory
          c.value.resize(size);
        }
        dst = c.value.data() + c.got;
        need = c.value.size() - c.got;
        break;
    }
    ssize_t n = ::recv(c.fd.get(), dst, need, 0);
    if (n == 0) {
      const bool mid_frame = c.stage != Connection::Stage::kHead || c.got > 0;
      Drop(c, mid_frame ? "peer closed the connection in the middle of a request" : "peer closed",
           mid_frame);
      return;
    }
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;
      Drop(c, fmt::format("recv failed: {}", ci::ErrnoText(errno)), false);
      return;
    }
    c.got += static_cast<std::size_t>(n);
    const bool stage_done = c.stage == Connection::Stage::kValue
                                ? c.got == c.value_len
                                : static_cast<std::size_t>(n) == need;  // need = rest of stage
    if (stage_done && !StageComplete(c)) return;
  }
}

bool TcpRendezvousServer::Impl::StageComplete(Connection& c) {
  switch (c.stage) {
    case Connection::Stage::kHead: {
      c.op = static_cast<std::uint8_t>(c.small[0]);
      const std::uint32_t key_len = ci::LoadU32(c.small.data() + 1);
      switch (c.op) {
        case wire::kHello:
        case wire::kPut:
        case wire::kGet:
        case wire::kCancelGet:
        case wire::kAdd:
          break;
        default:
          Drop(c, fmt::format("malformed frame: unknown op {}", c.op), true);
          return false;
      }
      if (c.waiting && c.op != wire::kCancelGet) {
        Drop(c, fmt::format("protocol violation: op {} sent while a GET of '{}' is pending", c.op,
                            c.waiting_key),
             true);
        return false;
      }
      const bool hello = c.op == wire::kHello;
      if (hello ? key_len != 0 : (key_len == 0 || key_len > kMaxRendezvousKeyBytes)) {
        Drop(c, fmt::format("malformed frame: key length {} for op {} (allowed: {})", key_len, c.op,
                            hello ? "0" : fmt::format("1..{}", kMaxRendezvousKeyBytes)),
             true);
        return false;
      }
      c.key.assign(key_len, '\0');
      c.got = 0;
      c.stage = key_len == 0 ? Connection::Stage::kValueLen : Connection::Stage::kKey;
      return true;
    }
    case Connection::Stage::kKey:
      c.got = 0;
      c.stage = Connection::Stage::kValueLen;
      return true;
    case Connection::Stage::kValueLen: {
      const std::uint64_t len = ci::LoadU64(c.small.data());
      bool ok = false;
      switch (c.op) {
        case wire::kHello: ok = len == wire::kHelloMagic.size(); break;
        case wire::kPut: ok = len <= kMaxRendezvousValueBytes; break;
        case wire::kGet:
        case wire::kCancelGet: ok = len == 0; break;
        case wire::kAdd: ok = len == 8; break;
        default: break;
      }
      if (!ok) {
        Drop(c, fmt::format("malformed frame: value length {} not allowed for op {} (key '{}')", len,
                            c.op, c.key.substr(0, 128)),
             true);
        return false;
      }
      c.value_len = len;
      c.value.clear();
      c.got = 0;
      c.stage = Connection::Stage::kValue;
      if (len > 0) return true;
      [[fallthrough]];
    }
    case Connection::Stage::kValue:
      c.got = 0;
      c.stage = Connection::Stage::kHead;
      Dispatch(c);
      return !c.closing;
  }
  return false;
}

void TcpRendezvousServer::Impl::Dispatch(Connection& c) {
  switch (c.op) {
    case wire::kHello: {
      if (!std::equal(c.value.begin(), c.value.end(), wire::kHelloMagic.begin())) {
        static constexpr std::string_view kMsg = "unsupported rendezvous protocol version";
        spdlog::warn("rendezvous server on {}: {} from {}", where_, kMsg, c.peer);
        ReplyBytes(c, wire::kUnsupported, kMsg.data(), kMsg.size());
        return;
      }
      std::array<std::byte, 8> id{};
      ci::StoreU64(id.data(), instance_id_);
      ReplyBytes(c, wire::kOk, id.data(), id.size());
      return;
    }
    case wire::kPut: {
      auto v = std::make_shared<const Bytes>(std::move(c.value));
      c.value = Bytes();
      store_[c.key] = v;
      Reply(c, wire::kOk, nullptr);
      WakeWaiters(c.key, v);
      return;
    }
    case wire::kGet: {
      auto it = store_.find(c.key);
      if (it != store_.end()) {
        Reply(c, wire::kOk, it->second);
        return;
      }
      c.waiting = true;
      c.waiting_key = c.key;
      waiters_[c.key].insert(c.id);
      return;
    }
    case wire::kCancelGet: {
      if (!c.waiting) return;  // the GET was answered already; that answer is its reply
      if (c.waiting_key != c.key) {
        Drop(c, fmt::format("protocol violation: CANCEL_GET of '{}' while the GET of '{}' is pending",
                            c.key, c.waiting_key),
             true);
        return;
      }
      auto w = waiters_.find(c.key);
      if (w != waiters_.end()) {
        w->second.erase(c.id);
        if (w->second.empty()) waiters_.erase(w);
      }
      c.waiting = false;
      c.waiting_key.clear();
      Reply(c, wire::kNotReady, nullptr);
      return;
    }
    case wire::kAdd: {
      const auto delta = static_cast<std::int64_t>(ci::LoadU64(c.value.data()));
      auto it = store_.find(c.key);
      Bytes encoded;
      auto now = ci::ApplyAdd(it == store_.end() ? nullptr : it->second.get(), delta, c.key, &encoded);
      if (!now.ok()) {
        const std::string& m = now.status().message();
        ReplyBytes(c, wire::kInvalidArgument, m.data(), m.size());
        return;
      }
      auto v = std::make_shared<const Bytes>(std::move(encoded));
      store_[c.key] = v;
      std::array<std::byte, 8> out{};
      ci::StoreU64(out.data(), static_cast<std::uint64_t>(*now));
      ReplyBytes(c, wire::kOk, out.data(), out.size());
      WakeWaiters(c.key, v);
      return;
    }
    default:
      Drop(c, "internal: unexpected op", true);
  }
}

void TcpRendezvousServer::Impl::ReplyBytes(Connection& c, wire::ReplyStatus status,
                                           const void* data, std::size_t size) {
  const auto* b = static_cast<const std::byte*>(data);
  Reply(c, status, std::make_shared<const Bytes>(b, b + size));
}

void TcpRendezvousServer::Impl::Reply(Connection& c, wire::ReplyStatus status, SharedBytes body) {
  c.out_head[0] = static_cast<std::byte>(status);
  ci::StoreU64(c.out_head.data() + 1, body ? body->size() : 0);
  c.out_body = std::move(body);
  c.out_sent = 0;
  c.has_out = true;
  OnWritable(c);  // most replies fit the socket buffer: send now
}

void TcpRendezvousServer::Impl::OnWritable(Connection& c) {
  const std::size_t body_size = c.out_body ? c.out_body->size() : 0;
  const std::size_t total = c.out_head.size() + body_size;
  while (c.has_out && !c.closing) {
    std::array<iovec, 2> iov{};
    int n_iov = 0;
    if (c.out_sent < c.out_head.size()) {
      iov[n_iov++] = iovec{c.out_head.data() + c.out_sent, c.out_head.size() - c.out_sent};
    }
    const std::size_t body_off = c.out_sent > c.out_head.size() ? c.out_sent - c.out_head.size() : 0;
    if (body_off < body_size) {
      iov[n_iov++] = iovec{const_cast<std::byte*>(c.out_body->data()) + body_off, body_size - body_off};
    }
    msghdr msg{};
    msg.msg_iov = iov.data();
    msg.msg_iovlen = static_cast<std::size_t>(n_iov);
    ssize_t n = ::sendmsg(c.fd.get(), &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;  // poll for POLLOUT
      Drop(c, fmt::format("send failed: {}", ci::ErrnoText(errno)), false);
      return;
    }
    c.out_sent += static_cast<std::size_t>(n);
    if (c.out_sent == total) {
      c.has_out = false;
      c.out_body.reset();
      c.out_sent = 0;
    }
  }
  // Requests may have arrived while the reply was pending; their POLLIN is seen on
  // the next loop iteration (level-triggered), so nothing is lost here.
}

void TcpRendezvousServer::Impl::WakeWaiters(const std::string& key, const SharedBytes& value) {
  auto w = waiters_.find(key);
  if (w == waiters_.end()) return;
  std::unordered_set<std::uint64_t> ids = std::move(w->second);
  waiters_.erase(w);
  for (std::uint64_t id : ids) {
    auto it = conns_.find(id);
    if (it == conns_.end()) continue;
    Connection& c = *it->second;
    c.waiting = false;
    c.waiting_key.clear();
    if (!c.closing) Reply(c, wire::kOk, value);
  }
}

// ---------------------------------------------------------------------------

TcpRendezvousServer::TcpRendezvousServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

TcpRendezvousServer::~TcpRendezvousServer() { Stop(); }

std::uint16_t TcpRendezvousServer::port() const { return impl_->port(); }

void TcpRendezvousServer::Stop() { impl_->Stop(); }

Result<std::unique_ptr<TcpRendezvousServer>> TcpRendezvousServer::Start(const std::string& bind_host,
                                                                        std::uint16_t port) {
  const std::string where = ci::HostPort(bind_host, port);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* res = nullptr;
  const std::string port_str = std::to_string(port);
  int gai = ::getaddrinfo(bind_host.empty() ? nullptr : bind_host.c_str(), port_str.c_str(), &hints, &res);
  if (gai != 0) {
    return InvalidArgument(fmt::format("cannot start rendezvous server on {}: cannot resolve '{}': {}",
                                       where, bind_host, ::gai_strerror(gai)));
  }
  std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> guard(res, &::freeaddrinfo);

  ci::UniqueFd listen_fd;
  Status last = IoError(fmt::format("cannot start rendezvous server on {}: no usable address", where));
  for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
    ci::UniqueFd fd(::socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                             ai->ai_protocol));
    if (!fd.valid()) {
      last = ci::SocketError(errno, fmt::format("cannot start rendezvous server on {}: socket", where));
      continue;
    }
    int one = 1;
    (void)::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (::bind(fd.get(), ai->ai_addr, ai->ai_addrlen) != 0) {
      const int err = errno;
      if (err == EADDRINUSE) {
        return IoError(fmt::format("cannot start rendezvous server on {}: port {} is already in use",
                                   where, port));
      }
      last = IoError(fmt::format("cannot start rendezvous server on {}: bind: {}", where,
                                 ci::ErrnoText(err)));
      continue;
    }
    if (::listen(fd.get(), SOMAXCONN) != 0) {
      const int err = errno;
      if (err == EADDRINUSE) {
        return IoError(fmt::format("cannot start rendezvous server on {}: port {} is already in use",
                                   where, port));
      }
      last = IoError(fmt::format("cannot start rendezvous server on {}: listen: {}", where,
                                 ci::ErrnoText(err)));
      continue;
    }
    listen_fd = std::move(fd);
    break;
  }
  if (!listen_fd.valid()) return last;

  sockaddr_storage bound{};
  socklen_t bound_len = sizeof bound;
  if (::getsockname(listen_fd.get(), reinterpret_cast<sockaddr*>(&bound), &bound_len) != 0) {
    return ci::SocketError(errno, fmt::format("cannot start rendezvous server on {}: getsockname", where));
  }
  std::uint16_t actual = 0;
  if (bound.ss_family == AF_INET) {
    actual = ntohs(reinterpret_cast<const sockaddr_in*>(&bound)->sin_port);
  } else if (bound.ss_family == AF_INET6) {
    actual = ntohs(reinterpret_cast<const sockaddr_in6*>(&bound)->sin6_port);
  }

  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_NONBLOCK | O_CLOEXEC) != 0) {
    return ci::SocketError(errno, fmt::format("cannot start rendezvous server on {}: pipe", where));
  }
  const std::string actual_where = ci::HostPort(bind_host, actual);
  auto impl = std::make_unique<Impl>(std::move(listen_fd), ci::UniqueFd(pipe_fds[0]),
                                     ci::UniqueFd(pipe_fds[1]), actual, actual_where);
  impl->StartThread();
  spdlog::info("rendezvous server listening on {}", actual_where);
  return std::unique_ptr<TcpRendezvousServer>(new TcpRendezvousServer(std::move(impl)));
}

}  // namespace shardwire
