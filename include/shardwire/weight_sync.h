// RL weight sync: trainer ranks (publishers) push each new policy into the shards
// of running inference engines (subscribers), resharding on the way.
//
// Protocol of one weight version v (every message is a transport notification):
//   subscriber: BeginUpdate(v)   -> READY(v) to each source rank it receives from
//                                   (the engine has paused serving from its buffer)
//   publisher:  Push(v)          waits for READY(v) from each destination it sends
//                                to, then posts its prepared one-sided WRITEs, each
//                                with DONE(v) attached: the transport delivers DONE
//                                only after every byte of that transfer is visible
//   subscriber: WaitForUpdate(v) waits for DONE(v) from every source, then commits v
// A subscriber therefore never holds a version it has not received completely:
// committed_version() moves from v-1 to v only when all its bytes arrived. The plan
// is computed in every process from the two layouts (deterministic), so no process
// broadcasts it; the transfers are prepared once (Connect) and posted every step.
//
// Processes find each other through a Rendezvous (keys "<job>/trainer/<rank>" and
// "<job>/engine/<rank>" hold transport metadata blobs).
//
// Thread-safety: a publisher or subscriber is used by one thread at a time.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "shardwire/agent.h"
#include "shardwire/layout.h"
#include "shardwire/rendezvous.h"
#include "shardwire/status.h"

namespace shardwire {

struct WeightSyncOptions {
  std::string job = "shardwire";  ///< rendezvous key prefix; one job = one trainer/engine pair of layouts
  double timeout_s = 120;         ///< bound of every wait (seconds)
  /// The rank's shard buffer in the caller's own memory (the trainer's parameters, the
  /// engine's weights), laid out by the rank's Layout (Layout::rank(r).buffer_bytes bytes at
  /// least; shards at their byte_offset). Empty: Shardwire allocates the buffer as a
  /// transport arena. Caller memory is registered in place (Agent::RegisterMemory, no
  /// staging copy) and must stay valid and unmoved until the publisher / subscriber is
  /// destroyed. Cost on this UCX 1.13.1 build: puts into caller-registered host memory are
  /// emulated over active messages (the target's lane threads copy them in), while an arena in
  /// UCX-allocated shared memory takes true one-sided puts (docs/transport.md); on RDMA or GPU
  /// memory both are true one-sided and registration costs one ibv_reg_mr / CUDA IPC handle.
  std::span<std::byte> buffer = {};
};

/// What one Push did.
struct PushStats {
  std::uint64_t version = 0;
  std::uint64_t bytes = 0;        ///< bytes this rank wrote
  std::uint64_t descriptors = 0;  ///< descriptors posted (a strided move of many rows counts once)
  std::uint64_t rows = 0;         ///< contiguous row moves inside them (what one descriptor per row would post)
  double ready_wait_s = 0;        ///< waiting for destinations to be ready
  double transfer_s = 0;          ///< first post to last remote completion
  /// How this push's bytes moved (the agent's AgentStats over the push): bytes
  /// copied by the lanes through a mapping of the destination's arena, and UCX
  /// data requests issued (one per row not copied directly; 0 when every block
  /// took the direct path).
  std::uint64_t direct_copy_bytes = 0;
  std::uint64_t ucx_requests = 0;
};

/// What one WaitForUpdate saw.
struct UpdateStats {
  std::uint64_t version = 0;
  std::uint64_t bytes = 0;  ///< bytes this rank received
  int sources = 0;          ///< source ranks it received from
  double wait_s = 0;        ///< BeginUpdate to the last DONE
};

/// One trainer rank. Owns its transport agent and the registered buffer holding its
/// shards, laid out by trainer_layout.rank(rank) (see shardwire::Layout).
class WeightPublisher {
 public:
  /// Creates the agent, allocates the shard buffer (a UCX-allocated arena: on one host
  /// it is shared memory and takes true one-sided puts), computes the plan and
  /// publishes this rank's metadata. Errors: rank out of range (kInvalidArgument),
  /// layouts that cannot be planned (kLayoutMismatch), transport errors.
  static Result<std::unique_ptr<WeightPublisher>> Create(Rendezvous& rendezvous, const Layout& trainer_layout,
                                                         const Layout& engine_layout, int rank,
                                                         WeightSyncOptions options);
  ~WeightPublisher();

  /// This rank's shard buffer (writable; the trainer's weights live here).
  std::span<std::byte> weights();

  /// Looks up every destination rank this rank sends to and prepares one transfer per
  /// destination. Errors: kTimedOut when a destination does not appear in time.
  Status Connect();

  /// Pushes version `version` (see the protocol above). Errors: kTimedOut (names the
  /// destinations that were not ready or did not complete), kPeerDisconnected.
  Result<PushStats> Push(std::uint64_t version);

  /// Bytes this rank sends per Push.
  std::uint64_t bytes_per_push() const;

  /// The transport agent's counters since Create (shardwire/agent.h, AgentStats):
  /// e.g. the pages Connect pre-faulted in the destinations' arenas and how long
  /// that took. Thread-safe.
  AgentStats transport_stats() const;

  struct State;

 private:
  explicit WeightPublisher(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

/// One inference-engine rank. Owns its agent and the registered buffer holding its
/// shards, laid out by engine_layout.rank(rank).
class WeightSubscriber {
 public:
  /// Creates the agent, allocates the shard buffer, computes the plan and publishes
  /// this rank's metadata. Errors as WeightPublisher::Create.
  static Result<std::unique_ptr<WeightSubscriber>> Create(Rendezvous& rendezvous, const Layout& trainer_layout,
                                                          const Layout& engine_layout, int rank,
                                                          WeightSyncOptions options);
  ~WeightSubscriber();

  /// This rank's shard buffer. Written by publishers between BeginUpdate and the end
  /// of WaitForUpdate; the engine must not read it in that window.
  std::span<std::byte> weights();

  /// Looks up every source rank this rank receives from. Errors: kTimedOut.
  Status Connect();

  /// Declares the engine paused for `version`: sources may now write.
  Status BeginUpdate(std::uint64_t version);

  /// Blocks until every source has delivered `version`, then commits it.
  /// Errors: kTimedOut naming the sources still missing, kPeerDisconnected.
  Result<UpdateStats> WaitForUpdate(std::uint64_t version);

  /// The last version fully received (0 before the first).
  std::uint64_t committed_version() const;

  struct State;

 private:
  explicit WeightSubscriber(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace shardwire
