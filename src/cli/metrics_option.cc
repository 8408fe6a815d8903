#include "cli/metrics_option.h"

#include <fmt/format.h>

#include <cstdio>

namespace shardwire::cli {

void AddMetricsPortOption(CLI::App* cmd, std::optional<int>* port) {
  cmd->add_option("--metrics-port", *port,
                  "serve Prometheus metrics at http://HOST:PORT/metrics (0: pick a free port; default: off)");
}

Result<std::unique_ptr<MetricsHttpServer>> StartMetricsEndpoint(const std::optional<int>& port,
                                                                const MetricsRegistry& registry,
                                                                const std::string& host, bool quiet) {
  if (!port) return std::unique_ptr<MetricsHttpServer>();
  SW_ASSIGN_OR_RETURN(auto http, MetricsHttpServer::Start(registry, {.host = host, .port = *port}));
  if (!quiet) {
    fmt::print("shardwire metrics on {}\n", http->url());
    std::fflush(stdout);
  }
  return http;
}

}  // namespace shardwire::cli
