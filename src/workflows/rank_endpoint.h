// The transport side every weight-sync rank has: an agent, one registered buffer for
// its shards, and its metadata published under a rendezvous key.
#pragma once

#include <functional>
#include <memory>
#include <span>
#include <string>

#include "shardwire/agent.h"
#include "shardwire/rendezvous.h"
#include "shardwire/status.h"

namespace shardwire::sync {

struct RankEndpoint {
  std::unique_ptr<Agent> agent;
  RegionId region = 0;           ///< the shard buffer's region
  std::span<std::byte> weights;  ///< the shard buffer (may be empty)
};

/// Creates the agent named "<job>/<role>/<rank>", allocates `buffer_bytes` as an arena
/// (or, when `caller_buffer` is non-empty, registers that caller-owned memory in place) and
/// publishes {metadata blob, region id} under MetadataKey(job, role, rank).
/// Errors: kInvalidArgument when caller_buffer is non-empty but smaller than buffer_bytes;
/// transport and rendezvous errors.
Result<RankEndpoint> OpenRankEndpoint(Rendezvous& rendezvous, const std::string& job, const std::string& role, int rank,
                                      std::uint64_t buffer_bytes, std::span<std::byte> caller_buffer = {});

/// A peer rank imported into `agent`: its agent name and its shard buffer's region.
struct PeerRank {
  std::string name;
  RegionId region = 0;
};

/// Waits for the peer's published metadata (up to timeout_s) and imports it. `interrupt`,
/// when set, is called after every rendezvous wait of `poll_s` seconds in which the key did
/// not appear; its non-OK status ends the wait.
Result<PeerRank> ImportPeerRank(Rendezvous& rendezvous, Agent& agent, const std::string& job, const std::string& role,
                                int rank, double timeout_s, const std::function<Status()>& interrupt = {},
                                double poll_s = 0.1);

}  // namespace shardwire::sync
