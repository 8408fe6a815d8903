// The transfer Agent: one-sided transfers between processes over UCX.
//
// Modelled on the NIXL agent: register memory once, exchange metadata blobs
// out of band, prepare a transfer (a descriptor list against one peer) once,
// then post it as many times as needed, waiting without burning a core, and get
// notified when a peer's data has landed.
//
//   initiator                                 target
//   ---------                                 ------
//   Create, RegisterMemory/AllocateArena      Create, AllocateArena/RegisterMemory
//   ExportMetadata  ---- blob (out of band) -> ImportMetadata
//   ImportMetadata  <--- blob (out of band) -- ExportMetadata
//   PrepareTransfer(kWrite, "target", descs, "v7 done")
//   Post; Wait                                WaitNotification -> {"initiator", "v7 done"}
//   Post; Wait  (next step, same plan)        WaitNotification -> ...
//
// UCX mapping: one ucp_context (features UCP_FEATURE_RMA | UCP_FEATURE_AM |
// UCP_FEATURE_WAKEUP), one ucp_worker (UCS_THREAD_MODE_SINGLE), one ucp_ep per
// peer created from the peer's worker address (error handling mode: see
// PeerFailureDetection), one ucp_mem_h per region, one unpacked ucp_rkey_h per
// remote region.
// WRITE is ucp_put_nbx, READ is ucp_get_nbx, completion is ucp_ep_flush_nbx
// (remote completion), notifications are active messages (ucp_am_send_nbx).
//
// Progress: UCP has no progress thread. An Agent makes progress only inside its
// own calls (Progress, Test, Wait, WaitNotification, TakeNotifications). On UCX
// 1.13.1, put/get into memory a process allocated itself and registered with
// RegisterMemory is emulated over active messages, so the *target* must be
// inside one of those calls for the bytes to land; an arena (AllocateArena)
// lives in UCX-allocated shared memory and, for a same-host peer under
// PeerFailureDetection::kAuto, receives true one-sided puts (and serves gets)
// without the target progressing. Under kUcxPeer UCX 1.13.1 can only use TCP
// between processes on one host and every RMA is emulated. Measurements and
// the reasoning are in docs/transport.md.
//
// Thread-safety: an Agent is used by one thread at a time (no call may overlap
// another call on the same Agent). Distinct Agents are independent and may be
// used from different threads. Agents must not be shared across fork(): create
// them in the process that uses them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "shardwire/status.h"
#include "shardwire/transfer_descriptor.h"

namespace shardwire {

/// How an Agent learns that a peer's process died.
enum class PeerFailureDetection : std::uint8_t {
  /// Peers in the same kernel boot and pid namespace (judged from the metadata
  /// blob's ProcessIdentity) get endpoints with UCP_ERR_HANDLING_MODE_NONE, so
  /// UCX may use its shared-memory transports (sysv, posix, cma), and the agent
  /// itself checks, at most every 100 ms while progressing, that the peer's
  /// process still exists (/proc/<pid>/stat: present, not a zombie, same start
  /// time). Other peers get UCP_ERR_HANDLING_MODE_PEER (UCX error callback).
  /// Reason: UCX 1.13.1 refuses sysv/posix for PEER-mode endpoints ("no peer
  /// failure handler") and falls back to TCP, where puts are emulated and slow.
  kAuto,
  /// Every endpoint uses UCP_ERR_HANDLING_MODE_PEER with an error callback, as
  /// NIXL does. On one host with UCX 1.13.1 this means TCP only (see above).
  kUcxPeer,
};

/// Construction options of an Agent.
struct AgentOptions {
  /// Name peers know this agent by; carried in its metadata blob and in every
  /// notification it sends. Must be non-empty and at most 65535 bytes.
  std::string name;
  /// Seconds. Upper bound for the flushing endpoint close (ucp_ep_close_nbx)
  /// when ImportMetadata replaces an idle peer. Endpoint creation itself is
  /// non-blocking (UCX wires up lazily on first use); every other wait takes
  /// its own timeout.
  double connect_timeout_s = 10;
  /// Seconds between UCX keepalive rounds (UCX_KEEPALIVE_INTERVAL) that detect
  /// peers whose process died; 0 keeps the UCX default (20 s). An explicit
  /// UCX_KEEPALIVE_INTERVAL in the environment always wins.
  double keepalive_interval_s = 1;
  /// See PeerFailureDetection.
  PeerFailureDetection failure_detection = PeerFailureDetection::kAuto;
};

/// A message from a peer: sent by Agent::SendMessage, or attached to a posted
/// transfer (then delivered only after all of that post's bytes are visible).
struct Notification {
  std::string peer;                ///< the sender's AgentOptions::name
  std::vector<std::byte> payload;  ///< bytes, exactly as sent
};

/// One endpoint of one-sided transfers. Create with Agent::Create; destroy to
/// release every UCX resource. Endpoints are force-closed: PEER-mode peers see
/// this agent as disconnected; same-host kAuto peers notice only when this
/// process exits (their liveness check), so tell them out of band or with a
/// SendMessage before destroying an agent in a process that lives on.
class Agent {
 public:
  /// Creates the UCX context and worker (ucp_init, ucp_worker_create) and
  /// installs the notification handler (ucp_worker_set_am_recv_handler).
  /// Errors: kInvalidArgument for an empty or over-long name or a negative or
  /// NaN timeout; kTransportError when UCX refuses (message names the call).
  static Result<std::unique_ptr<Agent>> Create(AgentOptions options);

  ~Agent();
  Agent(const Agent&) = delete;
  Agent& operator=(const Agent&) = delete;

  /// This agent's name (AgentOptions::name).
  const std::string& name() const;

  /// Registers `length` bytes at `addr`, allocated and owned by the caller, for
  /// remote read and write (ucp_mem_map without UCP_MEM_MAP_ALLOCATE). The
  /// memory must stay valid until Deregister or the Agent's destruction.
  /// Errors: kInvalidArgument for a null address or zero length;
  /// kTransportError when ucp_mem_map or ucp_rkey_pack fails.
  Result<RegionId> RegisterMemory(void* addr, std::size_t length);

  /// Allocates and registers `length` bytes in one step (ucp_mem_map with
  /// UCP_MEM_MAP_ALLOCATE; on one host UCX places it in sysv/posix shared
  /// memory, which peers on the same host can write one-sidedly). The agent owns
  /// the memory; it is freed by Deregister or destruction. Contents are
  /// unspecified (not zeroed). Reach the bytes with RegionBytes.
  /// Errors: kInvalidArgument for zero length; kTransportError from UCX
  /// (e.g. out of shared memory).
  Result<RegionId> AllocateArena(std::size_t length);

  /// The bytes of a local region (registered or arena); an empty span for an
  /// unknown id. Valid until Deregister(id) or destruction.
  std::span<std::byte> RegionBytes(RegionId id) const;

  /// Unregisters a region (ucp_mem_unmap); an arena's memory is freed. Regions
  /// already exported stay in peers' copies of the metadata: re-export and have
  /// peers re-import before they prepare against this agent again.
  /// Errors: kNotFound for an unknown id; kInvalidArgument while a prepared
  /// transfer still uses the region (Release those transfers first).
  Status Deregister(RegionId id);

  /// Serialises the worker address and every current region (id, base, length,
  /// packed rkey) into a versioned, XXH64-checksummed blob (format in
  /// shardwire/metadata_blob.h). Size is O(regions). Never touches the network.
  /// Errors: none expected today (Result for forward compatibility).
  Result<std::vector<std::byte>> ExportMetadata() const;

  /// Decodes a peer's blob, creates an endpoint to its worker address
  /// (ucp_ep_create; UCP_ERR_HANDLING_MODE_PEER with an error callback that
  /// marks the peer failed, or UCP_ERR_HANDLING_MODE_NONE plus process liveness
  /// checks for a same-host peer, see PeerFailureDetection) and unpacks every
  /// region's rkey
  /// (ucp_ep_rkey_unpack). Returns the peer's name. A peer already imported
  /// under the same name is replaced: its endpoint is closed and transfers
  /// prepared against it report kPeerDisconnected on Post (prepare them again).
  /// Non-blocking: the connection is wired up on first use.
  /// Errors: kCorruptData from blob validation (see DecodeAgentMetadata);
  /// kTransportError when UCX rejects the address or an rkey; kInvalidArgument
  /// when the replaced peer still has transfers in flight (Wait for them or
  /// InvalidatePeer first).
  Result<std::string> ImportMetadata(std::span<const std::byte> blob);

  /// Forgets a peer: in-flight transfers to it fail with kPeerDisconnected,
  /// its endpoint is force-closed (ucp_ep_close_nbx, UCP_EP_CLOSE_FLAG_FORCE;
  /// queued requests complete with UCS_ERR_CANCELED), its rkeys are destroyed.
  /// Returns within about 50 ms plus the close. Prepared transfers to it stay
  /// valid handles whose Post returns kPeerDisconnected; Release them (allowed
  /// even if a post was in flight).
  /// Errors: kNotFound for an unknown peer.
  Status InvalidatePeer(const std::string& peer);

  /// Validates and resolves a descriptor list against `peer` once: local regions
  /// and memory handles, remote addresses and rkeys. `notification_payload`, if
  /// present, is delivered to the peer after every byte of each post is
  /// remotely complete. The descriptors are copied; `descriptors` may be empty
  /// (a post then only delivers the notification, after a flush).
  /// Errors (nothing is prepared on error): kNotFound for an unknown peer;
  /// kPeerDisconnected for a failed peer; kInvalidArgument naming the first bad
  /// descriptor index: unknown local or remote region, or
  /// offset + length beyond the region's length (overflow-safe).
  /// Each prepared transfer pins its local regions (see Deregister).
  Result<TransferHandle> PrepareTransfer(TransferOp op, const std::string& peer,
                                         std::vector<TransferDescriptor> descriptors,
                                         std::optional<std::vector<std::byte>> notification_payload);

  /// Starts one execution of a prepared transfer: ucp_put_nbx (kWrite) or
  /// ucp_get_nbx (kRead) for every descriptor, then ucp_ep_flush_nbx. Once the
  /// flush completes (every byte visible at the target for WRITE, in local memory
  /// for READ) the attached notification, if any, is sent with ucp_am_send_nbx,
  /// so the target never sees it before the data. Completion is observed with
  /// Test or Wait. A completed or failed transfer may be posted again.
  /// Errors: kNotFound for an unknown handle; kInvalidArgument while a previous
  /// post of the same handle is still in flight; kPeerDisconnected when the peer
  /// failed, was invalidated or re-imported since PrepareTransfer;
  /// kTransportError / kPeerDisconnected when UCX rejects an operation (the
  /// operations already issued keep draining; Test/Wait then report the error).
  Status Post(TransferHandle handle);

  /// Progresses the worker without blocking and reports whether the latest post
  /// of `handle` is complete (true), still running (false) or failed (error).
  /// Errors: kNotFound for an unknown handle; kInvalidArgument if never posted;
  /// kPeerDisconnected when the peer failed; kTransportError for other UCX
  /// failures.
  Result<bool> Test(TransferHandle handle);

  /// Blocks until the latest post of `handle` completes, fails, or `timeout_s`
  /// seconds pass. Sleeps on the worker's event fd (ucp_worker_get_efd,
  /// ucp_worker_arm, poll) in slices of at most 100 ms; does not spin a core.
  /// Notifications that arrive meanwhile are queued (see WaitNotification).
  /// Errors: as Test, plus kTimedOut (the transfer keeps running; Wait again,
  /// or InvalidatePeer to abandon it).
  Status Wait(TransferHandle handle, double timeout_s);

  /// Forgets a prepared transfer and unpins its local regions. A transfer whose
  /// peer is gone (failed, invalidated or re-imported: its endpoint closed) may
  /// be released even with requests outstanding (UCX 1.13.1 may never complete
  /// requests to a dead peer); the bookkeeping is then kept until the Agent is
  /// destroyed, and for a READ the local regions stay pinned too, since a late
  /// reply could still land in them.
  /// Errors: kNotFound for an unknown handle; kInvalidArgument while a post to a
  /// live peer is in flight (Wait for it, or InvalidatePeer to cancel it).
  Status Release(TransferHandle handle);

  /// Sends a standalone notification (ucp_am_send_nbx). Returns once it is
  /// queued; the payload is copied and kept until UCX completes the send. No
  /// ordering against this agent's RMA: to signal "data landed", attach the
  /// payload to the transfer instead. A send that later fails marks the peer
  /// failed (kPeerDisconnected on later calls).
  /// Errors: kNotFound for an unknown peer; kPeerDisconnected for a failed peer;
  /// kInvalidArgument when payload + name exceed 2^31 bytes; kTransportError.
  Status SendMessage(const std::string& peer, std::span<const std::byte> payload);

  /// Returns the oldest queued notification from any peer, progressing the
  /// worker and sleeping on its event fd until one arrives or `timeout_s`
  /// seconds pass. While waiting, this agent also serves emulated RMA that peers
  /// direct at its registered memory and advances its own posted transfers.
  /// Errors: kTimedOut; kPeerDisconnected once per peer failure detected while
  /// no notification is queued (the message names the peer; later calls wait
  /// again).
  Result<Notification> WaitNotification(double timeout_s);

  /// Progresses without blocking and returns every queued notification, oldest
  /// first (possibly none).
  std::vector<Notification> TakeNotifications();

  /// Progresses the worker (ucp_worker_progress until idle, bounded) and advances
  /// posted transfers; never blocks.
  void Progress();

  /// Names of peers found dead (UCX error callback or failed liveness check)
  /// and not invalidated or re-imported since. A failed peer's endpoint is
  /// force-closed by the next progress call, which cancels its outstanding
  /// requests, so its transfers can then be released. For diagnostics.
  std::vector<std::string> FailedPeers() const;

  struct Impl;  // public only so the implementation's UCX callbacks can name it

 private:
  explicit Agent(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace shardwire
