// The transfer Agent: one-sided transfers between processes over UCX (or
// another transport backend, AgentOptions::backend; docs/transport.md, "Backend seam").
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
// UCX mapping: one ucp_context (UCP_FEATURE_RMA | UCP_FEATURE_AM |
// UCP_FEATURE_WAKEUP, mt_workers_shared) and one ucp_worker per *lane*
// (UCS_THREAD_MODE_SERIALIZED), each driven by its own progress thread that
// sleeps on the worker's event fd (ucp_worker_get_efd, ucp_worker_arm) and an
// eventfd of ours. Per peer and lane one ucp_ep (error handling mode: see
// PeerFailureDetection) and one unpacked ucp_rkey_h per remote region. WRITE is
// ucp_put_nbx, or active messages (ucp_am_send_nbx, received straight into the
// target region with ucp_am_recv_data_nbx) for peers reached only over TCP
// (WritePath); READ is ucp_get_nbx; completion is ucp_ep_flush_nbx (or an
// acknowledged fence message on the active-message path); notifications are
// active messages, or Unix-domain socket records to a same-host peer
// (UcxOptions::local_message_sockets: a sender killed mid-send cannot wedge them).
//
// Progress: the lane threads progress UCX whether or not the caller is inside
// an Agent call, so a target serves emulated RMA into caller-registered
// memory and receives notifications while its owner does something else.
// Callers block in Wait / WaitNotification on a condition variable (no CPU).
// On UCX 1.13.1 put/get into caller-registered memory is emulated over active
// messages (served by the target's lane threads); an arena (AllocateArena) in
// UCX-allocated shared memory receives true one-sided puts from a same-host
// peer under PeerFailureDetection::kAuto. Measurements: docs/transport.md.
//
// Thread-safety: the public methods of one Agent are called by one thread at a
// time (no call may overlap another call on the same Agent); internally the
// Agent runs AgentOptions::lanes threads. Distinct Agents are independent.
// Agents must not be shared across fork(): create them in the process that
// uses them (threads do not survive fork).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "shardwire/mapped_region.h"
#include "shardwire/metrics.h"
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
  /// In either mode a same-host peer reached over a local message link
  /// (UcxOptions::local_message_sockets) is also reported failed the moment its
  /// end hangs up: its process died, or it destroyed its Agent while the
  /// process lives on (which /proc does not show).
  /// Reason: UCX 1.13.1 refuses sysv/posix for PEER-mode endpoints ("no peer
  /// failure handler") and falls back to TCP, where puts are emulated and slow.
  kAuto,
  /// Every endpoint uses UCP_ERR_HANDLING_MODE_PEER with an error callback, as
  /// NIXL does. On one host with UCX 1.13.1 this means TCP only (see above).
  kUcxPeer,
};

/// How WRITE descriptors to a peer are executed.
enum class WritePath : std::uint8_t {
  /// Per descriptor, at PrepareTransfer: a kernel copy (see kKernelCopy) when the
  /// peer is kernel-copy capable (PeerInfo::kernel_copy) and this process cannot
  /// map the remote region (ArenaMemory::kPrivateHugePages arenas and
  /// caller-registered memory, into which UCX 1.13.1 emulates puts over active
  /// messages served by the target's lanes); otherwise, per peer at
  /// ImportMetadata, kActiveMessage when every lane of the UCX endpoint
  /// (ucp_ep_print_info) is TCP, kPut otherwise. Reason: UCX 1.13.1's put over
  /// TCP runs at 0.026 GB/s here, its active messages at 3 GB/s; a kernel copy
  /// into a private huge-page arena copies at memcpy speed with no first-touch
  /// cost on a shadow-paging hypervisor (docs/transport.md, "Kernel-copy WRITEs").
  kAuto,
  /// ucp_put_nbx (true one-sided where UCX can, e.g. shared-memory arenas).
  kPut,
  /// ucp_am_send_nbx with the target region and offset in the header; the
  /// target's lane thread receives the data straight into the region
  /// (ucp_am_recv_data_nbx for rendezvous, one memcpy for eager messages) after
  /// checking it against its registered regions. Completion is an
  /// acknowledged fence per lane, so "done" still means "visible at the target".
  kActiveMessage,
  /// process_vm_writev (Linux cross-memory attach) for every WRITE descriptor to
  /// a kernel-copy-capable peer (same host, not TCP only, ptrace access,
  /// pidfd_open: probed at ImportMetadata, PeerInfo::kernel_copy), mapped
  /// regions included; WRITEs to other peers as kAuto. The lane thread makes
  /// the system call: the kernel copies into the peer's pages through its own
  /// mapping (no mapping of the peer here, no pre-fault, no request the peer
  /// serves). The peer's pidfd is checked before each call and after the last,
  /// so a write never reaches a process that reused a dead peer's pid (see
  /// src/transport/kernel_copy.h for the remaining microsecond window); a dead
  /// peer fails the post with kPeerDisconnected. For tests and A/B runs.
  kKernelCopy,
};

/// Where the memory of an arena (Agent::AllocateArena) comes from.
enum class ArenaMemory : std::uint8_t {
  /// UCX allocates it (ucp_mem_map with UCP_MEM_MAP_ALLOCATE): on one host
  /// sysv/posix shared memory, which same-host peers map (ucp_rkey_ptr) and
  /// write or read one-sidedly with a memcpy. 4 KiB pages on hosts whose
  /// shmem_enabled is "never" (the development VMs).
  kShared,
  /// Private anonymous memory, 2 MiB-aligned and advised for transparent huge
  /// pages (madvise(MADV_HUGEPAGE); 4 KiB pages where the kernel grants none),
  /// excluded from fork (MADV_DONTFORK), populated for writing, zero-filled,
  /// registered with ucp_mem_map. Peers cannot map it: same-host peers read it
  /// by kernel copy (ReadPath) and write it by kernel copy (WritePath::kAuto),
  /// other peers go through UCX (ucp_get_nbx / ucp_put_nbx, emulated over
  /// active messages and served by this agent's lanes). Meant as the
  /// destination of READs (ReadPath::kAuto reads into it by kernel copy: a P2P
  /// loader's buffer) and of same-host WRITEs (an RL engine's weights: the
  /// writers pay no first touch per page and no pre-fault).
  /// Reason and figures: docs/benchmarks_history.md, "Issue 8 item 9" and
  /// docs/transport.md, "Kernel-copy WRITEs".
  kPrivateHugePages,
};

/// How READ descriptors from a peer on the same host (same boot id and pid
/// namespace, reached by UCX over shared memory, not TCP only) are executed.
enum class ReadPath : std::uint8_t {
  /// kKernelCopy for descriptors whose local region is an
  /// ArenaMemory::kPrivateHugePages arena that got huge pages
  /// (TransparentHugePages advisable) or whose remote region this process cannot
  /// map (the peer's private memory: the alternative is UCX's get, emulated over
  /// active messages and served by the peer's lanes); kMapped for the rest (a
  /// 4 KiB-page local region reading a peer's shared memory).
  /// Reason: under a shadow-paging hypervisor (PVM) each first user-space access
  /// through a mapping costs ~11-20 us per 4 KiB page; a mapped READ pays it on
  /// the peer's mapping and on the destination, a kernel copy into huge pages on
  /// neither, but a kernel copy into 4 KiB pages still pays it at the
  /// destination's first user access, later (docs/benchmarks_history.md, "Issue 8 item 9").
  kAuto,
  /// Through this process's mapping of the peer's region where UCX can map it
  /// (ucp_rkey_ptr: UCX-allocated shared memory), else ucp_get_nbx.
  kMapped,
  /// process_vm_readv (Linux cross-memory attach): the kernel copies from the
  /// peer's pages; no mapping of the peer in this process and no request the
  /// peer serves (one-sided whatever the peer's memory kind). Needs ptrace
  /// access to the peer (same user, or CAP_SYS_PTRACE; no Yama restriction) and
  /// pidfd_open (Linux 5.3): probed at ImportMetadata; a peer that cannot be read
  /// this way gets kMapped (PeerInfo::kernel_copy says which).
  kKernelCopy,
};

/// Lanes an Agent runs when AgentOptions::lanes is 0: measured on the 2-core
/// development machines (docs/transport.md, "Lanes").
inline constexpr std::uint32_t kDefaultLanes = 2;
/// Upper bound for AgentOptions::lanes (also the metadata blob's limit).
inline constexpr std::uint32_t kMaxLanes = 64;

/// Options only the UCX backend reads (AgentOptions::ucx; backend "ucx").
struct UcxOptions {
  /// Seconds between UCX keepalive rounds (UCX_KEEPALIVE_INTERVAL) that detect
  /// peers whose process died; 0 keeps the UCX default (20 s). An explicit
  /// UCX_KEEPALIVE_INTERVAL in the environment always wins. Negative or NaN:
  /// Agent::Create fails with kInvalidArgument.
  double keepalive_interval_s = 1;
  /// See PeerFailureDetection.
  PeerFailureDetection failure_detection = PeerFailureDetection::kAuto;
  /// Messages (notifications, SendMessage) to a same-host peer travel over a
  /// Unix-domain SOCK_SEQPACKET connection to the peer's lane (unix(7); abstract
  /// addresses, so both ends must share a network namespace, else UCX carries
  /// them) instead of UCX active messages. Why: UCX's shared-memory transports
  /// deliver every same-host sender's active messages through one in-order FIFO
  /// per receiving worker, and a sender killed in the middle of a send (SIGKILL,
  /// the OOM killer) leaves an element that never becomes ready, so the receiver
  /// hears nothing from anyone again: reproduced here in 1 to 15 kills
  /// (docs/transport.md, "Messages travel apart from data"). A socket connection
  /// dies alone. Data (puts, gets, mapped regions, kernel copies) is unaffected.
  /// Messages to other hosts stay UCX active messages (no shared FIFO there).
  /// false: every message is a UCX active message (the behaviour before).
  bool local_message_sockets = true;
};

/// Name of the default backend (AgentOptions::backend).
inline constexpr std::string_view kUcxBackend = "ucx";
/// Name of the in-process backend: agents of one process move bytes with memcpy;
/// for tests, with fault injection (src/transport/inproc/inproc_backend.h).
inline constexpr std::string_view kInProcessBackend = "inproc";

/// Construction options of an Agent.
struct AgentOptions {
  /// Name peers know this agent by; carried in its metadata blob and in every
  /// notification it sends. Must be non-empty and at most 65535 bytes.
  std::string name;
  /// Seconds, finite and >= 0. Upper bound for the flushing endpoint close (ucp_ep_close_nbx)
  /// when ImportMetadata replaces an idle peer (the lane waits for it). Endpoint creation itself is
  /// non-blocking (UCX wires up lazily on first use); every other wait takes
  /// its own timeout.
  double connect_timeout_s = 10;
  /// The transport backend (docs/transport.md, "Backend seam"): kUcxBackend
  /// ("ucx", default) or kInProcessBackend ("inproc": every agent in this
  /// process, no other process reachable; for tests). Peers must use the same
  /// backend: ImportMetadata of another backend's blob is kUnsupported. Unknown
  /// name: Agent::Create fails with kInvalidArgument.
  std::string backend = std::string(kUcxBackend);
  /// What only the UCX backend reads.
  UcxOptions ucx = {};
  /// Number of lanes: UCX workers, each with a progress thread and its own
  /// endpoint to every peer. Transfers are split across lanes (see
  /// slice_bytes). 0 means kDefaultLanes. At most kMaxLanes.
  std::uint32_t lanes = 0;
  /// Bytes. Descriptors longer than this are cut into slices of at most this
  /// size before the slices are divided among the lanes (contiguous runs of
  /// about equal bytes per lane); a transfer of at most half a slice in all
  /// stays on one lane. Must be >= 4096.
  std::uint64_t slice_bytes = std::uint64_t{1} << 20;
  /// Flow control: at most this many UCX operations (put/get/active message
  /// requests not yet completed) in flight per peer, shared evenly by the
  /// lanes (at least 1 per lane). Posting more descriptors queues them inside
  /// the agent (no memory per queued descriptor beyond the prepared list).
  std::uint32_t max_ops_in_flight_per_peer = 256;
  /// Flow control: at most this many bytes in flight per peer (same sharing);
  /// an operation larger than a lane's share is issued alone. Must be > 0.
  std::uint64_t max_bytes_in_flight_per_peer = std::uint64_t{256} << 20;
  /// See WritePath.
  WritePath write_path = WritePath::kAuto;
  /// See ReadPath.
  ReadPath read_path = ReadPath::kAuto;
  /// PrepareTransfer (kWrite) pre-faults, on each lane, the pages of the local
  /// mapping of a peer's shared-memory region (ucp_rkey_ptr) that the lane's
  /// slices will write: one byte per page accessed (value unchanged), which fills
  /// the kernel's page tables and builds the entries a shadow-paging hypervisor
  /// (PVM) keeps per page; madvise(MADV_POPULATE_WRITE) does only the former
  /// (docs/transport.md, "Pre-faulting"). The first post then runs at
  /// steady-state speed instead of paying 1-20 us per 4 KiB page;
  /// PrepareTransfer pays it instead (lanes in
  /// parallel). No effect on regions UCX cannot map (caller-registered memory,
  /// other hosts). For READs it populates, per lane, only the ranges the
  /// transfer reads (madvise(MADV_POPULATE_READ)).
  bool prefault_remote = true;
  /// Lane threads run under SCHED_BATCH (same nice value; no privilege
  /// needed): a lane woken by its event fd does not preempt the running
  /// thread at wake-up but runs at the next scheduling point (when a core
  /// frees up or the running thread's slice ends). On a loaded 2-core host
  /// every message to a sleeping same-host peer otherwise preempted the sender
  /// for 60-900 us, which dominated small-transfer steps. Set false where
  /// lane wake-up latency matters more than the caller's (e.g. a target whose
  /// own thread computes while its lanes serve emulated RMA).
  bool lane_sched_batch = true;
  /// Seconds a lane thread keeps polling for new work after its last job, and Wait
  /// polls for its transfer's completion, before either sleeps (a pause-instruction
  /// loop on an atomic counter; no system call, no lock held). Back-to-back posts
  /// then find their lanes awake and the caller awake for the completion: on the
  /// 2-core development VM a woken lane thread took 100-180 us to run, longer
  /// than its 2 MiB share of a 4 MiB post takes to copy (docs/transport.md,
  /// "Idle spin"). Costs at most
  /// this much CPU per lane per job and per Wait; an idle agent does not spin.
  /// 0 = sleep at once. Must be finite and in [0, 0.01].
  double idle_spin_s = 50e-6;
  /// Where this agent reports bytes, transfers and failures by peer (docs/metrics.md:
  /// shardwire_transport_*, labelled with this agent's name); must outlive the agent.
  /// nullptr: no metrics (a completed post then costs two no-op calls).
  MetricsRegistry* metrics = nullptr;
};

/// What this agent has decided about one imported peer (for diagnostics).
struct PeerInfo {
  std::string name;
  std::uint32_t remote_lanes = 0;          ///< worker addresses in the peer's blob
  bool same_host = false;                  ///< same boot id and pid namespace
  bool ucx_error_handling = false;         ///< UCP_ERR_HANDLING_MODE_PEER endpoints
  WritePath write_path = WritePath::kPut;  ///< kPut or kActiveMessage, resolved
  std::vector<std::string> transports;     ///< lane 0 data endpoint's transports, e.g. "sysv/memory"
  /// How messages (notifications, SendMessage) reach this peer when not on the
  /// endpoint above: {"unix/seqpacket"} for a same-host peer's local message
  /// channel (UcxOptions::local_message_sockets); empty: UCX active messages.
  std::vector<std::string> message_transports;
  /// READs from this peer may be kernel copies (ReadPath): same host, shared
  /// memory reachable, read_path not kMapped, pidfd_open and a probe read succeeded.
  bool kernel_copy = false;
  /// WRITEs to this peer may be kernel copies (WritePath): as kernel_copy, with
  /// write_path kAuto or kKernelCopy instead of the read_path condition.
  bool kernel_copy_writes = false;
  /// The "direct-mapped destination" capability: the peer's regions that this process can map
  /// (ucp_rkey_ptr succeeded: a same-host arena in sysv/posix shared memory), ascending. Each
  /// can be opened with Agent::MapPeerRegion. Empty for RDMA / TCP peers and caller-registered
  /// memory (UCX 1.13.1 emulates puts into it).
  std::vector<RegionId> mapped_regions;
};

/// Counters of one Agent since Create: which path the bytes took and what
/// pre-faulting cost. Read with Agent::Stats (monotonic; sample before and after
/// a post and subtract).
struct AgentStats {
  std::uint64_t posts = 0;  ///< Post calls accepted
  /// Lane jobs those posts started: each post adds the number of lanes its slices
  /// were divided among (PrepareTransfer; 1 for a transfer of at most half a slice,
  /// up to AgentOptions::lanes above that). lane_jobs / posts is lanes per post.
  std::uint64_t lane_jobs = 0;
  /// Blocks (a slice, or the rows of a strided descriptor within one slice)
  /// executed by a lane as a memcpy through this process's mapping of the
  /// peer's region (ucp_rkey_ptr): no UCX request. Bytes: their payload.
  std::uint64_t direct_copy_blocks = 0;
  std::uint64_t direct_copy_bytes = 0;
  /// ucp_put_nbx / ucp_get_nbx / ucp_am_send_nbx (write) calls for data, one per
  /// row of a block that is not copied directly. Bytes: their payload.
  std::uint64_t ucx_requests = 0;
  std::uint64_t ucx_bytes = 0;
  /// Pages of peers' mapped regions pre-faulted by PrepareTransfer
  /// (AgentOptions::prefault_remote, summed over lanes) and by
  /// MappedRegion::PrefaultForWrite on this agent's mappings, and the wall seconds
  /// spent doing it.
  std::uint64_t prefaulted_pages = 0;
  double prefault_s = 0;
  /// Seconds the lanes spent in batches of direct copies, summed over lanes: wall
  /// time (CLOCK_MONOTONIC, includes time a lane was preempted) and the lane
  /// threads' CPU time (CLOCK_THREAD_CPUTIME_ID). direct_copy_bytes / cpu seconds is
  /// the copy's own speed per core, independent of how busy the host is. A batch of
  /// under 4 MiB counts its wall time as CPU time (reading the thread CPU clock is a
  /// system call that would cost more than such a batch's copy), so a lane preempted
  /// inside small batches makes this figure larger, never smaller.
  double direct_copy_s = 0;
  double direct_copy_cpu_s = 0;
  /// Blocks of READ descriptors executed as kernel copies (process_vm_readv,
  /// see ReadPath) and their bytes. Not counted in direct_copy_* or ucx_*.
  /// Blocks of WRITE descriptors executed as process_vm_writev (WritePath) count here too.
  std::uint64_t kernel_copy_blocks = 0;
  std::uint64_t kernel_copy_bytes = 0;
  /// Seconds the lanes spent in batches of only kernel copies, summed over lanes: wall
  /// time and the lane threads' CPU time (as direct_copy_s / direct_copy_cpu_s; the
  /// kernel's copy is system time of the lane thread, so it is included).
  double kernel_copy_s = 0;
  double kernel_copy_cpu_s = 0;
};

/// A gap between two rounds of a lane's progress thread longer than this (seconds) counts
/// toward Agent::LaneStallSeconds by its excess. A round of a running lane ends in a sleep of
/// at most 0.1 s, so a healthy lane never comes near it.
inline constexpr double kLaneStallThresholdS = 0.5;

/// Human-readable name of a WritePath ("auto", "put", "active-message", "kernel-copy").
std::string_view WritePathName(WritePath p);

/// A message from a peer: sent by Agent::SendMessage, or attached to a posted
/// transfer (then delivered only after all of that post's bytes are visible).
struct Notification {
  std::string peer;                ///< the sender's AgentOptions::name
  std::vector<std::byte> payload;  ///< bytes, exactly as sent
};

/// One endpoint of one-sided transfers. Create with Agent::Create; destroy to
/// release every UCX resource. Endpoints are force-closed: PEER-mode peers see
/// this agent as disconnected; same-host peers reached over a local message link
/// (UcxOptions::local_message_sockets) see its channel hang up and mark it failed
/// at once; other same-host kAuto peers notice only when this process exits
/// (their liveness check), so tell those out of band or with a SendMessage before
/// destroying an agent in a process that lives on.
class Agent {
 public:
  /// Makes the transport backend (AgentOptions::backend; UCX: the context and one
  /// worker per lane (ucp_init, ucp_worker_create) with the active-message
  /// handlers (ucp_worker_set_am_recv_handler)) and starts one progress thread
  /// per lane. Errors: kInvalidArgument for an empty or over-long name, a
  /// negative or NaN timeout (ucx.keepalive_interval_s included), an infinite
  /// connect_timeout_s, idle_spin_s outside [0, 0.01] s, lanes above
  /// kMaxLanes, slice_bytes below 4096, zero flow-control limits or an unknown
  /// backend; kTransportError when UCX refuses (message names the call);
  /// kInternal when a thread, eventfd, epoll fd or a lane's local message
  /// socket (UcxOptions::local_message_sockets) cannot be made.
  static Result<std::unique_ptr<Agent>> Create(AgentOptions options);

  /// Stops the lane threads, force-closes every endpoint and releases every
  /// UCX resource (see the class comment for what peers observe).
  ~Agent();
  Agent(const Agent&) = delete;
  Agent& operator=(const Agent&) = delete;

  /// This agent's name (AgentOptions::name).
  const std::string& name() const;

  /// The options in force, with defaults resolved (lanes never 0).
  const AgentOptions& options() const;

  /// Registers `length` bytes at `addr`, allocated and owned by the caller, for
  /// remote read and write (ucp_mem_map without UCP_MEM_MAP_ALLOCATE). The
  /// memory must stay valid until Deregister or the Agent's destruction.
  /// Errors: kInvalidArgument for a null address or zero length;
  /// kTransportError when ucp_mem_map or ucp_rkey_pack fails.
  Result<RegionId> RegisterMemory(void* addr, std::size_t length);

  /// A caller-owned byte range to make transferable (see RegisterRanges).
  struct MemoryRange {
    const void* addr = nullptr;
    std::size_t length = 0;  ///< bytes
  };
  /// Where one input range of RegisterRanges ended up.
  struct RangeLocation {
    RegionId region = 0;
    std::uint64_t offset = 0;  ///< bytes from the start of `region`
  };

  /// Registers many caller-owned ranges (e.g. one per tensor) with as few
  /// registrations as possible: ranges that overlap, touch, or are separated
  /// by at most `max_gap` bytes are coalesced into one region (one
  /// ucp_mem_map, one rkey in the metadata blob) per maximal run. Gap bytes
  /// become remotely accessible too, so pass a non-zero `max_gap` only for
  /// ranges known to lie in one allocation (e.g. tensors of one storage with
  /// alignment padding). Returns, in input order, each range's region and
  /// offset. Nothing is registered on error.
  /// Errors: kInvalidArgument for an empty list, a null address, a zero
  /// length or a range that wraps around the address space; kTransportError
  /// from ucp_mem_map / ucp_rkey_pack.
  Result<std::vector<RangeLocation>> RegisterRanges(std::span<const MemoryRange> ranges, std::size_t max_gap = 0);

  /// Allocates and registers `length` bytes in one step (ucp_mem_map with
  /// UCP_MEM_MAP_ALLOCATE; on one host UCX places it in sysv/posix shared
  /// memory, which peers on the same host can write one-sidedly). The agent owns
  /// the memory; it is freed by Deregister or destruction. Contents are
  /// unspecified (not zeroed). Reach the bytes with RegionBytes; carve tensors
  /// out of it with ArenaAllocator (shardwire/arena_allocator.h).
  /// Errors: kInvalidArgument for zero length; kTransportError from UCX
  /// (e.g. out of shared memory).
  Result<RegionId> AllocateArena(std::size_t length);

  /// AllocateArena with the memory kind chosen: ArenaMemory::kShared is the
  /// overload above; ArenaMemory::kPrivateHugePages maps private huge-page
  /// memory (see ArenaMemory; contents zero) and registers it. The agent owns the
  /// memory either way. Errors: kInvalidArgument for zero length; kIoError when
  /// mmap fails; kTransportError from UCX.
  Result<RegionId> AllocateArena(std::size_t length, ArenaMemory memory);

  /// The bytes of a local region (registered or arena); an empty span for an
  /// unknown id. Valid until Deregister(id) or destruction.
  std::span<std::byte> RegionBytes(RegionId id) const;

  /// Unregisters a region (ucp_mem_unmap); an arena's memory is freed. Regions
  /// already exported stay in peers' copies of the metadata: re-export and have
  /// peers re-import before they prepare against this agent again.
  /// Errors: kNotFound for an unknown id; kInvalidArgument while a prepared
  /// transfer still uses the region (Release those transfers first).
  Status Deregister(RegionId id);

  /// Serialises every lane's worker address and every current region (id,
  /// base, length, packed rkey) into a versioned, XXH64-checksummed blob
  /// (format in src/transport/metadata_blob.h). Size is O(regions + lanes), about
  /// 49 bytes per arena region: 291 tensors in one arena cost one record.
  /// Never touches the network.
  /// Errors: none expected today (Result for forward compatibility).
  Result<std::vector<std::byte>> ExportMetadata() const;

  /// Decodes a peer's blob, takes the section of this agent's backend and (UCX)
  /// creates on every lane an endpoint to one of its
  /// worker addresses (lane i -> remote lane i mod remote lanes; ucp_ep_create;
  /// UCP_ERR_HANDLING_MODE_PEER with an error callback that marks the peer
  /// failed, or UCP_ERR_HANDLING_MODE_NONE plus process liveness checks for a
  /// same-host peer, see PeerFailureDetection), unpacks every region's rkey on
  /// every lane (ucp_ep_rkey_unpack) and resolves the WritePath. Returns the
  /// peer's name. A peer already imported
  /// under the same name is replaced: its endpoint is closed and transfers
  /// prepared against it report kPeerDisconnected on Post (prepare them again).
  /// Non-blocking: the connection is wired up on first use.
  /// Errors: kCorruptData from blob validation (see DecodeAgentMetadata) or the
  /// backend's section; kUnsupported when the blob has no section of this
  /// agent's backend (the message names the blob's backends and this one);
  /// kTransportError when UCX rejects the address or an rkey; kInvalidArgument
  /// when the replaced peer still has transfers in flight (Wait for them or
  /// InvalidatePeer first); kPeerDisconnected, before any endpoint is created, when
  /// the blob names a same-host process that is gone (its pid no longer exists or
  /// now names a process with another start time: a blob a killed process left
  /// in a rendezvous), the message saying why (transport/peer_liveness.h).
  Result<std::string> ImportMetadata(std::span<const std::byte> blob);
  /// ImportMetadata of a blob that must name `expected_name` (e.g. the sender of the message
  /// that carried it): a blob naming another agent is refused with kInvalidArgument naming
  /// both, before anything is imported or replaced, so a peer cannot replace another peer's
  /// connection by sending that peer's blob. Errors: those of ImportMetadata, and that one.
  Result<std::string> ImportMetadata(std::span<const std::byte> blob, std::string_view expected_name);

  /// Forgets a peer: in-flight transfers to it fail with kPeerDisconnected,
  /// its endpoint is force-closed (ucp_ep_close_nbx, UCP_EP_CLOSE_FLAG_FORCE;
  /// queued requests complete with UCS_ERR_CANCELED), its rkeys are destroyed.
  /// Returns within about 50 ms plus the close. Prepared transfers to it stay
  /// valid handles whose Post returns kPeerDisconnected; Release them (allowed
  /// even if a post was in flight).
  /// Errors: kNotFound for an unknown peer.
  Status InvalidatePeer(const std::string& peer);

  /// Validates and resolves a descriptor list against `peer` once: local regions
  /// and memory handles, remote addresses and rkeys; cuts descriptors into
  /// slices (AgentOptions::slice_bytes) and divides them among the lanes;
  /// pre-faults the pages of remote shared-memory mappings the lanes will write
  /// (AgentOptions::prefault_remote; about 1 us per 4 KiB page on bare metal,
  /// 7-20 us under a shadow-paging hypervisor, spread over the lanes).
  /// `notification_payload`, if present, is delivered to the peer after every
  /// byte of each post is remotely complete (Post(handle, payload) replaces it
  /// for one post). The descriptors are copied; `descriptors` may be empty (a
  /// post then only delivers the notification, after a flush). Memory: about
  /// 48 bytes per slice, independent of how often the transfer is posted.
  /// Errors (nothing is prepared on error): kNotFound for an unknown peer;
  /// kPeerDisconnected for a failed peer; kInvalidArgument naming the first bad
  /// descriptor index: unknown local or remote region, or
  /// offset + length beyond the region's length (overflow-safe); a payload
  /// above 2^31 bytes.
  /// Each prepared transfer pins its local regions (see Deregister).
  Result<TransferHandle> PrepareTransfer(TransferOp op, const std::string& peer,
                                         std::vector<TransferDescriptor> descriptors,
                                         std::optional<std::vector<std::byte>> notification_payload);

  /// Starts one execution of a prepared transfer: hands each lane its slices;
  /// the lane threads issue ucp_put_nbx / ucp_get_nbx (or active messages, see
  /// WritePath) within the flow-control limits, then ucp_ep_flush_nbx (or a
  /// fence). Once every lane is remotely complete (every byte visible at the
  /// target for WRITE, in local memory for READ) the attached notification, if
  /// any, is sent with ucp_am_send_nbx, so the target never sees it before the
  /// data. Returns without waiting for completion; observe it with Test or Wait.
  /// When the transfer's first lane holds at most 2 slices (2 x slice_bytes) and
  /// that lane is idle, the calling thread issues that lane's operations itself
  /// (after waking the other lanes), then whatever the other lanes' threads have
  /// not started yet (their lock free), and direct copies into a mapped arena then
  /// finish before Post returns: tens of microseconds of copying at the default
  /// slice size, never a blocking lock or a wait for a peer. A
  /// completed, failed or cancelled transfer may be posted again.
  /// Errors: kNotFound for an unknown handle; kInvalidArgument while a previous
  /// post of the same handle is still in flight or draining; kPeerDisconnected
  /// when the peer failed, was invalidated or re-imported since
  /// PrepareTransfer. UCX errors of individual operations surface in Test/Wait.
  Status Post(TransferHandle handle);

  /// As Post(handle), but this post's notification carries `payload` instead
  /// of the one given to PrepareTransfer (e.g. the weight version of this
  /// step); later posts without a payload send the prepared one again. Works
  /// on transfers prepared without a payload too.
  /// Errors: as Post, plus kInvalidArgument for a payload above 2^31 bytes.
  Status Post(TransferHandle handle, std::span<const std::byte> payload);

  /// Reports, without blocking, whether the latest post of `handle` is
  /// complete (true), still running (false) or failed (error).
  /// Errors: kNotFound for an unknown handle; kInvalidArgument if never posted
  /// or cancelled; kPeerDisconnected when the peer failed; kTransportError for
  /// other UCX failures.
  Result<bool> Test(TransferHandle handle);

  /// Blocks until the latest post of `handle` completes, fails, or `timeout_s`
  /// seconds pass. Polls for at most AgentOptions::idle_spin_s (not when this
  /// post had to wake a sleeping lane), then sleeps on a condition variable that
  /// the lane threads signal, using no CPU. Notifications that arrive meanwhile
  /// are queued (see WaitNotification).
  /// Errors: as Test, plus kTimedOut (the transfer keeps running; Wait again,
  /// Cancel it, or InvalidatePeer to abandon it); kInvalidArgument for a NaN
  /// `timeout_s` (a negative one polls once).
  Status Wait(TransferHandle handle, double timeout_s);

  /// Stops the latest post of `handle`: slices not yet handed to UCX are
  /// dropped and the notification is not sent; operations already issued
  /// cannot be recalled (UCX 1.13.1) and are waited for, at most `timeout_s`
  /// seconds. Bytes at the target are then partly written. Afterwards Test and
  /// Wait report kInvalidArgument ("cancelled") until the next Post. A post
  /// that already completed or failed is left as it is.
  /// Errors: kNotFound for an unknown handle; kInvalidArgument if never
  /// posted; kTimedOut when issued operations did not drain in time (Cancel
  /// again or InvalidatePeer); kInvalidArgument for a NaN `timeout_s` (a negative
  /// one polls once).
  Status Cancel(TransferHandle handle, double timeout_s);

  /// Forgets a prepared transfer and unpins its local regions. A transfer whose
  /// peer is gone (failed, invalidated or re-imported: its endpoints closed)
  /// may be released even with requests outstanding (UCX 1.13.1 may never
  /// complete requests to a dead peer); the bookkeeping is then kept until the
  /// Agent is destroyed, and for a READ the local regions stay pinned too,
  /// since a late reply could still land in them.
  /// Errors: kNotFound for an unknown handle; kInvalidArgument while a post to a
  /// live peer is in flight (Wait for it, Cancel it, or InvalidatePeer).
  Status Release(TransferHandle handle);

  /// Establishes the connection to an imported peer on every lane now, instead of
  /// on first use: UCX creates endpoints lazily (ucp_ep_create returns at once and
  /// the wire-up handshake, which needs the peer's lanes to answer, runs inside the
  /// first operation). This runs one ucp_ep_flush_nbx per lane through the same
  /// path a transfer uses and waits for all of them, so the first Post of a
  /// prepared transfer pays no wire-up. Idempotent; cheap once connected.
  /// Blocks at most timeout_s seconds (Wait semantics; the peer's lanes must
  /// progress, which they do on their own). A wire-up that fails (timed out, peer
  /// gone, transport error) forgets the peer as InvalidatePeer does, so that no
  /// flush to a stalled peer outlives the call: ImportMetadata it again to retry.
  /// Errors: kNotFound for an unknown peer; kPeerDisconnected for a failed peer;
  /// kTimedOut; kInvalidArgument for a NaN timeout; kTransportError.
  Status WireUp(const std::string& peer, double timeout_s);

  /// Sends a standalone notification (a local socket record to a same-host peer,
  /// UcxOptions::local_message_sockets; else ucp_am_send_nbx). Returns once it is
  /// queued; the payload is copied and kept until UCX completes the send. No
  /// ordering against this agent's RMA: to signal "data landed", attach the
  /// payload to the transfer instead. A send that later fails marks the peer
  /// failed (kPeerDisconnected on later calls).
  /// Errors: kNotFound for an unknown peer; kPeerDisconnected for a failed peer;
  /// kInvalidArgument when payload + name exceed 2^31 bytes; kTransportError.
  Status SendMessage(const std::string& peer, std::span<const std::byte> payload);

  /// Returns the oldest queued notification from any peer, sleeping on a
  /// condition variable (no CPU) until one arrives or `timeout_s` seconds
  /// pass. (The lane threads serve peers' RMA and advance this agent's
  /// transfers whether or not anyone waits.)
  /// Errors: kTimedOut; kPeerDisconnected once per peer failure detected while
  /// no notification is queued (the message names the peer; later calls wait
  /// again).
  Result<Notification> WaitNotification(double timeout_s);

  /// Returns every queued notification, oldest first (possibly none), without
  /// blocking.
  std::vector<Notification> TakeNotifications();

  /// Wakes the lane threads so they progress their workers at once; never
  /// blocks. Not needed for correctness (the lanes progress on their own);
  /// kept for callers that poll.
  void Progress();

  /// What this agent decided about an imported peer (lanes, transports,
  /// write path). Errors: kNotFound for an unknown peer.
  Result<PeerInfo> DescribePeer(const std::string& peer) const;

  /// The direct-mapped destination capability (shardwire/mapped_region.h): the peer's region
  /// `region`, mapped into this process through the agent's own mapping of it (lane 0's
  /// unpacked rkey, ucp_rkey_ptr), for the caller to write or read with plain stores and loads.
  /// The mapping lives as long as the peer's connection: it is revoked when the peer fails, is
  /// invalidated or re-imported, or this Agent is destroyed (MappedRegion::Acquire then reports
  /// kPeerDisconnected). Calling again for the same region returns the same mapping. Cheap (no
  /// system call; the pages are not touched: see MappedRegion::PrefaultForWrite).
  /// Errors: kNotFound for an unknown peer or a region the peer did not export;
  /// kPeerDisconnected for a failed peer; kUnsupported when UCX cannot map the region here
  /// (another host, TCP, RDMA, caller-registered memory: PeerInfo::mapped_regions lacks it).
  Result<MappedRegion> MapPeerRegion(const std::string& peer, RegionId region);

  /// The agent's counters (AgentStats). Thread-safe (relaxed atomic reads; a
  /// post in flight may be counted partly).
  AgentStats Stats() const;

  /// Seconds each of this agent's lanes was held up since Create, by lane index (size
  /// options().lanes). Each lane's progress thread starts a round (progress the backend,
  /// advance its jobs, then sleep at most 0.1 s) every few milliseconds when it runs; a gap of
  /// more than kLaneStallThresholdS between two rounds counts its excess over
  /// kLaneStallThresholdS, and a gap still open counts up to now. Each entry never decreases.
  /// A held-up lane moves no bytes and delivers no message, whatever its peers do: its thread
  /// was starved of CPU, stopped with the process, or waited for the lane's lock held by a
  /// call on another thread (e.g. a force-close of a failed peer's endpoint, bounded by 2 s, or
  /// a small post run inline on the posting thread). Waits that blame a peer for silence move
  /// their deadlines by the largest growth of one lane (the P2P loader's stall deadlines, the
  /// push's transfer and message waits: docs/reliability.md, "Own pauses"). Thread-safe;
  /// cheap (one uncontended lock per lane, no system call).
  std::vector<double> LaneStallSeconds() const;

  /// Names of peers found dead (UCX error callback, failed liveness check, or a
  /// local message link the peer hung up)
  /// and not invalidated or re-imported since. A failed peer's endpoint is
  /// force-closed by its lane threads within about 100 ms, which cancels its
  /// outstanding requests, so its transfers can then be released. For
  /// diagnostics.
  std::vector<std::string> FailedPeers() const;

 private:
  struct Impl;  // src/transport/agent_impl.h: the agent's bookkeeping over its TransportBackend
  explicit Agent(std::unique_ptr<Impl> impl);
  Status Post(TransferHandle handle, std::span<const std::byte> payload, bool replace);
  std::unique_ptr<Impl> impl_;
};

}  // namespace shardwire
