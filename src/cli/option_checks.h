// CLI11 checks of option values whose failure messages read as a person would write them.
//
// CLI11's own CLI::NonNegativeNumber / CLI::PositiveNumber are ranges up to DBL_MAX and say
// so in full ("Value -1 not in range 0.000000 to 179769313486...000.000000"); these say
// "must be >= 0, got -1".
#pragma once

#include <CLI/CLI.hpp>
#include <string>

namespace shardwire::cli {

/// A check that the option's value is a number >= 0 (inf included; NaN is refused). CLI11
/// then fails the parse with "--OPTION: must be a number >= 0, got VALUE" (exit code 105).
/// Thread-safety: the returned validator is a value; use it from the parsing thread.
CLI::Validator NonNegativeNumber();

/// As NonNegativeNumber, for a number > 0: "--OPTION: must be a number > 0, got VALUE".
CLI::Validator PositiveNumber();

/// As NonNegativeNumber, for a number >= `minimum`: "--OPTION: must be a number >= 0.1, got VALUE".
CLI::Validator AtLeast(double minimum);

/// A check that a string option is not empty, for options whose absence means something else
/// (`serve --redis ""` would otherwise keep the state in memory, `demo rl-sync --coordinator ""`
/// would start an in-process coordinator: what an unset shell variable produces).
/// "--OPTION: must not be empty (what: `what_it_is`)".
CLI::Validator NonEmpty(const std::string& what_it_is);

}  // namespace shardwire::cli
