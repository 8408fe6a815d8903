// `shardwire serve`: runs a standalone coordinator (gRPC service, coordinator.h)
// until SIGINT or SIGTERM. Prints "shardwire coordinator listening on HOST:PORT"
// on stdout once it serves (tests and scripts wait for that line).
#pragma once

#include <CLI/CLI.hpp>

namespace shardwire::cli {

/// Default TCP port of `shardwire serve`.
inline constexpr int kDefaultCoordinatorPort = 29700;

/// Registers the `serve` subcommand on `app`; sets *exit_code to 1 when the
/// coordinator cannot start (port in use, unreadable token or TLS files, Redis
/// unreachable).
void AddServeCommand(CLI::App& app, int* exit_code);

}  // namespace shardwire::cli
