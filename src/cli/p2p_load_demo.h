// `shardwire demo p2p-load`: an embedded coordinator, one seed instance read from
// disk, then waves of new instances with other TP sizes loading from every serving
// instance (one wave loses a source mid-load), each verified byte for byte against
// the checkpoint; then a fleet (1 seed + N loaders started together, bandwidth-capped
// sources) printed round by round.
#pragma once

#include <CLI/CLI.hpp>

namespace shardwire::cli {

void AddP2pLoadCommand(CLI::App& demo, int* exit_code);

}  // namespace shardwire::cli
