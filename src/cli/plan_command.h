// `shardwire plan`: plan a resharding between two layouts of a model and summarise it.
#pragma once

#include <CLI/CLI.hpp>

namespace shardwire::cli {

/// Registers `plan` on `app`; the callback stores its exit code.
void AddPlanCommand(CLI::App& app, int* exit_code);

}  // namespace shardwire::cli
