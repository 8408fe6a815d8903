// `shardwire info`: what the transport can do on this machine (UCX version,
// transports, memory kinds such as CUDA, probed at run time) and the agent's
// defaults (lanes, slice size, flow-control limits, write path).
#pragma once

#include <CLI/CLI.hpp>

namespace shardwire::cli {

/// Registers the `info` subcommand on `app`; sets *exit_code to 1 when the
/// probe fails (kTransportError from UCX).
void AddInfoCommand(CLI::App& app, int* exit_code);

}  // namespace shardwire::cli
