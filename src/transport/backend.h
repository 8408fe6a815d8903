// The backend seam (issue 11 item 2, DESIGN: declared, not yet implemented).
//
// Agent::Impl today is bookkeeping and UCX in one: names, regions, prepared
// transfers, post states, notifications and waits (what every backend needs)
// sit beside ucp_worker/ucp_ep/rkey calls (what only UCX needs). This header is
// the interface between the two: the agent's bookkeeping would keep everything
// of agent_impl.h that is not UCX and talk to one TransportBackend per Agent;
// a backend lives in one folder (src/transport/ucx/: worker, endpoint, rkey,
// memory; a test backend in tests/transport/) and owns its threads' transport
// objects. Nothing includes this header yet: moving the UCX code behind it is
// the remaining work of item 2 (docs/transport.md, "Backend seam").
//
// Model. A backend has `lanes()` lanes, each with its own progress context
// (a UCX worker). A peer is connected once per agent and reached on every lane.
// Data moves in ops (BackendOp): rows of bytes between a local region and a
// remote region of the peer, issued per lane by the agent's job state machine
// (lane_jobs.cc) within its flow-control limits. A backend reports completion
// and arrivals as events to a BackendEvents sink the agent implements; events
// are delivered only from inside Progress(lane), on the thread calling it.
//
// Thread-safety for every backend: calls naming a lane are serialised per lane
// by the agent (it holds that Lane::mu); calls not naming a lane (regions,
// ConnectionInfo, Connect, Disconnect) come from the agent's API thread, which
// holds every Lane::mu it needs. A backend must not call back into the agent
// outside Progress.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "shardwire/agent.h"
#include "shardwire/metadata_blob.h"
#include "shardwire/status.h"
#include "shardwire/transfer_descriptor.h"

namespace shardwire::transport {

/// A local region as the backend registered it: where its bytes are, and the
/// opaque bytes a peer's backend needs to reach it (UCX: the packed rkey).
struct BackendRegion {
  std::byte* base = nullptr;
  std::size_t length = 0;              ///< bytes
  bool huge_pages = false;             ///< private huge-page memory (ReadPath::kAuto uses kernel copies into it)
  std::vector<std::byte> remote_key;   ///< opaque to the agent; carried in the backend's blob section
  std::uint64_t handle = 0;            ///< the backend's name for it; never 0 for a live region
};

/// What the agent learns about a connected peer (DescribePeer, path choices).
struct BackendPeer {
  std::uint64_t handle = 0;             ///< the backend's name for the connection; never 0
  std::vector<std::string> transports;  ///< e.g. "tcp/lo", "sysv/memory" (PeerInfo::transports)
  bool one_sided_writes = true;         ///< false: WRITEs travel as messages the target places (kActiveMessage)
  bool error_callbacks = false;         ///< the backend reports the peer's death itself (PeerInfo::ucx_error_handling)
  /// By remote region index: the peer's region is mapped into this process at
  /// (remote address + delta), so a WRITE or READ may be a memcpy (MapPeerRegion).
  std::vector<std::optional<std::intptr_t>> mapped_delta;
};

/// One unit of work of a lane: `count` rows of `length` bytes between
/// local + i * local_stride and remote_addr + i * remote_stride (bytes; the
/// agent checked every row against both regions). One flow-control credit.
struct BackendOp {
  std::byte* local = nullptr;
  std::uint64_t local_region = 0;   ///< BackendRegion::handle of the local side
  std::uint32_t remote_region = 0;  ///< index into the peer's regions (its blob section's order)
  std::uint64_t remote_addr = 0;
  std::uint64_t length = 0;
  std::uint64_t count = 1;
  std::uint64_t local_stride = 0;
  std::uint64_t remote_stride = 0;
};

/// The agent's side of the seam: what a backend reports. Called only from inside
/// TransportBackend::Progress(lane), on that thread, with that lane's mutex held.
class BackendEvents {
 public:
  virtual ~BackendEvents() = default;
  /// Every op of PostOps(..., cookie), or the Flush/SendMessage with `cookie`, is
  /// complete: visible at the target for a WRITE that Flush covered, in the
  /// local buffer for a READ. A failed one carries kTransportError (the call
  /// named) or kPeerDisconnected; once per cookie.
  virtual void OnComplete(std::uint32_t lane, std::uint64_t cookie, Status status) = 0;
  /// A message from a peer (SendMessage on its side) arrived whole, in order
  /// after every op that peer flushed before sending it on the same lane.
  virtual void OnMessage(std::uint32_t lane, std::span<const std::byte> message) = 0;
  /// The backend found the peer dead (its error callback, a reset connection).
  /// `why` names what was seen. At most once per connection.
  virtual void OnPeerFailed(std::uint64_t peer, const std::string& why) = 0;
};

/// A transport backend. Created by a factory per backend (for UCX: the
/// AgentOptions::ucx section); destroyed after the agent's lanes stopped.
class TransportBackend {
 public:
  virtual ~TransportBackend() = default;

  /// Short name, also the tag of the backend's section in the metadata blob ("ucx").
  virtual std::string_view name() const = 0;
  /// Number of lanes (>= 1); fixed for the backend's life.
  virtual std::uint32_t lanes() const = 0;
  /// Where events go; set once, before the first Progress.
  virtual void SetEvents(BackendEvents* events) = 0;

  // ---- regions (API thread) -------------------------------------------------
  /// Registers caller memory [addr, addr + length). Errors: kTransportError.
  virtual Result<BackendRegion> RegisterRegion(void* addr, std::size_t length) = 0;
  /// Allocates and registers `length` bytes of `memory`. Errors: kTransportError,
  /// kResourceExhausted.
  virtual Result<BackendRegion> AllocateRegion(std::size_t length, ArenaMemory memory) = 0;
  /// Releases a region no op uses any more (the agent's pins say so). Errors: kNotFound.
  virtual Status ReleaseRegion(std::uint64_t handle) = 0;

  // ---- connection (API thread) ----------------------------------------------
  /// The backend's opaque section of this agent's metadata blob: what a peer's
  /// backend needs to connect (UCX: one worker address per lane). Region keys
  /// travel in the blob's region records. Errors: kTransportError.
  virtual Result<std::vector<std::byte>> ConnectionInfo() = 0;
  /// Connects to a peer from its section and region keys (in region order).
  /// Bounded by the backend's connect timeout. Errors: kCorruptData (a section
  /// this backend cannot parse), kTransportError, kTimedOut.
  virtual Result<BackendPeer> Connect(std::span<const std::byte> section,
                                      std::span<const std::vector<std::byte>> remote_keys,
                                      const ProcessIdentity& peer_process) = 0;
  /// Closes a connection on every lane. `force`: do not wait for outstanding ops;
  /// their cookies complete with kPeerDisconnected within Progress calls or are
  /// never reported (a dead peer), which the agent handles by abandoning them.
  virtual void Disconnect(std::uint64_t peer, bool force) = 0;

  // ---- data (one lane, Lane::mu held) -----------------------------------------
  /// Issues `ops` of a WRITE or READ to `peer` on `lane`; completion of all of
  /// them is one OnComplete(lane, cookie). Returns an error only for what failed
  /// at once (then no event comes for `cookie`).
  virtual Status PostOps(std::uint32_t lane, std::uint64_t peer, TransferOp op, std::span<const BackendOp> ops,
                         std::uint64_t cookie) = 0;
  /// Completes (OnComplete with `cookie`) once every op posted before on this
  /// lane to `peer` is visible at the target.
  virtual Status Flush(std::uint32_t lane, std::uint64_t peer, std::uint64_t cookie) = 0;
  /// Sends `message` to `peer` on `lane` (a notification); delivered after every
  /// op flushed before it on that lane. OnComplete(cookie) when sent.
  virtual Status SendMessage(std::uint32_t lane, std::uint64_t peer, std::span<const std::byte> message,
                             std::uint64_t cookie) = 0;

  // ---- progress (the lane's thread, Lane::mu held) ----------------------------
  /// Makes progress on `lane` and delivers its events. Returns how many events
  /// happened (0: nothing to do now).
  virtual unsigned Progress(std::uint32_t lane) = 0;
  /// A file descriptor that becomes readable when `lane` has work, or -1 (the
  /// agent then polls with backoff). Valid for the backend's life.
  virtual int EventFd(std::uint32_t lane) = 0;
  /// Arms EventFd before the lane sleeps. Returns false when events are already
  /// pending (do not sleep; call Progress again).
  virtual bool Arm(std::uint32_t lane) = 0;
};

}  // namespace shardwire::transport
