// `--model-rules FILE` (repeatable) for every command that describes a model: each file
// is loaded and registered (AddUserModelRules) while the command line is parsed, before
// the command runs, so DescribeModel uses it for the model types it names. A file that
// does not load fails the parse with its "<file>:<line>: ..." message.
#pragma once

#include <string>
#include <vector>

#include <CLI/CLI.hpp>

namespace shardwire::cli {

/// Adds --model-rules to `cmd`.
void AddModelRulesOption(CLI::App* cmd);

/// Every file given with --model-rules so far (absolute paths), to pass on to child
/// processes.
const std::vector<std::string>& ModelRulesFiles();

}  // namespace shardwire::cli
