// `shardwire describe --checkpoint PATH [--config CONFIG] [--infer] [--write-rules FILE]`:
// prints a checkpoint's tensors with their parallel roles, from its family's rules file
// or, when there is none (or with --infer), from rules inferred from the checkpoint and
// its config (InferModelRules), and writes the rules used to FILE for review.
#pragma once

#include <CLI/CLI.hpp>

namespace shardwire::cli {

void AddDescribeCommand(CLI::App& app, int* exit_code);

}  // namespace shardwire::cli
