// MetricsHttpServer (shardwire/metrics_http.h) over cpp-httplib.
#include "shardwire/metrics_http.h"

#include <fmt/format.h>
#include <httplib.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <atomic>
#include <chrono>
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
    // the listening thread has returned.
    while (thread.joinable() && !listen_returned.load()) {
      server.stop();
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    if (thread.joinable()) thread.join();
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
