// `--metrics-port P` of the commands that run long (serve, seed, load, demo rl-sync): serve the
// command's MetricsRegistry at http://127.0.0.1:P/metrics (docs/metrics.md).
#pragma once

#include <CLI/CLI.hpp>
#include <memory>
#include <optional>
#include <string>

#include "shardwire/metrics.h"
#include "shardwire/metrics_http.h"

namespace shardwire::cli {

/// Adds --metrics-port to `cmd`, stored in *port (unset: no metrics). The value is not
/// range-checked here: StartMetricsEndpoint reports a bad port as a typed error.
void AddMetricsPortOption(CLI::App* cmd, std::optional<int>* port);

/// With `port` set: starts the endpoint for `registry` on host:port and prints
/// "shardwire metrics on http://host:port/metrics" on stdout (unless `quiet`). Unset: returns
/// null and `registry` stays unused. Errors: as MetricsHttpServer::Start (kInvalidArgument for
/// a port outside [0, 65535], kIoError for a port in use, each naming the port).
Result<std::unique_ptr<MetricsHttpServer>> StartMetricsEndpoint(const std::optional<int>& port,
                                                                const MetricsRegistry& registry,
                                                                const std::string& host = "127.0.0.1",
                                                                bool quiet = false);

}  // namespace shardwire::cli
