// What the rl-sync demo's parent and workers agree on: rendezvous keys and labels.
#pragma once

#include <string>

#include <fmt/format.h>

namespace shardwire::demo {

/// Key under which a worker reports its statistics for one step (a JSON object).
inline std::string StatsKey(const std::string& job, int step, const std::string& role, int rank) {
  return fmt::format("{}/stats/{}/{}/{}", job, step, role, rank);
}

/// "engine 1 tp-rank 0" for global engine rank 2 with TP 2.
inline std::string EngineRankLabel(int rank, int tp) {
  return fmt::format("engine {} tp-rank {}", rank / tp, rank % tp);
}

}  // namespace shardwire::demo
