// What the rl-sync demo's parent and workers agree on: rendezvous keys and labels.
#pragma once

#include <string>

#include <fmt/format.h>

namespace shardwire::cli {

/// Key under which a worker reports its statistics for one step (a JSON object).
inline std::string StatsKey(const std::string& job, int step, const std::string& role, int rank) {
  return fmt::format("{}/stats/{}/{}/{}", job, step, role, rank);
}

/// Key a trainer puts once it has computed `step`; every trainer waits for all of them
/// before pushing (a real trainer's step ends with a collective optimizer step, so its
/// ranks push together; without this barrier one trainer's push overlaps another's
/// computation on a small host and each push window measures the contention).
inline std::string ComputedKey(const std::string& job, int step, int rank) {
  return fmt::format("{}/computed/{}/{}", job, step, rank);
}

/// With --restart-engines (dynamic membership): the version engine rank `rank` was last admitted
/// at (it joined, or joined again after a missed version). An engine reports no step below it
/// that it did not take part in: the parent counts those steps as missed.
inline std::string AdmittedKey(const std::string& job, int rank) { return fmt::format("{}/admitted/{}", job, rank); }

/// Put by trainer rank 0 after its last push: engines still waiting to join stop.
inline std::string FinishedKey(const std::string& job) { return job + "/finished"; }

/// "engine rank 2": rank 2 of the engine layout (rank = (replica * pp + stage) * tp + tp_rank).
inline std::string EngineRankLabel(int rank) { return fmt::format("engine rank {}", rank); }

}  // namespace shardwire::cli
