// The backend seam (issue 11 item 2): the interface between the agent's
// bookkeeping and a transport backend.
//
// The agent (Agent::Impl, agent_impl.h and the files it names) keeps what every
// backend needs: names, regions and their pins, prepared transfers and slicing,
// post states, notifications and waits, flow control, the per-lane job state
// machine and the lane threads, peer liveness (/proc), kernel copies and direct
// copies into regions a backend mapped into this process. A backend keeps what
// only its transport knows: how a region is registered or allocated, what a
// peer needs to connect (its section of the metadata blob), connections, how an
// op, a flush and a message travel, what arrives, and when a peer dies.
// Nothing in the agent's files includes a transport's headers; a backend lives
// in one folder (src/transport/ucx/, src/transport/inproc/) and is chosen by
// AgentOptions::backend (MakeBackend, backend_registry.cc).
//
// Model. A backend has the agent's lanes (AgentOptions::lanes), each with its
// own progress context (UCX: a worker) driven by the agent's lane thread. A
// peer is connected once (Connect) and reached on every lane through one
// BackendLink per lane. Data moves in ops (PreparedOp: rows between a local
// region and a peer's region) that the job state machine issues per lane
// within its flow-control limits, one PostOp call per op (never per row).
// Completion of anything a backend was handed is reported through a
// Completion the agent owns (a plain function pointer, no virtual call);
// arrivals and peer failures through BackendEvents.
//
// Thread-safety for every backend: calls naming a lane are serialised per lane
// by the agent (it holds that Lane::mu) and may come from the lane's thread or
// from the API thread; Completion callbacks and BackendEvents are invoked only
// from inside Progress(lane) or a call naming that lane, with that lane's mutex
// held (OnPeerFailed also from any other thread holding no agent lock). Region
// calls may come from the API thread at any time (the backend locks what it shares).
// Internal header (src/transport); not part of the public API.
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
#include "shardwire/status.h"
#include "shardwire/transfer_descriptor.h"
#include "transport/metadata_blob.h"

namespace shardwire::transport {

/// Where a row of a WRITE lands in the peer, by region id and offset (bytes): what
/// a message-based WRITE carries so the target can check it against its regions.
struct RemotePlace {
  std::uint32_t region = 0;
  std::uint32_t reserved = 0;
  std::uint64_t offset = 0;
};
static_assert(sizeof(RemotePlace) == 16);

/// One unit of work of a lane: `count` rows of `length` bytes (a block of a
/// strided descriptor, or one slice when count is 1), one flow-control credit.
/// Built by PrepareTransfer, immutable afterwards (read by the lanes without a
/// lock; its address is stable while the transfer lives, so a backend may keep
/// pointers into it until the op's Completion ran).
struct PreparedOp {
  std::byte* local = nullptr;
  std::uint64_t length = 0;  // bytes per row
  std::uint64_t remote_addr = 0;
  std::uint64_t count = 1;          // rows
  std::uint64_t local_stride = 0;   // bytes between rows (count > 1)
  std::uint64_t remote_stride = 0;  // bytes between rows (count > 1)
  void* local_key = nullptr;        // BackendRegion::key of the local region
  std::uint32_t rkey_index = 0;     // index of the peer's region (its blob order)
  RemotePlace place;                // the first row's destination (WRITE as messages)
  bool kernel_copy = false;         // executed by process_vm_readv / process_vm_writev (the agent)

  std::uint64_t bytes() const { return count * length; }
};

/// A completion the agent owns and a backend signals: `done(self, error)` exactly
/// once per pending reference a call reported (error null: success). A backend
/// keeps the pointer until it called `done`, or until the agent withdrew it
/// (ForgetAck) or closed the link it was posted on.
struct Completion {
  void (*done)(Completion* self, const Status* error) = nullptr;
};

/// A local region as the backend registered it.
struct BackendRegion {
  std::byte* base = nullptr;
  std::size_t length = 0;            ///< bytes
  void* key = nullptr;               ///< the backend's handle (UCX: ucp_mem_h); PreparedOp::local_key
  std::vector<std::byte> remote_key; ///< opaque to the agent; carried in the blob's region record
};

/// One connected peer on one lane, as the agent sees it. `link` is the backend's
/// handle (null once closed); `mapped_delta` by peer region index: the region is
/// mapped into this process at (remote address + delta), so the agent moves its
/// bytes with a memcpy (direct copy, pre-faulting, MapPeerRegion). Guarded by the
/// lane's mutex; the backend fills it in Connect and the agent clears it before
/// closing the link.
struct BackendLink {
  void* link = nullptr;
  std::vector<std::optional<std::intptr_t>> mapped_delta;
};

/// What a backend reports about a peer it connected.
struct BackendPeer {
  std::uint32_t remote_lanes = 0;       ///< lanes the peer's section offered (PeerInfo::remote_lanes)
  std::vector<std::string> transports;  ///< e.g. "tcp/lo", "sysv/memory" (PeerInfo::transports)
  std::vector<std::string> message_transports;  ///< where messages travel, when not on the data link (PeerInfo::message_transports)
  bool prefers_messages = false;        ///< WritePath::kAuto should send WRITEs as messages (UCX: TCP only)
  bool reports_failures = false;        ///< the backend reports the peer's death itself (PeerInfo::ucx_error_handling)
  bool kernel_copy_ok = false;          ///< same-host kernel copies may bypass the backend for this peer
};

/// What the agent hands Connect: the peer's blob content.
struct ConnectRequest {
  std::string_view peer_name;
  std::span<const std::byte> connection;                ///< the connection bytes of the backend's section
  std::span<const RegionRecord> regions;                ///< the peer's regions, in blob order
  std::span<const std::vector<std::byte>> region_keys;  ///< the section's remote key per region
  const ProcessIdentity* process = nullptr;
  bool same_host = false;                ///< same boot id and pid namespace as this process
  std::uint64_t peer_token = 0;          ///< passed back in BackendEvents::OnPeerFailed
};

/// The agent's side of the seam: what a backend reports besides completions.
class BackendEvents {
 public:
  virtual ~BackendEvents() = default;
  /// A message (Send on the peer's side) arrived whole on `lane`, after every op
  /// that peer flushed before it on that lane. Lane mutex held.
  virtual void OnMessage(std::uint32_t lane, const std::byte* data, std::size_t length) = 0;
  /// Where `length` bytes at `place` of one of this agent's regions are, or null
  /// when they are not inside a registered region (the backend drops the write).
  /// A message-based WRITE's target side. Any lane thread.
  virtual std::byte* Locate(const RemotePlace& place, std::size_t length) = 0;
  /// The backend found the peer named by `peer_token` dead; `why` names what was
  /// seen. Any thread holding no agent lock; may repeat (the agent reports once).
  virtual void OnPeerFailed(std::uint64_t peer_token, const std::string& why) = 0;
};

/// What Arm says about a lane before it sleeps.
enum class ArmResult { kArmed, kBusy, kError };

/// Counts PostOp adds to (AgentStats::ucx_requests / ucx_bytes: requests the
/// backend issued and their bytes).
struct PostCounts {
  std::uint64_t requests = 0;
  std::uint64_t bytes = 0;
};

/// A transport backend. Made by MakeBackend (backend_registry.cc); destroyed after
/// the agent's lanes stopped and its regions were released.
class TransportBackend {
 public:
  virtual ~TransportBackend() = default;

  /// Short name, also the tag of the backend's section in the metadata blob ("ucx").
  virtual std::string_view name() const = 0;
  /// Number of lanes (the agent's); fixed for the backend's life.
  virtual std::uint32_t lanes() const = 0;
  /// Where events go; set once, before the first Progress.
  virtual void SetEvents(BackendEvents* events) = 0;

  // ---- regions (API thread) -------------------------------------------------
  /// Registers memory [addr, addr + length). `what` names it in errors. Errors:
  /// kTransportError.
  virtual Result<BackendRegion> RegisterRegion(void* addr, std::size_t length, std::string_view what) = 0;
  /// Allocates and registers `length` bytes that same-host peers may map
  /// (ArenaMemory::kShared). Errors: kTransportError, kInternal.
  virtual Result<BackendRegion> AllocateRegion(std::size_t length) = 0;
  /// Releases a region (its key) no op uses any more. Never fails.
  virtual void ReleaseRegion(void* key) = 0;

  // ---- connection (API thread) ----------------------------------------------
  /// The backend's section of this agent's metadata blob: what a peer's backend
  /// needs to connect (UCX: one worker address per lane).
  virtual std::vector<std::byte> ConnectionInfo() = 0;
  /// Parses a peer's section and keeps what connecting needs (no lane touched).
  /// The handle lives until the backend is destroyed (late callbacks may name it).
  /// Errors: kCorruptData (a section it cannot parse), kInvalidArgument.
  virtual Result<void*> OpenPeer(const ConnectRequest& request) = 0;
  /// Connects `peer` on `lane` (that lane's mutex held): fills `link`. Errors:
  /// kTransportError naming the call and region.
  virtual Status ConnectLane(std::uint32_t lane, void* peer, BackendLink& link) = 0;
  /// What was learnt about `peer` after its lanes connected (lane 0's mutex held).
  virtual BackendPeer DescribePeer(void* peer) = 0;

  // ---- one lane (that lane's mutex held) -------------------------------------
  /// Issues one op of a WRITE (`as_message`: as messages the target places, see
  /// RemotePlace) or READ on `link`. Returns the number of pending references to
  /// `c` (one `c->done` each, counted by the agent as outstanding; never called
  /// before PostOp returned: an immediate completion is not pending); an error
  /// stops issuing the op's remaining rows (references already pending stay).
  virtual std::uint32_t PostOp(std::uint32_t lane, void* link, TransferOp op, bool as_message, const PreparedOp& o,
                               Completion* c, PostCounts& counts, Status& error) = 0;
  /// Makes every op posted on `link` before visible at the target. `request`
  /// gets one `done` per pending reference returned (outstanding); `visible`
  /// exactly one `done` once everything is visible (maybe before Flush returns).
  /// `as_message`: the link carried message-based WRITEs (UCX: a fence the
  /// target acknowledges). Errors: what failed at once (no `done` comes then).
  virtual Status Flush(std::uint32_t lane, void* link, bool as_message, Completion* request, Completion* visible,
                       std::uint32_t& pending) = 0;
  /// Withdraws a `visible` completion still waited for (its job finished).
  virtual void ForgetAck(std::uint32_t lane, Completion* visible) = 0;
  /// Sends a notification message on `link`, delivered after everything flushed
  /// before on that lane. Returns the pending references to `c` (0: sent; `done`
  /// is never called before Send returned).
  /// `message` stays valid until then. Errors: what failed at once.
  virtual Status Send(std::uint32_t lane, void* link, std::span<const std::byte> message, Completion* c,
                      std::uint32_t& pending) = 0;
  /// Sends a message the backend copies and owns until sent (Agent::SendMessage).
  /// Returns whether the lane must progress to finish it (wake its thread).
  virtual Result<bool> SendOwned(std::uint32_t lane, void* link, std::vector<std::byte> message) = 0;
  /// Whether messages of SendOwned are still unsent on `lane` (drops finished ones).
  virtual bool SendsPending(std::uint32_t lane) = 0;
  /// Closes `link` on `lane` (idempotent; null: nothing). `force`: without waiting
  /// for outstanding ops (their completions come as errors within Progress, or
  /// never for a dead peer), else flushing, bounded by `timeout_s` (call
  /// ReleaseKeys first then). Returns false when a flushing close did not finish
  /// in time. Nothing may be posted on `link` afterwards.
  virtual bool CloseLink(std::uint32_t lane, void* link, bool force, double timeout_s) = 0;
  /// Drops `link`'s remote keys and with them its mappings (the agent cleared
  /// BackendLink::mapped_delta first): once nothing is outstanding on it, before or
  /// after CloseLink. Idempotent; null: nothing.
  virtual void ReleaseKeys(std::uint32_t lane, void* link) = 0;

  // ---- progress (the lane's thread or a caller holding the lane's mutex) ------
  /// One round of progress on `lane`; returns how many events happened.
  virtual unsigned Progress(std::uint32_t lane) = 0;
  /// Delivers (BackendEvents::OnMessage) every message already received on `lane`,
  /// whatever Progress's polling rhythm: the agent calls it before it marks a peer
  /// failed on its own evidence (the /proc liveness check), so what a peer sent just
  /// before it died (a DONE, a READY, then exit) reaches the application before the
  /// failure. Bounded in polls (UCX: ucx_backend.h, kDrainPolls); returns how many
  /// events it handled. The lane's thread or a caller holding the lane's mutex.
  virtual unsigned DrainMessages(std::uint32_t lane) = 0;
  /// Work after the agent advanced its jobs (UCX: acknowledgements, received
  /// messages). Returns whether it did anything.
  virtual bool Service(std::uint32_t lane) = 0;
  /// A file descriptor that becomes readable when `lane` has events. Valid for the backend's life.
  virtual int EventFd(std::uint32_t lane) = 0;
  /// Arms EventFd before the lane sleeps. kBusy: events pending or the transport
  /// cannot signal (poll with backoff); kError: `error` says why.
  virtual ArmResult Arm(std::uint32_t lane, std::string& error) = 0;
  /// Shutdown, after the lane threads stopped and every link was closed: drops
  /// each lane's progress context (may complete leftover requests).
  virtual void StopLanes() = 0;
};

/// Makes the backend `options.backend` names ("ucx", "inproc"). Errors:
/// kInvalidArgument naming the unknown backend; the backend's own errors.
Result<std::unique_ptr<TransportBackend>> MakeBackend(const AgentOptions& options);

}  // namespace shardwire::transport
