// The transport side every weight-sync rank has: an agent, one registered buffer for
// its shards, and its metadata published under a rendezvous key.
#pragma once

#include <functional>
#include <memory>
#include <span>
#include <string>

#include "shardwire/agent.h"
#include "shardwire/layout.h"
#include "shardwire/rendezvous.h"
#include "shardwire/status.h"
#include "shardwire/weight_sync.h"

namespace shardwire::workflows {

struct RankEndpoint {
  std::unique_ptr<Agent> agent;
  RegionId region = 0;           ///< the shard buffer's region
  std::span<std::byte> weights;  ///< the shard buffer (may be empty)
  /// Double-buffered engines: the second buffer (same size), else 0 / empty.
  RegionId second_region = 0;
  std::span<std::byte> second_weights;
  /// Trainers with Partial(sum) shards: the scratch arena their reductions use (else 0 / empty).
  RegionId scratch_region = 0;
  std::span<std::byte> scratch;
};

/// Creates the agent named "<job>/<role>/<rank>" (with `lanes` lanes, AgentOptions::lanes: 0 =
/// kDefaultLanes), allocates `buffer_bytes` as an arena
/// (or, when `caller_buffer` is non-empty, registers that caller-owned memory in place),
/// with `double_buffered` a second one likewise (`second_caller_buffer`), and publishes
/// {metadata blob, region ids} under MetadataKey(job, role, rank) (".../region1" holds the
/// second region, 0 for none), and with `scratch_bytes` > 0 a scratch arena (".../scratch":
/// its region, 0 for none). `memory` is the kind of the shard buffers' arenas (the scratch
/// arena is always shared). With `incarnation` != 0 (dynamic membership: the process's
/// incarnation in its rank) the same keys are published under
/// IncarnationMetadataKey(job, role, rank, incarnation) first, so that a peer that connects to
/// one incarnation never imports another's blob (a restarted rank's key holds the newest).
/// Errors: kInvalidArgument when a caller buffer is non-empty but smaller than buffer_bytes;
/// transport and rendezvous errors.
Result<RankEndpoint> OpenRankEndpoint(Rendezvous& rendezvous, const std::string& job, const std::string& role, int rank,
                                      std::uint64_t buffer_bytes, std::span<std::byte> caller_buffer = {},
                                      bool double_buffered = false, std::span<std::byte> second_caller_buffer = {},
                                      std::uint64_t scratch_bytes = 0, ArenaMemory memory = ArenaMemory::kShared,
                                      MetricsRegistry* metrics = nullptr, std::uint64_t incarnation = 0,
                                      std::uint32_t lanes = 0);

/// Where incarnation `incarnation` of a rank publishes its metadata and regions:
/// MetadataKey(job, role, rank) + "/incarnation-<n>" (MetadataKey itself for 0). These keys
/// are never overwritten; one set per process start of a rank stays in the rendezvous.
std::string IncarnationMetadataKey(const std::string& job, const std::string& role, int rank,
                                   std::uint64_t incarnation);

/// What a rank's plan is computed from: "<fingerprint> (<trainer layout> -> <engine layout>)"
/// plus the options that change what moves where or what DONE carries (K, the conversion's block
/// size, scale format and arithmetic, staging bytes and slots; verify_digests). The fingerprint
/// covers every shard's placement and buffer offset of both layouts (LayoutFingerprint). Two
/// ranks of one job must agree on it, else their plans differ and bytes would land at the wrong
/// offsets (or digests be compared in another order).
std::string SyncPlanSignature(const Layout& trainer_layout, const Layout& engine_layout,
                              const WeightSyncOptions& options);

/// Publishes `signature` under MetadataKey(job, role, rank) + "/plan". Call before
/// OpenRankEndpoint, so that a peer that finds the metadata finds the signature.
Status PublishPlanSignature(Rendezvous& rendezvous, const std::string& job, const std::string& role, int rank,
                            const std::string& signature);

/// Compares the peer's published signature with `expected` (waiting up to timeout_s for it).
/// Errors: kLayoutMismatch naming the peer and both signatures; kTimedOut; rendezvous errors.
Status CheckPeerPlanSignature(Rendezvous& rendezvous, const std::string& job, const std::string& role, int rank,
                              const std::string& expected, double timeout_s);

/// A peer rank imported into `agent`: its agent name and its shard buffer's region.
struct PeerRank {
  std::string name;
  RegionId region = 0;
  RegionId second_region = 0;   ///< a double-buffered peer's second buffer, else 0
  RegionId scratch_region = 0;  ///< a trainer's reduction scratch, else 0
};

/// Waits for the peer's published metadata (up to timeout_s) and imports it. `interrupt`,
/// when set, is called after every rendezvous wait of `poll_s` seconds in which the key did
/// not appear; its non-OK status ends the wait. With `incarnation` != 0, the metadata of that
/// incarnation of the rank (IncarnationMetadataKey), never a later or earlier one's.
/// Errors: kTimedOut when the key does not appear; kCorruptData when the blob or a region key
/// is malformed or names another agent; the agent's import errors (kPeerDisconnected when the
/// blob's same-host process is gone); rendezvous errors.
Result<PeerRank> ImportPeerRank(Rendezvous& rendezvous, Agent& agent, const std::string& job, const std::string& role,
                                int rank, double timeout_s, const std::function<Status()>& interrupt = {},
                                double poll_s = 0.1, std::uint64_t incarnation = 0);

}  // namespace shardwire::workflows
