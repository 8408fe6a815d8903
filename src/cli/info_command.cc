#include "cli/info_command.h"

#include <fmt/format.h>

#include "shardwire/agent.h"
#include "shardwire/transport_capabilities.h"

namespace shardwire::cli {

void AddInfoCommand(CLI::App& app, int* exit_code) {
  CLI::App* cmd = app.add_subcommand("info", "print the transport's capabilities on this machine (UCX transports, "
                                             "memory kinds) and the agent's defaults");
  cmd->callback([exit_code] {
    auto caps = ProbeTransportCapabilities();
    if (!caps.ok()) {
      fmt::print(stderr, "shardwire info: {}\n", caps.status().ToString());
      *exit_code = 1;
      return;
    }
    fmt::print("UCX {}\n\nmemory kinds:\n", caps->ucx_version);
    for (const auto& m : caps->memory_kinds)
      fmt::print("  {:<13} {:<14} {}\n", m.kind, m.available ? "available" : "not available", m.detail);
    fmt::print("\ntransports (component/memory domain: transport/device):\n");
    for (const auto& t : caps->transports) fmt::print("  {}\n", t);
    const AgentOptions d;
    fmt::print("\nagent defaults:\n");
    fmt::print("  backend                       {}\n", d.backend);
    fmt::print("  lanes                         {} (UCX workers, one progress thread each)\n", kDefaultLanes);
    fmt::print("  slice                         {} bytes\n", d.slice_bytes);
    fmt::print("  flow control per peer         {} operations, {} bytes in flight\n", d.max_ops_in_flight_per_peer,
               d.max_bytes_in_flight_per_peer);
    fmt::print("  write path                    {} (active messages when a peer is reachable only over TCP)\n",
               WritePathName(d.write_path));
    fmt::print("  ucx.failure_detection         {}\n",
               d.ucx.failure_detection == PeerFailureDetection::kAuto
                   ? "auto (same host: process liveness; other hosts: UCX peer error handling)"
                   : "ucx-peer");
    fmt::print("  ucx.keepalive_interval_s      {} s\n", d.ucx.keepalive_interval_s);
    fmt::print("  ucx.local_message_sockets     {}\n",
               d.ucx.local_message_sockets ? "yes (same-host messages on Unix-domain sockets)"
                                           : "no (UCX active messages)");
    fmt::print("  pre-fault remote arenas       {}\n", d.prefault_remote ? "yes" : "no");
    if (!caps->known_defects.empty()) {
      fmt::print("\nknown defects of this UCX (not guarded by Shardwire):\n");
      for (const auto& defect : caps->known_defects) fmt::print("  - {}\n", defect);
    }
  });
}

}  // namespace shardwire::cli
