// MetricsHttpServer (shardwire/metrics_http.h) over cpp-httplib.
#include "shardwire/metrics_http.h"

#include <fmt/format.h>
#include <httplib.h>
#include <netinet/in.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <thread>

namespace shardwire {

struct MetricsHttpServer::Impl {
  httplib::Server server;
  std::thread thread;
  std::atomic<bool> listen_returned{false};
  std::string host;
  int port = 0;

  ~Impl() {
    // httplib's stop() acts only on a running server; a listen that had not started yet (the
    // 5 s start-failure path of Start) would start afterwards and never return. So stop until
    // the listening thread has returned. That thread joins httplib's workers, and a worker
    // serving a client that sends a byte every few seconds never ends by itself (the read
    // timeout is per read): after kShutdownGrace its connection is shut down under it.
    const auto start = std::chrono::steady_clock::now();
    auto next_cut = start + kShutdownGrace;
    while (thread.joinable() && !listen_returned.load()) {
      server.stop();
      if (port > 0 && std::chrono::steady_clock::now() >= next_cut) {
        ShutDownAcceptedConnections(port);
        next_cut += std::chrono::milliseconds(50);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    if (thread.joinable()) thread.join();
  }

  // How long a scrape in progress may go on after the destructor began.
  static constexpr std::chrono::seconds kShutdownGrace{1};

  // shutdown(SHUT_RDWR) of every connected TCP socket of this process whose local port is
  // `port`: the connections the listener on `port` accepted (an outgoing connection has an
  // ephemeral local port, never a port a listener holds). A worker blocked reading one then
  // sees end-of-file and returns. The fds are found in /proc/self/fd; each is checked and shut
  // down in two consecutive calls.
  static void ShutDownAcceptedConnections(int port) {
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd", ec)) {
      int fd = -1;
      try {
        fd = std::stoi(entry.path().filename().string());
      } catch (...) {
        continue;
      }
      sockaddr_storage local{};
      socklen_t len = sizeof(local);
      if (getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) != 0) continue;
      int local_port = -1;
      if (local.ss_family == AF_INET) local_port = ntohs(reinterpret_cast<const sockaddr_in&>(local).sin_port);
      if (local.ss_family == AF_INET6) local_port = ntohs(reinterpret_cast<const sockaddr_in6&>(local).sin6_port);
      if (local_port != port) continue;
      sockaddr_storage peer{};
      len = sizeof(peer);
      if (getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &len) != 0) continue;  // the listener
      ::shutdown(fd, SHUT_RDWR);
    }
  }
};

Result<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Start(const MetricsRegistry& registry,
                                                                    MetricsHttpOptions options) {
  if (options.port < 0 || options.port > 65535) {
    return InvalidArgument(fmt::format("metrics port {} is outside [0, 65535]", options.port));
  }
  auto impl = std::make_unique<Impl>();
  impl->host = options.host;
  // cpp-httplib's default sets SO_REUSEPORT, which lets a second server bind a port that is in
  // use (the kernel then splits the connections between them): SO_REUSEADDR only.
  impl->server.set_socket_options([](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  impl->server.set_read_timeout(5, 0);
  impl->server.set_write_timeout(5, 0);
  // Only GET and HEAD are served. Anything else is answered before its body is read: cpp-httplib
  // 0.11 reads a POST/PUT/PATCH/DELETE body whole into memory, with no limit for a chunked one,
  // before routing (a 1 GB POST grew the process by 1 GB), and this port has no token.
  impl->server.set_pre_routing_handler([](const httplib::Request& req, httplib::Response& res) {
    if (req.method == "GET" || req.method == "HEAD") return httplib::Server::HandlerResponse::Unhandled;
    res.status = 405;
    res.set_header("Allow", "GET, HEAD");
    res.set_header("Connection", "close");
    return httplib::Server::HandlerResponse::Handled;
  });
  const MetricsRegistry* reg = &registry;
  impl->server.Get("/metrics", [reg](const httplib::Request&, httplib::Response& res) {
    res.set_content(reg->Render(), std::string(MetricsRegistry::kContentType).c_str());
  });
  if (options.port == 0) {
    const int bound = impl->server.bind_to_any_port(options.host);
    if (bound <= 0) return IoError(fmt::format("metrics endpoint cannot bind {}:0 (not a local address?)", options.host));
    impl->port = bound;
  } else {
    if (!impl->server.bind_to_port(options.host, options.port)) {
      return IoError(fmt::format("metrics endpoint cannot bind {}:{} (port in use, or not a local address)",
                                 options.host, options.port));
    }
    impl->port = options.port;
  }
  Impl* raw = impl.get();
  impl->thread = std::thread([raw] {
    raw->server.listen_after_bind();
    raw->listen_returned.store(true);
  });
  // listen_after_bind sets is_running before it accepts; the socket already queues
  // connections, so this wait only makes "running" observable to the caller.
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (!impl->server.is_running()) {
    if (std::chrono::steady_clock::now() > until) {
      return Internal(fmt::format("metrics endpoint on {}:{} did not start within 5 s", options.host, impl->port));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  spdlog::debug("metrics endpoint listening on http://{}:{}/metrics", options.host, impl->port);
  return std::unique_ptr<MetricsHttpServer>(new MetricsHttpServer(std::move(impl)));
}

MetricsHttpServer::MetricsHttpServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
MetricsHttpServer::~MetricsHttpServer() = default;

int MetricsHttpServer::port() const { return impl_->port; }

std::string MetricsHttpServer::url() const {
  if (impl_->host.find(':') != std::string::npos) return fmt::format("http://[{}]:{}/metrics", impl_->host, impl_->port);
  return fmt::format("http://{}:{}/metrics", impl_->host, impl_->port);
}

}  // namespace shardwire
