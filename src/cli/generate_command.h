// `shardwire generate`: write a checkpoint with a real model's shapes.
#pragma once

#include <CLI/CLI.hpp>

namespace shardwire::cli {

void AddGenerateCommand(CLI::App& app, int* exit_code);

}  // namespace shardwire::cli
