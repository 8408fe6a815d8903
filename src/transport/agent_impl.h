// Agent::Impl: the state of one Agent and the declarations of the functions that
// run it, shared by the files of src/transport that implement the agent. Each
// of those files holds one concern (docs/transport.md, "Source files"):
//   agent.cc            the public transfer API (Post, Test, Wait, Cancel, Release,
//                       WireUp, SendMessage, notifications, stats): thin.
//   agent_lifecycle.cc  Agent::Create (backend, lanes, threads), Shutdown.
//   agent_regions.cc    local regions: register, allocate arenas, deregister, export.
//   agent_peers.cc      peers: import a blob (endpoints, rkeys, paths), invalidate,
//                       describe, map a peer's region.
//   mapped_region.cc    MappedRegion and its Access.
//   prepare_transfer.cc PrepareTransfer: validate, slice, divide among lanes, pre-fault.
//   lane_jobs.cc        the per-lane job state machine (issue, flush/fence, notify).
//   lane_loop.cc        a lane's progress thread (progress, advance, sleep).
//   backend_events.cc   what the backend reports: messages (notifications), where a
//                       WRITE sent as messages lands, peer failures.
//   peer_failure.cc     peer failure: backend reports, liveness, force-close, teardown.
// and the pure helpers: notification_codec, peer_liveness (/proc),
// lane_division, strided_rows (slicing), prefault, kernel_copy, private_arena.
// The transport itself is behind the backend seam (backend.h): src/transport/ucx/,
// src/transport/inproc/. No file of the agent includes a transport's headers.
//
// Threads and locks
//   * The API thread (one caller at a time) owns `peers`, `transfers` and the
//     option values.
//   * Each Lane has one progress context in the backend (UCX: a worker) and runs
//     one progress thread. Every backend call naming a lane, and everything that
//     touches a lane's links and jobs, happens with Lane::mu held: by the lane
//     thread, or by the API thread for connecting/closing links and SendMessage,
//     or by lane 0's thread, which in CheckLiveness try_locks another lane's mu
//     while it holds its own (never waiting for it) to drain that lane's messages.
//     The lane thread releases mu only while it spins idle (idle_spin_s) or sleeps
//     in ppoll on the backend's event fd (armed with TransportBackend::Arm) and its
//     wake eventfd.
//   * Impl::mu (leaf lock, never held while taking a Lane::mu) guards transfer
//     execution state, the notification queue, peer failure records and
//     peers_by_serial; Impl::cv is signalled on every change waiters care about.
//   * Impl::regions_mu guards the local region table (read by lane threads when
//     a backend asks where a WRITE sent as messages lands).
//   Lock order: Lane::mu -> Impl::mu; Lane::mu -> regions_mu. Backend completions
//   and events run with the lane's mu held (inside TransportBackend::Progress).
//
// A post becomes one Job per lane that has slices. A lane issues its job's
// operations within the per-peer flow-control limits, then completes it with the
// backend's Flush (UCX: ucp_ep_flush_nbx, or a fence the target acknowledges for
// WRITEs sent as messages). The last lane to finish sends the notification, then
// marks the transfer done.
//
// Internal header (src/transport); not part of the public API.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <unistd.h>

#include "shardwire/agent.h"
#include "transport/agent_metrics.h"
#include "transport/backend.h"
#include "transport/file_descriptor.h"
#include "transport/kernel_copy.h"
#include "transport/metadata_blob.h"
#include "transport/notification_codec.h"
#include "transport/private_arena.h"

namespace shardwire::transport {

/// The clock of every deadline and period of the agent.
using Clock = std::chrono::steady_clock;

/// Seconds a force-close of a link may take (TransportBackend::CloseLink; UCX's
/// Endpoint::kDefaultCloseTimeoutS).
inline constexpr double kForceCloseTimeoutS = 2.0;

/// WRITEs may be kernel copies under write path `p` (kKernelCopy always; kAuto into
/// regions this process cannot map). Pure.
inline bool WritesMayKernelCopy(WritePath p) { return p == WritePath::kAuto || p == WritePath::kKernelCopy; }

/// Polls `changed()` (a relaxed atomic read or similar, no lock) with a pause instruction between
/// reads until it returns true (then returns true) or `seconds` passed (false); reads the clock
/// every 64 polls. No system call. AgentOptions::idle_spin_s.
template <class Changed>
bool SpinUntil(double seconds, Changed changed) {
  const auto until = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
  for (unsigned i = 1;; ++i) {
    if (changed()) return true;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
    if (i % 64 == 0 && Clock::now() >= until) return false;
  }
}

/// A region a peer exported (from its metadata blob): id, base address in the
/// peer's process, length in bytes. Immutable after ImportMetadata.
struct RemoteRegion {
  RegionId id = 0;
  std::uint64_t base = 0;
  std::uint64_t length = 0;
};

/// One peer's link on one lane (BackendLink: the backend's handle and the regions
/// it mapped here, copied into directly with a 2-D memcpy) and its flow-control
/// accounting. Guarded by that lane's mu.
struct LaneEp : BackendLink {
  bool open = false;  // connected and not closed: ops may be posted on `link`
  std::uint32_t ops_in_flight = 0;
  std::uint64_t bytes_in_flight = 0;
};

/// The execution state of a prepared transfer's current post.
enum class TransferState { kIdle, kRunning, kDone, kFailed, kCancelled };

/// A prepared transfer: what PrepareTransfer computed (immutable afterwards) and
/// the state of its current post (guarded by Agent::Impl::mu). Shared by the API
/// thread's table and every Job of it (a released transfer lives on while jobs
/// still point at it).
struct TransferCore {
  std::uint64_t id = 0;
  TransferOp op = TransferOp::kWrite;
  std::string peer_name;
  std::uint64_t peer_serial = 0;
  bool am_write = false;
  std::uint64_t total_bytes = 0;
  std::vector<std::vector<PreparedOp>> lane_ops;  // immutable after prepare
  std::vector<std::uint64_t> lane_bytes;          // bytes of lane_ops[l], immutable after prepare
  std::vector<RegionId> pinned;                   // one entry per pin taken
  std::optional<std::vector<std::byte>> prepared_wire;  // encoded once
  bool all_lanes = false;  // post a job on every lane even without ops (WireUp: a flush per lane)
  // Guarded by Impl::mu.
  TransferState state = TransferState::kIdle;
  Status error;
  std::uint64_t seq = 0;           // post counter
  std::uint32_t lanes_pending = 0;  // lanes of the current post not yet complete
  std::uint32_t jobs_alive = 0;     // jobs (any post) still holding backend requests
  bool abandoned_requests = false;  // a job was abandoned with requests outstanding
  bool cancel = false;
  bool has_wire = false;
  bool notified = false;             // this post's notification was sent
  std::vector<std::byte> post_wire;  // this post's encoded notification
  transport::TransferMetrics metrics;  // AgentOptions::metrics series (no-op without)
  // The current post woke a sleeping lane thread. Wait then sleeps at once instead of spinning
  // (AgentOptions::idle_spin_s): the scheduler tends to wake a thread on its waker's CPU, and a
  // spinning waiter would keep the lane from running there. Written by Post, read by Wait.
  std::atomic<bool> woke_sleeping_lane{false};
};

}  // namespace shardwire::transport

namespace shardwire {

// The files that implement the agent (src/transport only; nothing else includes this
// header) name the transport's internal types without their namespace.
using transport::Clock;
using transport::Completion;
using transport::FileDescriptor;
using transport::LaneEp;
using transport::PreparedOp;
using transport::RemoteRegion;
using transport::TransferCore;
using transport::TransferState;

/// A MappedRegion's state: lane 0's mapping of one peer region, shared by every MappedRegion and
/// Access of it. Revoked (exclusive lock, so only after every Access ended) before the rkey that
/// owns the mapping is destroyed, and when the peer fails.
struct MappedRegion::Lease {
  std::string peer;
  RegionId region = 0;
  std::byte* base = nullptr;
  std::uint64_t length = 0;
  std::shared_mutex mu;
  bool revoked = false;  // guarded by mu
  Status why;            // guarded by mu
  // The owning agent's AgentStats counters that PrefaultForWrite adds to (Impl::Counters).
  // Valid while the lease is not revoked: the agent revokes every lease before it is destroyed,
  // and revocation waits for Accesses (PrefaultForWrite counts under one).
  std::atomic<std::uint64_t>* prefaulted_pages = nullptr;
  std::atomic<std::uint64_t>* prefault_ns = nullptr;
};

/// The agent's state and the functions that run it (see the file comment for
/// which file defines which, and for the threads and locks).
struct Agent::Impl final : transport::BackendEvents {
  struct Lane;
  struct Job;

  /// One issued op's flow-control accounting: the Completion of its backend requests. Lane::mu.
  struct OpCookie : Completion {
    Job* job = nullptr;
    std::uint64_t bytes = 0;
    std::uint64_t requests = 0;  // backend requests of this op (one per row) not yet completed
  };

  /// A Completion of one of a job's flush, acknowledgement or notification. Lane::mu.
  struct JobCompletion : Completion {
    Job* job = nullptr;
  };

  /// An imported peer: what its blob said, how this agent reaches it (per-lane endpoints,
  /// write path, kernel copy) and whether it failed. Immutable after ImportMetadata except
  /// where a member says how it is guarded. Shared by the API thread and the lanes.
  struct PeerState {
    std::string name;
    std::uint64_t serial = 0;
    transport::ProcessIdentity process;
    bool same_host = false;
    bool liveness_checked = false;
    bool ucx_error_handling = false;  // the backend reports this peer's failure itself
    void* handle = nullptr;           // the backend's (TransportBackend::OpenPeer)
    WritePath write_path = WritePath::kPut;
    std::uint32_t remote_lanes = 0;
    std::vector<std::string> transports;
    std::vector<std::string> message_transports;  // PeerInfo::message_transports
    transport::PeerProcess kernel_copy;  // valid: READs / WRITEs may be kernel copies (ReadPath, WritePath)
    // By region index: lane 0 could map the region (backend mapping), i.e. a WRITE to it is a
    // direct copy; WritePath::kAuto uses kernel copies only into regions not mapped.
    std::vector<bool> region_mapped;
    std::vector<RemoteRegion> regions;
    std::unordered_map<RegionId, std::uint32_t> region_index;
    std::vector<LaneEp> lanes;  // lanes[i] guarded by Impl::lanes[i]->mu
    std::atomic<bool> failed{false};
    Status failure;  // guarded by Impl::mu
    // MapPeerRegion's leases by region index (null until mapped), guarded by leases_mu.
    std::mutex leases_mu;
    std::vector<std::shared_ptr<MappedRegion::Lease>> leases;
  };

  /// Revokes every MappedRegion of `peer`: waits for Accesses still held (their writes finish
  /// into a live mapping), then later Acquires report `why`. Must run before lane 0's rkeys of the
  /// peer are destroyed. Any thread; takes no lane mutex. (peer_failure.cc)
  static void RevokeLeases(PeerState& peer, const Status& why);

  /// Where a Job is: issuing ops, waiting for its flush (the backend's; for WRITEs
  /// sent as messages an acknowledged fence), sending the notification, finished.
  enum class Phase { kIssue, kFlushing, kNotifying, kFinished };

  /// One lane's part of one post. Owned by the lane; touched under Lane::mu.
  struct Job {
    std::shared_ptr<TransferCore> t;
    std::uint64_t seq = 0;
    Lane* lane = nullptr;
    PeerState* peer = nullptr;  // valid while attached (lep != nullptr)
    LaneEp* lep = nullptr;      // nullptr once detached (peer torn down)
    const std::vector<PreparedOp>* ops = nullptr;
    std::size_t next = 0;
    std::uint32_t ops_in_flight = 0;
    std::uint64_t bytes_in_flight = 0;
    std::uint32_t outstanding = 0;  // backend requests referring to this job
    Phase phase = Phase::kIssue;
    bool flush_done = false;
    bool awaiting_ack = false;  // flush_visible is held by the backend (ForgetAck when finishing early)
    bool backend_ops = false;   // some op went to the backend (else all were kernel or direct copies)
    bool notify_done = false;
    JobCompletion flush_request, flush_visible, notify;
    bool failed = false;
    Status error;
    bool lane_reported = false;  // counted out of TransferCore::lanes_pending
    std::vector<OpCookie> cookies;
    std::vector<std::uint32_t> free_cookies;

    void Fail(Status s) {
      if (!failed) {
        failed = true;
        error = std::move(s);
      }
    }
  };

  /// One lane: its progress thread and jobs; its transport context is the backend's.
  struct Lane {
    Impl* impl = nullptr;
    std::uint32_t index = 0;
    FileDescriptor wake;
    std::mutex mu;
    std::thread thread;
    bool stop = false;  // guarded by mu
    std::list<std::unique_ptr<Job>> jobs;
    std::vector<std::unique_ptr<Job>> abandoned;
    std::vector<std::shared_ptr<PeerState>> peers;
    std::uint32_t ops_limit = 1;
    std::uint64_t bytes_limit = 1;
    std::vector<transport::RowCopy> kernel_batch;  // IssueOps' scratch, guarded by mu

    // Wake-ups asked for (Wake) and whether the thread is about to sleep or asleep in ppoll
    // (RunLane). Wake writes the eventfd only when `sleeping`: a lane that is running or spinning
    // (AgentOptions::idle_spin_s) sees `wakes` change instead, without a system call. Both are
    // sequentially consistent: either the lane sees the new count before it sleeps, or Wake sees
    // `sleeping` and writes the eventfd.
    std::atomic<std::uint64_t> wakes{0};
    std::atomic<bool> sleeping{false};

    // When the thread last started a round of RunLane, and the sum of the excess over
    // kLaneStallThresholdS of every gap between rounds (Agent::LaneStallSeconds). Guarded by
    // stall_mu (not mu: a reader must not wait for a held-up round), together so that a
    // reader sees a gap either still open or already summed, never both or neither.
    std::mutex stall_mu;
    std::chrono::steady_clock::time_point round_start = std::chrono::steady_clock::now();
    std::chrono::steady_clock::duration stalled{};

    /// Called by the lane thread at the start of each round: closes the gap since the last. The
    /// clock is read under the lock, so that no reader saw the gap open past the time it closes.
    void StartRound() {
      std::lock_guard<std::mutex> g(stall_mu);
      const auto now = std::chrono::steady_clock::now();
      const auto gap = now - round_start;
      const auto threshold = std::chrono::duration_cast<std::chrono::steady_clock::duration>(
          std::chrono::duration<double>(kLaneStallThresholdS));
      if (gap > threshold) stalled += gap - threshold;
      round_start = now;
    }

    /// Seconds held up so far, the open gap's excess included. Any thread.
    double StalledSeconds() {
      std::lock_guard<std::mutex> g(stall_mu);
      const auto now = std::chrono::steady_clock::now();
      const double open = std::chrono::duration<double>(now - round_start).count() - kLaneStallThresholdS;
      return std::chrono::duration<double>(stalled).count() + std::max(0.0, open);
    }

    /// Wakes the lane thread (its eventfd, if it sleeps). Returns true when it was asleep (or
    /// about to be). Any thread, no lock needed.
    bool Wake() {
      wakes.fetch_add(1);
      if (!sleeping.load()) return false;
      const std::uint64_t one = 1;
      ssize_t r = ::write(wake.get(), &one, sizeof(one));
      (void)r;  // EAGAIN: the counter is already non-zero, the lane will wake
      return true;
    }
  };

  /// The backend's registration of a local region, released on destruction.
  class RegionKey {
   public:
    RegionKey() = default;
    RegionKey(transport::TransportBackend* b, void* key) : b_(b), key_(key) {}
    RegionKey(RegionKey&& o) noexcept : b_(o.b_), key_(std::exchange(o.key_, nullptr)) {}
    RegionKey& operator=(RegionKey&& o) noexcept {
      if (this != &o) {
        Reset();
        b_ = o.b_;
        key_ = std::exchange(o.key_, nullptr);
      }
      return *this;
    }
    ~RegionKey() { Reset(); }
    void* get() const { return key_; }

   private:
    void Reset() {
      if (key_ != nullptr) b_->ReleaseRegion(key_);
      key_ = nullptr;
    }
    transport::TransportBackend* b_ = nullptr;
    void* key_ = nullptr;
  };

  /// A region of this agent: its bytes, the backend's key and remote key, and how many
  /// prepared transfers pin it (Deregister refuses while pins > 0). Guarded by regions_mu.
  struct LocalRegion {
    RegionId id = 0;
    std::byte* base = nullptr;
    std::size_t length = 0;
    bool arena = false;
    bool huge = false;                // private huge-page arena (ArenaMemory::kPrivateHugePages)
    transport::PrivateMapping owned;  // its memory; declared before key: unmapped after the backend released it
    RegionKey key;
    std::vector<std::byte> remote_key;
    std::uint32_t pins = 0;
  };

  /// Files `b` (registered by the backend) as a new region: its id. `owned` is the
  /// region's memory when this agent allocated it (private arenas). Takes regions_mu.
  RegionId AddRegion(transport::BackendRegion b, bool arena, transport::PrivateMapping owned);

  // ---- members ------------------------------------------------------------
  AgentOptions options;
  transport::ProcessIdentity self;
  std::unique_ptr<transport::TransportBackend> backend;  // outlives lanes' jobs and regions (Shutdown)
  std::vector<std::unique_ptr<Lane>> lanes;

  mutable std::mutex regions_mu;
  std::map<RegionId, LocalRegion> regions;
  RegionId next_region = 1;

  // API thread only.
  std::unordered_map<std::string, std::shared_ptr<PeerState>> peers;
  std::uint64_t next_peer_serial = 1;
  std::unordered_map<std::uint64_t, std::shared_ptr<TransferCore>> transfers;
  std::vector<std::shared_ptr<TransferCore>> released_busy;  // kept until shutdown
  std::uint64_t next_transfer = 1;

  // Guarded by mu.
  std::mutex mu;
  std::condition_variable cv;
  // Incremented before every cv notification (NotifyWaiters): Wait spins on it without mu
  // (AgentOptions::idle_spin_s) and takes mu to look only when it changed.
  std::atomic<std::uint64_t> cv_signals{0};
  /// Tells cv's waiters and Wait's spin that state they watch changed. Call with or without mu.
  void NotifyWaiters() {
    cv_signals.fetch_add(1, std::memory_order_release);
    cv.notify_all();
  }
  std::unordered_map<std::uint64_t, std::shared_ptr<PeerState>> peers_by_serial;
  std::unordered_set<TransferCore*> active;
  std::deque<Notification> notifications;
  std::deque<Status> unreported_failures;
  bool shutting_down = false;

  Clock::time_point next_liveness_check{};  // lane 0 thread only

  /// AgentStats, updated with relaxed atomics by the lanes and the API thread (ns, bytes, counts).
  struct Counters {
    std::atomic<std::uint64_t> posts{0};
    std::atomic<std::uint64_t> lane_jobs{0};
    std::atomic<std::uint64_t> direct_copy_blocks{0};
    std::atomic<std::uint64_t> kernel_copy_blocks{0};
    std::atomic<std::uint64_t> kernel_copy_bytes{0};
    std::atomic<std::uint64_t> kernel_copy_ns{0};
    std::atomic<std::uint64_t> kernel_copy_cpu_ns{0};
    std::atomic<std::uint64_t> direct_copy_bytes{0};
    std::atomic<std::uint64_t> ucx_requests{0};
    std::atomic<std::uint64_t> ucx_bytes{0};
    std::atomic<std::uint64_t> prefaulted_pages{0};
    std::atomic<std::uint64_t> prefault_ns{0};
    std::atomic<std::uint64_t> direct_copy_ns{0};
    std::atomic<std::uint64_t> direct_copy_cpu_ns{0};
  } counters;
  transport::AgentMetrics metrics;  // AgentOptions::metrics families (no-op without)

  ~Impl() { Shutdown(); }

  /// Wakes every lane thread (their wake eventfd). Any thread, no lock needed.
  void WakeAll() {
    for (auto& l : lanes) l->Wake();
  }

  // ---- job completions (lane_jobs.cc) --------------------------------------
  // Completion::done of a job's backend requests; run inside TransportBackend
  // calls of the job's lane (Progress, PostOp, Flush, Send) with its mu held.

  /// Ends one op's flow-control accounting (job and link) once its last
  /// request (row) completed, and returns its cookie to the job's free list.
  static void ReleaseOp(Job* j, OpCookie* c);
  /// One request (row) of an op completed; fails the job on error.
  static void OnOpDone(Completion* c, const Status* error);
  /// A request of the job's flush (or fence) completed; fails the job on error.
  static void OnFlushRequestDone(Completion* c, const Status* error);
  /// Everything the job issued is visible at the target (flush done, fence acknowledged).
  static void OnFlushVisible(Completion* c, const Status* error);
  /// The job's notification was sent; fails the job on error.
  static void OnNotifySent(Completion* c, const Status* error);

  // ---- backend events (backend_events.cc; BackendEvents) --------------------

  /// A notification arrived: decoded and queued (EnqueueNotification).
  void OnMessage(std::uint32_t lane, const std::byte* data, std::size_t length) override;
  /// The bytes of one of this agent's regions at `place`, or null outside every region (regions_mu).
  std::byte* Locate(const transport::RemotePlace& place, std::size_t length) override;
  /// Marks the peer with serial `peer_token` failed with `why` (unknown serial: nothing).
  void OnPeerFailed(std::uint64_t peer_token, const std::string& why) override;
  /// Decodes a received notification and queues it for WaitNotification (takes mu);
  /// a malformed one is dropped with a warning. Any lane thread.
  void EnqueueNotification(const std::byte* data, std::size_t length);

  // ---- peer failure (peer_failure.cc) ---------------------------------------

  /// Marks `peer` failed (once; not while shutting down): its running transfers fail
  /// with kPeerDisconnected naming `why`, WaitNotification reports it once, its
  /// MappedRegions are revoked and the lanes woken to force-close its endpoints.
  /// Any thread without Impl::mu held.
  void MarkPeerFailed(PeerState& peer, const std::string& why);
  /// Fails every running transfer of the peer with `serial` with `why`. Impl::mu held.
  void FailTransfersOfLocked(std::uint64_t serial, const Status& why);
  /// Lane 0's thread, every kLivenessPeriod at most: marks failed the same-host
  /// peers whose process is gone (ProcessGone, /proc), after delivering what lane 0
  /// and every lane whose mutex is free already received (TransportBackend::DrainMessages).
  /// Lane 0's mutex held.
  void CheckLiveness();
  /// Moves the lane's jobs of `peer` out of its active list, failed with `why`: into
  /// `abandoned` when the backend may never complete their requests (the link was
  /// force-closed), else finished. Lane::mu held.
  void DetachJobsOf(Lane& lane, PeerState* peer, const Status& why);
  /// Force-closes `peer`'s link on `lane` (after revoking its MappedRegions on
  /// lane 0), lets cancellations run for up to 50 ms, detaches its jobs and
  /// releases its remote keys there. Lane::mu held.
  void CloseForced(Lane& lane, PeerState& peer, const Status& why);
  /// Force-closes the lane's endpoints of every failed peer. Lane::mu held. (What the
  /// peer sent stays deliverable: its connections to this agent's channels are the
  /// channels', not the links'.)
  void ReapFailedPeers(Lane& lane);
  /// Closes a peer's links and releases its remote keys on every lane. With
  /// nothing outstanding the keys go first and each link is closed with a flush
  /// (UCX: ucp_rkey_destroy "after all outstanding operations ... are flushed,
  /// and before the endpoint ... is destroyed"), bounded by connect_timeout_s.
  /// Otherwise (`force`, failure) links are force-closed: the backend completes
  /// queued requests with errors; requests already waiting for a dead peer may
  /// never complete, so their jobs are abandoned (kept until the backend stops)
  /// and an abandoned READ keeps its local regions pinned. Running transfers fail
  /// with `why`. API thread; takes each Lane::mu in turn, then mu.
  void TeardownPeer(const std::shared_ptr<PeerState>& peer, bool force, const Status& why);

  // ---- the per-lane job state machine (lane_jobs.cc; Lane::mu held) ---------

  /// Counts this lane's part of the post as finished (successfully or not);
  /// the last lane of a successful post sends the notification or marks the
  /// transfer done. Returns true when this job must now send the notification.
  bool ReportLane(Job& j);
  /// The notification of a post ended (sent, or failed): settles the transfer.
  void SettleNotification(Job& j);
  /// The job returned its last backend request: declares the post done when every
  /// lane and the notification are, and drops finished transfers from `active`.
  void FinishJob(Job& j);
  /// Issues as many of the job's operations as the flow-control limits allow
  /// (at most kIssueBatch): kernel copies and direct copies into mapped regions
  /// run here, the rest go to the backend (PostOp, one call per op). Returns how
  /// many were handed on.
  std::size_t IssueOps(Lane& lane, Job& j);
  /// Starts the job's flush (TransportBackend::Flush; a fence for WRITEs as messages).
  void StartFlush(Lane& lane, Job& j);
  /// Sends the post's notification on the job's endpoint.
  void SendNotification(Job& j);
  /// Advances every job of the lane through Phase. Returns whether anything happened.
  bool AdvanceJobs(Lane& lane);

  // ---- the lane loop (lane_loop.cc) -----------------------------------------

  /// The lane's progress thread: progress, advance jobs, then sleep on the
  /// backend's event fd and the wake eventfd (TransportBackend::Arm protocol). Sleeps
  /// kIdleSleep at most when idle; backs off (kMinBackoff..kMaxBackoff) only
  /// while nothing progresses and either Arm reports kBusy or
  /// the event fd fires kHotWakeups times in a row without events. Returns once
  /// Lane::stop is set. Takes Lane::mu, released only while sleeping.
  void RunLane(Lane& lane);

  // ---- pre-faulting a peer's mapped pages (prepare_transfer.cc; API thread) --

  /// Bytes pre-faulted per hold of a lane's mutex: bounds how long a lane thread
  /// waits (about 30-80 ms under a shadow-paging hypervisor, 4,096 pages).
  static constexpr std::uintptr_t kPrefaultChunk = std::uintptr_t{16} << 20;

  /// Pre-faults, through lane `l`'s mapping of the peer's regions, the pages
  /// lane l's ops of `t` write. The mapping lives as long as the lane's remote key,
  /// which is released (with mapped_delta cleared) only under the lane's mutex:
  /// each chunk is touched with that mutex held after checking the mapping is
  /// still there (a peer that fails meanwhile is simply not pre-faulted further).
  /// Returns the pages touched.
  std::uint64_t PrefaultLane(PeerState& peer, const TransferCore& t, std::uint32_t l);
  /// Pre-faults every lane's pages of `t`, the lanes in parallel (lane 0 on
  /// this thread): under a shadow-paging hypervisor this costs 7-20 us per page.
  void PrefaultRemotePages(PeerState& peer, const TransferCore& t);
  /// READs copy from this process's mapping of the peer's shared-memory regions:
  /// populates the ranges each lane will read (one madvise per merged range)
  /// instead of taking a read fault per 4 KiB page during the copy. Errors of
  /// madvise are ignored (the copy then faults as before).
  void PrefaultRemoteReadRanges(PeerState& peer, const TransferCore& t);

  // ---- API-thread helpers ---------------------------------------------------

  /// The prepared transfer `h`. Errors: kNotFound (unknown or released handle). API thread. (agent.cc)
  Result<std::shared_ptr<TransferCore>> FindTransfer(TransferHandle h);
  /// Stops the lane threads, force-closes every link and releases every backend
  /// resource in order (requests drained for at most 100 ms per lane). Idempotent.
  /// (agent_lifecycle.cc)
  void Shutdown();
};

}  // namespace shardwire
