// MetricsHttpServer: serves a MetricsRegistry at `GET /metrics` (Prometheus text exposition
// format 0.0.4, Content-Type MetricsRegistry::kContentType) on its own port, with
// cpp-httplib (Debian's libcpp-httplib, https://github.com/yhirose/cpp-httplib).
//
//   MetricsRegistry registry;
//   auto http = MetricsHttpServer::Start(registry, {.port = 9464});
//   // scrape:  curl http://127.0.0.1:9464/metrics
//
// Other paths get 404; methods other than GET and HEAD get 405 before any body is read
// (the port has no token, so a client cannot make the process buffer a large body). The server runs a listening thread
// plus cpp-httplib's worker pool (at most a few threads, idle between scrapes); each scrape renders the registry once.
//
// Thread-safety: Start, port() and the destructor are called by one thread; scrapes are
// served concurrently with any use of the registry.
#pragma once

#include <memory>
#include <string>

#include "shardwire/metrics.h"
#include "shardwire/status.h"

namespace shardwire {

/// Where the metrics endpoint listens.
struct MetricsHttpOptions {
  /// Address to bind, IPv4 or IPv6 literal or a name ("0.0.0.0" for every interface).
  std::string host = "127.0.0.1";
  /// TCP port in [0, 65535]; 0 picks a free port (see MetricsHttpServer::port()).
  int port = 0;
};

/// A running `/metrics` endpoint. Destroying it stops the server and joins its thread
/// within about a second: a scrape in progress may finish for 1 s, then its connection is
/// shut down (a client that trickles a byte every few seconds cannot hold it up; reads time
/// out after 5 s of a silent client).
class MetricsHttpServer {
 public:
  /// Binds host:port (SO_REUSEADDR, not SO_REUSEPORT: a port another process listens on is
  /// an error) and starts serving `registry`, which must outlive the server.
  /// Errors: kInvalidArgument naming the port when it is outside [0, 65535];
  /// kIoError naming host:port when it cannot be bound (in use, not a local address);
  /// kInternal when the listening thread does not start within 5 s.
  static Result<std::unique_ptr<MetricsHttpServer>> Start(const MetricsRegistry& registry,
                                                          MetricsHttpOptions options = {});
  ~MetricsHttpServer();
  MetricsHttpServer(const MetricsHttpServer&) = delete;
  MetricsHttpServer& operator=(const MetricsHttpServer&) = delete;

  /// The bound port (the chosen one when MetricsHttpOptions::port was 0).
  int port() const;
  /// "http://host:port/metrics".
  std::string url() const;

  struct Impl;

 private:
  explicit MetricsHttpServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace shardwire
