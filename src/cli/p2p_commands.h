// `shardwire seed` and `shardwire load`: one P2P-loading instance per process, all
// its ranks inside (one ModelSource / ModelLoader per rank, each with its own agent).
#pragma once

#include <CLI/CLI.hpp>

namespace shardwire::cli {

/// `shardwire seed --coordinator HOST:PORT --checkpoint PATH --layout L`: reads the
/// instance's shards from the checkpoint and serves them as a source until SIGINT /
/// SIGTERM. Prints "SEED READY instance=<id> identity=<digest>" once every rank is
/// registered.
void AddSeedCommand(CLI::App& app, int* exit_code);

/// `shardwire load --coordinator HOST:PORT --config CONFIG --layout L
/// [--verify-against CHECKPOINT] [--serve]`: loads every rank from the coordinator's
/// sources, prints one "LOADED ..." line (and a line per rank), verifies byte for
/// byte when asked, and with --serve serves the loaded instance until interrupted.
/// Exit code 0 on a committed (and verified) load, 1 otherwise.
void AddLoadCommand(CLI::App& app, int* exit_code);

}  // namespace shardwire::cli
