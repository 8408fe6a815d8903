// Agent implementation over UCP (UCX 1.13.1). See include/shardwire/agent.h for
// the contract and docs/transport.md for the design and measurements.
//
// Threads and locks
//   * The API thread (one caller at a time) owns `peers`, `transfers` and the
//     option values.
//   * Each Lane owns one ucp_worker (UCS_THREAD_MODE_SERIALIZED) and runs one
//     progress thread. Everything that touches a lane's worker, its endpoints,
//     rkeys and jobs happens with Lane::mu held: by the lane thread, or by the
//     API thread for endpoint creation/close, rkey unpack and SendMessage.
//     The lane thread releases mu only while it sleeps in ppoll on the worker's
//     event fd (armed with ucp_worker_arm) and its wake eventfd.
//   * Impl::mu (leaf lock, never held while taking a Lane::mu) guards transfer
//     execution state, the notification queue, peer failure records and
//     peers_by_serial; Impl::cv is signalled on every change waiters care about.
//   * Impl::regions_mu guards the local region table (read by lane threads when
//     they receive active-message writes).
//   Lock order: Lane::mu -> Impl::mu; Lane::mu -> regions_mu. UCX callbacks run
//   with the lane's mu held (inside ucp_worker_progress).
//
// A post becomes one Job per lane that has slices. A lane issues its job's
// operations within the per-peer flow-control limits, then completes it with
// ucp_ep_flush_nbx (put/get) or a fence message that the target acknowledges
// once everything before it is in place (active-message writes). The last lane
// to finish sends the notification, then marks the transfer done.
#include "shardwire/agent.h"

#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <list>
#include <map>
#include <mutex>
#include <set>
#include <shared_mutex>
#include <system_error>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "shardwire/metadata_blob.h"
#include "transport/agent_metrics.h"
#include "transport/kernel_copy.h"
#include "transport/prefault.h"
#include "transport/private_arena.h"
#include "transport/strided_rows.h"
#include "transport/ucx_raii.h"


namespace shardwire {

using transport::CopyRows;
using transport::Endpoint;
using transport::FileDescriptor;
using transport::MemHandle;
using transport::Rkey;
using transport::RkeyBuffer;
using transport::UcpConfig;
using transport::UcpContext;
using transport::UcpWorker;
using transport::UcsError;
using transport::WorkerAddress;

namespace {
// WRITEs may be kernel copies under this write path (WritePath::kAuto: into unmapped regions).
bool WritesMayKernelCopy(WritePath p) { return p == WritePath::kAuto || p == WritePath::kKernelCopy; }
}  // namespace

std::string_view WritePathName(WritePath p) {
  switch (p) {
    case WritePath::kAuto: return "auto";
    case WritePath::kPut: return "put";
    case WritePath::kActiveMessage: return "active-message";
    case WritePath::kKernelCopy: return "kernel-copy";
  }
  return "unknown";
}

namespace {

// Active-message ids.
//   kNotifyAmId:   data = u8 format (1), u16 LE sender-name length, name, payload.
//   kWriteAmId:    header = AmWriteHeader; data = the bytes to place.
//   kFenceAmId:    header = u64 token (sent with UCP_AM_SEND_FLAG_REPLY).
//   kFenceAckAmId: header = u64 token.
constexpr unsigned kNotifyAmId = 17;
constexpr unsigned kWriteAmId = 18;
constexpr unsigned kFenceAmId = 19;
constexpr unsigned kFenceAckAmId = 20;
constexpr std::uint8_t kNotifyFormat = 1;
constexpr std::size_t kNotifyPrefix = 3;
// Upper bound on consecutive ucp_worker_progress calls per loop round.
constexpr int kMaxProgressSpins = 64;
// Operations one job may issue before the lane turns to the next job.
constexpr std::size_t kIssueBatch = 64;
// Upper bound on the progress/advance rounds Post runs inline for a small
// single-lane transfer (each round issues at most kIssueBatch operations).
constexpr int kInlineRounds = 64;
// Longest sleep of an idle lane: bounds liveness checks and UCX keepalive.
constexpr std::chrono::milliseconds kIdleSleep{100};
// Backoff while ucp_worker_arm reports UCS_ERR_BUSY without progress (UCX has
// sends queued on a transport that cannot signal free space, e.g. a shared-
// memory FIFO the peer does not drain).
constexpr std::chrono::microseconds kMinBackoff{20};
constexpr std::chrono::microseconds kMaxBackoff{4000};
// Event-fd wake-ups in a row without any progress before the lane stops
// trusting the event fd and backs off instead.
constexpr int kHotWakeups = 8;
// How often same-host peers' processes are checked (see CheckLiveness).
constexpr std::chrono::milliseconds kLivenessPeriod{100};

using Clock = std::chrono::steady_clock;

Clock::time_point DeadlineAfter(double seconds) {
  const double s = std::clamp(seconds, 0.0, 1e9);
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s));
}

Status CheckTimeout(double timeout_s, std::string_view what) {
  if (std::isnan(timeout_s)) return InvalidArgument(fmt::format("{}: timeout is NaN", what));
  return Status::Ok();
}

std::vector<std::byte> EncodeNotification(const std::string& sender, std::span<const std::byte> payload) {
  std::vector<std::byte> wire(kNotifyPrefix + sender.size() + payload.size());
  wire[0] = static_cast<std::byte>(kNotifyFormat);
  wire[1] = static_cast<std::byte>(sender.size() & 0xFF);
  wire[2] = static_cast<std::byte>((sender.size() >> 8) & 0xFF);
  std::memcpy(wire.data() + kNotifyPrefix, sender.data(), sender.size());
  if (!payload.empty()) std::memcpy(wire.data() + kNotifyPrefix + sender.size(), payload.data(), payload.size());
  return wire;
}

std::optional<Notification> DecodeNotification(const std::byte* data, std::size_t length) {
  if (length < kNotifyPrefix || data[0] != static_cast<std::byte>(kNotifyFormat)) return std::nullopt;
  const std::size_t name_len = static_cast<std::size_t>(data[1]) | (static_cast<std::size_t>(data[2]) << 8);
  if (name_len > length - kNotifyPrefix) return std::nullopt;
  Notification n;
  n.peer.assign(reinterpret_cast<const char*>(data + kNotifyPrefix), name_len);
  n.payload.assign(data + kNotifyPrefix + name_len, data + length);
  return n;
}

struct ProcStat {
  char state = '?';
  std::uint64_t start_time = 0;
};

// Reads state (field 3) and starttime (field 22) of /proc/<pid>/stat.
std::optional<ProcStat> ReadProcStat(std::uint32_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!f || !std::getline(f, line)) return std::nullopt;
  const auto close = line.rfind(')');  // comm may contain spaces and ')'
  if (close == std::string::npos || close + 2 >= line.size()) return std::nullopt;
  ProcStat st;
  st.state = line[close + 2];
  std::size_t pos = close + 2;
  for (int field = 3; field < 22; ++field) {
    pos = line.find(' ', pos);
    if (pos == std::string::npos) return st;
    ++pos;
  }
  st.start_time = std::strtoull(line.c_str() + pos, nullptr, 10);
  return st;
}

ProcessIdentity SelfIdentity() {
  ProcessIdentity id;
  id.pid = static_cast<std::uint32_t>(::getpid());
  if (auto st = ReadProcStat(id.pid)) id.start_time = st->start_time;
  std::ifstream boot("/proc/sys/kernel/random/boot_id");
  std::string boot_id;
  char ns[128] = {};
  const ssize_t n = ::readlink("/proc/self/ns/pid", ns, sizeof(ns) - 1);
  if (boot && std::getline(boot, boot_id) && !boot_id.empty() && n > 0) {
    id.host = boot_id + "/" + std::string(ns, static_cast<std::size_t>(n));
  }
  return id;
}

// Empty when the process looks alive; otherwise why it does not.
std::string ProcessGone(const ProcessIdentity& p) {
  auto st = ReadProcStat(p.pid);
  if (!st) return fmt::format("process {} no longer exists", p.pid);
  if (st->state == 'Z' || st->state == 'X') return fmt::format("process {} exited", p.pid);
  if (p.start_time != 0 && st->start_time != p.start_time)
    return fmt::format("process {} exited (pid reused by another process)", p.pid);
  return {};
}

// The transports of an endpoint's lanes ("tcp/lo", "sysv/memory"), parsed from
// ucp_ep_print_info (UCX 1.13.1 has no ucp_ep_query field for them). Lines look
// like "#   lane[0]:  3:sysv/memory.0 md[2] -> ...".
std::vector<std::string> EndpointTransports(ucp_ep_h ep) {
  char* text = nullptr;
  std::size_t size = 0;
  FILE* f = ::open_memstream(&text, &size);
  if (f == nullptr) return {};
  ucp_ep_print_info(ep, f);
  std::fclose(f);
  std::string all(text != nullptr ? text : "", size);
  std::free(text);
  std::vector<std::string> out;
  std::size_t pos = 0;
  while ((pos = all.find("lane[", pos)) != std::string::npos) {
    const std::size_t colon = all.find(':', pos);
    if (colon == std::string::npos) break;
    std::size_t p = all.find_first_not_of(' ', colon + 1);
    if (p == std::string::npos) break;
    const std::size_t idx_end = all.find(':', p);
    const std::size_t line_end = all.find('\n', p);
    if (idx_end == std::string::npos || idx_end > line_end) {
      pos = colon;
      continue;
    }
    const std::size_t tl_end = all.find_first_of(" \n", idx_end + 1);
    std::string tl = all.substr(idx_end + 1, tl_end - idx_end - 1);
    if (auto dot = tl.rfind('.'); dot != std::string::npos) tl.resize(dot);  // "tcp/lo.0" -> "tcp/lo"
    out.push_back(tl);
    pos = line_end == std::string::npos ? all.size() : line_end;
  }
  return out;
}

bool OnlyTcp(const std::vector<std::string>& transports) {
  if (transports.empty()) return false;
  return std::all_of(transports.begin(), transports.end(), [](const std::string& t) { return t.rfind("tcp/", 0) == 0; });
}

// Nanoseconds of `clock` (CLOCK_MONOTONIC, CLOCK_THREAD_CPUTIME_ID).
std::uint64_t ClockNs(clockid_t clock) {
  timespec ts{};
  ::clock_gettime(clock, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1000000000u + static_cast<std::uint64_t>(ts.tv_nsec);
}

}  // namespace

// ---- shared types -------------------------------------------------------------

namespace {

struct AmWriteHeader {
  std::uint32_t region = 0;
  std::uint32_t reserved = 0;
  std::uint64_t offset = 0;
};
static_assert(sizeof(AmWriteHeader) == 16);

// One unit of work of a lane: `count` rows of `length` bytes (a block of a
// strided descriptor, or one slice when count is 1), one flow-control credit.
struct PreparedOp {
  std::byte* local = nullptr;
  std::uint64_t length = 0;  // bytes per row
  std::uint64_t remote_addr = 0;
  std::uint64_t count = 1;          // rows
  std::uint64_t local_stride = 0;   // bytes between rows (count > 1)
  std::uint64_t remote_stride = 0;  // bytes between rows (count > 1)
  ucp_mem_h memh = nullptr;
  std::uint32_t rkey_index = 0;  // index into PeerState::regions / LaneEp::rkeys
  AmWriteHeader am;              // header of an active-message write (stable storage)
  bool kernel_copy = false;      // executed by process_vm_readv (READ, ReadPath) / process_vm_writev (WRITE, WritePath)

  std::uint64_t bytes() const { return count * length; }
};

struct RemoteRegion {
  RegionId id = 0;
  std::uint64_t base = 0;
  std::uint64_t length = 0;
};

// One peer's endpoint and rkeys on one lane. Guarded by that lane's mu.
struct LaneEp {
  Endpoint ep;
  std::vector<Rkey> rkeys;  // by region index; destroyed before ep closes
  // By region index: this process's address of the region's byte 0 minus the
  // region's remote base (ucp_rkey_ptr), or nullopt when UCX cannot map it
  // (not shared memory). Mapped regions are copied into directly (2-D memcpy).
  std::vector<std::optional<std::intptr_t>> mapped_delta;
  std::uint32_t ops_in_flight = 0;
  std::uint64_t bytes_in_flight = 0;
};

enum class State { kIdle, kRunning, kDone, kFailed, kCancelled };

}  // namespace

// A MappedRegion's state: lane 0's mapping of one peer region, shared by every MappedRegion and
// Access of it. Revoked (exclusive lock, so only after every Access ended) before the rkey that
// owns the mapping is destroyed, and when the peer fails.
struct MappedRegion::Lease {
  std::string peer;
  RegionId region = 0;
  std::byte* base = nullptr;
  std::uint64_t length = 0;
  std::shared_mutex mu;
  bool revoked = false;  // guarded by mu
  Status why;            // guarded by mu
};

namespace {

struct TransferCore {
  std::uint64_t id = 0;
  TransferOp op = TransferOp::kWrite;
  std::string peer_name;
  std::uint64_t peer_serial = 0;
  bool am_write = false;
  std::uint64_t total_bytes = 0;
  std::vector<std::vector<PreparedOp>> lane_ops;  // immutable after prepare
  std::vector<RegionId> pinned;                   // one entry per pin taken
  std::optional<std::vector<std::byte>> prepared_wire;  // encoded once
  bool all_lanes = false;  // post a job on every lane even without ops (WireUp: a flush per lane)
  // Guarded by Impl::mu.
  State state = State::kIdle;
  Status error;
  std::uint64_t seq = 0;           // post counter
  std::uint32_t lanes_pending = 0;  // lanes of the current post not yet complete
  std::uint32_t jobs_alive = 0;     // jobs (any post) still holding UCX requests
  bool abandoned_requests = false;  // a job was abandoned with requests outstanding
  bool cancel = false;
  bool has_wire = false;
  bool notified = false;             // this post's notification was sent
  std::vector<std::byte> post_wire;  // this post's encoded notification
  transport::TransferMetrics metrics;  // AgentOptions::metrics series (no-op without)
};

}  // namespace

struct Agent::Impl {
  struct Lane;
  struct Job;

  struct OpCookie {
    Job* job = nullptr;
    std::uint64_t bytes = 0;
    std::uint64_t requests = 0;  // UCX requests of this op (one per row) not yet completed
  };

  struct PeerState {
    std::string name;
    std::uint64_t serial = 0;
    ProcessIdentity process;
    bool same_host = false;
    bool liveness_checked = false;
    bool ucx_error_handling = false;
    WritePath write_path = WritePath::kPut;
    std::uint32_t remote_lanes = 0;
    std::vector<std::string> transports;
    transport::PeerProcess kernel_copy;  // valid: READs / WRITEs may be kernel copies (ReadPath, WritePath)
    // By region index: lane 0 could map the region (ucp_rkey_ptr), i.e. a WRITE to it is a
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

  // Revokes every MappedRegion of `peer`: waits for Accesses still held (their writes finish
  // into a live mapping), then later Acquires report `why`. Must run before lane 0's rkeys of the
  // peer are destroyed. Any thread; takes no lane mutex.
  static void RevokeLeases(PeerState& peer, const Status& why) {
    std::lock_guard<std::mutex> g(peer.leases_mu);
    for (auto& lease : peer.leases) {
      if (!lease) continue;
      std::unique_lock<std::shared_mutex> w(lease->mu);
      if (lease->revoked) continue;
      lease->revoked = true;
      lease->why = why;
    }
  }

  // The error-callback argument of one endpoint; owned by the Impl until the
  // workers are gone, so a late callback never reads freed memory.
  struct EpContext {
    Impl* impl = nullptr;
    std::uint64_t peer_serial = 0;
  };

  enum class Phase { kIssue, kFlushing, kFencing, kNotifying, kFinished };

  // One lane's part of one post. Owned by the lane; touched under Lane::mu.
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
    std::uint32_t outstanding = 0;  // UCX requests referring to this job
    Phase phase = Phase::kIssue;
    bool flush_done = false;
    bool fence_acked = false;
    std::uint64_t fence_token = 0;
    bool notify_done = false;
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

  struct PendingSend {
    std::vector<std::byte> wire;
    std::uint64_t header = 0;
    bool done = false;
  };

  struct RndvRecv {
    std::vector<std::byte> buffer;
    bool done = false;
    ucs_status_t status = UCS_OK;
  };

  struct PendingAck {
    ucp_ep_h reply_ep = nullptr;
    std::uint64_t token = 0;
  };

  struct Lane {
    Impl* impl = nullptr;
    std::uint32_t index = 0;
    UcpWorker worker;
    int efd = -1;
    FileDescriptor wake;
    WorkerAddress address;
    std::mutex mu;
    std::thread thread;
    bool stop = false;  // guarded by mu
    std::list<std::unique_ptr<Job>> jobs;
    std::vector<std::unique_ptr<Job>> abandoned;
    std::vector<std::shared_ptr<PeerState>> peers;
    std::unordered_map<std::uint64_t, Job*> fences;
    std::uint64_t next_token = 1;
    std::list<PendingSend> sends;
    std::list<RndvRecv> rndv_recvs;
    std::uint32_t am_receiving = 0;  // active-message writes being received
    std::deque<PendingAck> acks;
    std::uint32_t ops_limit = 1;
    std::uint64_t bytes_limit = 1;

    void Wake() const {
      const std::uint64_t one = 1;
      ssize_t r = ::write(wake.get(), &one, sizeof(one));
      (void)r;  // EAGAIN: the counter is already non-zero, the lane will wake
    }
  };

  struct LocalRegion {
    RegionId id = 0;
    std::byte* base = nullptr;
    std::size_t length = 0;
    bool arena = false;
    bool huge = false;                // private huge-page arena (ArenaMemory::kPrivateHugePages)
    transport::PrivateMapping owned;  // its memory; declared before memh: unmapped after ucp_mem_unmap
    MemHandle memh;
    std::vector<std::byte> packed_rkey;
    std::uint32_t pins = 0;
  };

  // ---- members ------------------------------------------------------------
  AgentOptions options;
  ProcessIdentity self;
  UcpContext context;
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
  std::deque<std::unique_ptr<EpContext>> ep_contexts;

  // Guarded by mu.
  std::mutex mu;
  std::condition_variable cv;
  std::unordered_map<std::uint64_t, std::shared_ptr<PeerState>> peers_by_serial;
  std::unordered_set<TransferCore*> active;
  std::deque<Notification> notifications;
  std::deque<Status> unreported_failures;
  bool shutting_down = false;

  Clock::time_point next_liveness_check{};  // lane 0 thread only

  // AgentStats, updated with relaxed atomics by the lanes and the API thread.
  struct Counters {
    std::atomic<std::uint64_t> posts{0};
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

  void WakeAll() {
    for (auto& l : lanes) l->Wake();
  }

  // ---- UCX callbacks (run inside ucp_worker_progress, Lane::mu held) -----
  // One op's accounting ends when its last request (row) completed.
  static void ReleaseOp(Job* j, OpCookie* c) {
    --j->ops_in_flight;
    j->bytes_in_flight -= c->bytes;
    if (j->lep != nullptr) {
      --j->lep->ops_in_flight;
      j->lep->bytes_in_flight -= c->bytes;
    }
    j->free_cookies.push_back(static_cast<std::uint32_t>(c - j->cookies.data()));
  }
  static void OnOpDone(void* request, ucs_status_t status, void* user_data) {
    auto* c = static_cast<OpCookie*>(user_data);
    Job* j = c->job;
    --j->outstanding;
    if (--c->requests == 0) ReleaseOp(j, c);
    if (status != UCS_OK) {
      const char* what = j->t->op == TransferOp::kRead ? "ucp_get_nbx" : (j->t->am_write ? "ucp_am_send_nbx(write)" : "ucp_put_nbx");
      j->Fail(UcsError(what, status));
    }
    ucp_request_free(request);
  }
  static void OnFlushDone(void* request, ucs_status_t status, void* user_data) {
    auto* j = static_cast<Job*>(user_data);
    --j->outstanding;
    j->flush_done = true;
    if (status != UCS_OK) j->Fail(UcsError("ucp_ep_flush_nbx", status));
    ucp_request_free(request);
  }
  static void OnFenceSent(void* request, ucs_status_t status, void* user_data) {
    auto* j = static_cast<Job*>(user_data);
    --j->outstanding;
    if (status != UCS_OK) j->Fail(UcsError("ucp_am_send_nbx(fence)", status));
    ucp_request_free(request);
  }
  static void OnNotifySent(void* request, ucs_status_t status, void* user_data) {
    auto* j = static_cast<Job*>(user_data);
    --j->outstanding;
    j->notify_done = true;
    if (status != UCS_OK) j->Fail(UcsError("ucp_am_send_nbx(notification)", status));
    ucp_request_free(request);
  }
  static void OnMessageSent(void* request, ucs_status_t status, void* user_data) {
    auto* s = static_cast<PendingSend*>(user_data);
    s->done = true;
    if (status != UCS_OK) spdlog::debug("shardwire agent: message send failed: {}", ucs_status_string(status));
    ucp_request_free(request);
  }
  static void OnRndvRecvDone(void* request, ucs_status_t status, std::size_t /*length*/, void* user_data) {
    auto* r = static_cast<RndvRecv*>(user_data);
    r->done = true;
    r->status = status;
    ucp_request_free(request);
  }
  static void OnAmWriteReceived(void* request, ucs_status_t status, std::size_t /*length*/, void* user_data) {
    auto* lane = static_cast<Lane*>(user_data);
    --lane->am_receiving;
    if (status != UCS_OK)
      spdlog::warn("shardwire agent: receiving an active-message write failed: {}", ucs_status_string(status));
    ucp_request_free(request);
  }
  static void OnEpError(void* arg, ucp_ep_h /*ep*/, ucs_status_t status) {
    auto* c = static_cast<EpContext*>(arg);
    c->impl->MarkPeerFailed(c->peer_serial, status);
  }

  static ucs_status_t OnNotification(void* arg, const void* /*header*/, std::size_t /*header_length*/, void* data,
                                     std::size_t length, const ucp_am_recv_param_t* param) {
    auto* lane = static_cast<Lane*>(arg);
    if ((param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0) {
      RndvRecv& r = lane->rndv_recvs.emplace_back();
      r.buffer.resize(length);
      ucp_request_param_t p{};
      p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
      p.cb.recv_am = &Impl::OnRndvRecvDone;
      p.user_data = &r;
      ucs_status_ptr_t req = ucp_am_recv_data_nbx(lane->worker.get(), data, r.buffer.data(), length, &p);
      if (req == nullptr) {
        r.done = true;
      } else if (UCS_PTR_IS_ERR(req)) {
        r.done = true;
        r.status = UCS_PTR_STATUS(req);
      }
      return UCS_INPROGRESS;
    }
    lane->impl->EnqueueNotification(static_cast<const std::byte*>(data), length);
    return UCS_OK;
  }

  // Target side of an active-message write: check the destination against the
  // registered regions, then place the bytes (rendezvous: received straight
  // into the region; eager: one memcpy).
  static ucs_status_t OnAmWrite(void* arg, const void* header, std::size_t header_length, void* data,
                                std::size_t length, const ucp_am_recv_param_t* param) {
    auto* lane = static_cast<Lane*>(arg);
    Impl& im = *lane->impl;
    const bool rndv = (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0;
    std::byte* dest = nullptr;
    if (header_length == sizeof(AmWriteHeader)) {
      AmWriteHeader h;
      std::memcpy(&h, header, sizeof(h));
      std::lock_guard<std::mutex> g(im.regions_mu);
      auto it = im.regions.find(h.region);
      if (it != im.regions.end() && h.offset <= it->second.length && length <= it->second.length - h.offset)
        dest = it->second.base + h.offset;
    }
    if (dest == nullptr) {
      spdlog::warn("shardwire agent {}: rejected an active-message write of {} bytes outside every region",
                   im.options.name, length);
      return rndv ? UCS_ERR_INVALID_PARAM : UCS_OK;
    }
    if (!rndv) {
      if (length > 0) std::memcpy(dest, data, length);
      return UCS_OK;
    }
    ucp_request_param_t p{};
    p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
    p.cb.recv_am = &Impl::OnAmWriteReceived;
    p.user_data = lane;
    ucs_status_ptr_t req = ucp_am_recv_data_nbx(lane->worker.get(), data, dest, length, &p);
    if (UCS_PTR_IS_ERR(req)) {
      spdlog::warn("shardwire agent {}: ucp_am_recv_data_nbx failed: {}", im.options.name,
                   ucs_status_string(UCS_PTR_STATUS(req)));
    } else if (req != nullptr) {
      ++lane->am_receiving;
    }
    return UCS_INPROGRESS;
  }

  static ucs_status_t OnFence(void* arg, const void* header, std::size_t header_length, void* /*data*/,
                              std::size_t /*length*/, const ucp_am_recv_param_t* param) {
    auto* lane = static_cast<Lane*>(arg);
    if (header_length != sizeof(std::uint64_t) || (param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) == 0)
      return UCS_OK;
    PendingAck a;
    std::memcpy(&a.token, header, sizeof(a.token));
    a.reply_ep = param->reply_ep;
    lane->acks.push_back(a);
    return UCS_OK;
  }

  static ucs_status_t OnFenceAck(void* arg, const void* header, std::size_t header_length, void* /*data*/,
                                 std::size_t /*length*/, const ucp_am_recv_param_t* /*param*/) {
    auto* lane = static_cast<Lane*>(arg);
    if (header_length != sizeof(std::uint64_t)) return UCS_OK;
    std::uint64_t token = 0;
    std::memcpy(&token, header, sizeof(token));
    auto it = lane->fences.find(token);
    if (it != lane->fences.end()) {
      it->second->fence_acked = true;
      lane->fences.erase(it);
    }
    return UCS_OK;
  }

  void EnqueueNotification(const std::byte* data, std::size_t length) {
    auto n = DecodeNotification(data, length);
    if (!n) {
      spdlog::warn("shardwire agent {}: dropped a malformed notification of {} bytes", options.name, length);
      return;
    }
    std::lock_guard<std::mutex> g(mu);
    notifications.push_back(std::move(*n));
    cv.notify_all();
  }

  // ---- failures ----------------------------------------------------------
  void MarkPeerFailed(std::uint64_t serial, ucs_status_t status) {
    std::shared_ptr<PeerState> p;
    {
      std::lock_guard<std::mutex> g(mu);
      auto it = peers_by_serial.find(serial);
      if (it == peers_by_serial.end()) return;
      p = it->second;
    }
    MarkPeerFailed(*p, fmt::format("UCX endpoint error: {}", ucs_status_string(status)));
  }

  void MarkPeerFailed(PeerState& peer, const std::string& why) {
    {
      std::lock_guard<std::mutex> g(mu);
      if (shutting_down || peer.failed.load()) return;
      peer.failure = PeerDisconnected(fmt::format("peer {} disconnected: {}", peer.name, why));
      peer.failed.store(true);
      spdlog::debug("shardwire agent {}: {}", options.name, peer.failure.message());
      FailTransfersOfLocked(peer.serial, peer.failure);
      unreported_failures.push_back(peer.failure);
      cv.notify_all();
    }
    RevokeLeases(peer, peer.failure);
    WakeAll();
  }

  void FailTransfersOfLocked(std::uint64_t serial, const Status& why) {
    for (TransferCore* t : active) {
      if (t->peer_serial == serial && t->state == State::kRunning) {
        t->state = State::kFailed;
        t->error = why;
        t->metrics.Failed(why);
      }
    }
  }

  // Lane 0 thread: are same-host peers' processes still there?
  void CheckLiveness() {
    const auto now = Clock::now();
    if (now < next_liveness_check) return;
    next_liveness_check = now + kLivenessPeriod;
    std::vector<std::shared_ptr<PeerState>> check;
    {
      std::lock_guard<std::mutex> g(mu);
      for (auto& [serial, p] : peers_by_serial)
        if (p->liveness_checked && !p->failed.load()) check.push_back(p);
    }
    for (auto& p : check) {
      std::string gone = ProcessGone(p->process);
      if (!gone.empty()) MarkPeerFailed(*p, gone);
    }
  }

  // ---- lane side (Lane::mu held) ------------------------------------------
  // Moves a job out of the lane's active list into `abandoned` when UCX may
  // never complete its requests (its endpoint was force-closed).
  void DetachJobsOf(Lane& lane, PeerState* peer, const Status& why) {
    for (auto it = lane.jobs.begin(); it != lane.jobs.end();) {
      Job& j = **it;
      if (j.peer != peer) {
        ++it;
        continue;
      }
      j.Fail(why);
      j.lep = nullptr;
      if (j.phase == Phase::kNotifying) {
        SettleNotification(j);
      } else {
        ReportLane(j);
      }
      lane.fences.erase(j.fence_token);
      if (j.outstanding > 0) {
        {
          std::lock_guard<std::mutex> g(mu);
          j.t->abandoned_requests = true;
        }
        lane.abandoned.push_back(std::move(*it));
      } else {
        FinishJob(j);
      }
      it = lane.jobs.erase(it);
    }
  }

  void CloseForced(Lane& lane, PeerState& peer, const Status& why) {
    LaneEp& lep = peer.lanes[lane.index];
    if (!lep.ep) return;
    // Before lane 0's rkeys (and with them the mappings MappedRegions use) go: a lane may reap a
    // failed peer before MarkPeerFailed, on another thread, has revoked them.
    if (lane.index == 0) RevokeLeases(peer, why);
    if (!lep.ep.Close(/*force=*/true, Endpoint::kDefaultCloseTimeoutS))
      spdlog::warn("shardwire agent {}: force-closing endpoint to {} did not finish", options.name, peer.name);
    // Let cancellations (UCS_ERR_CANCELED completions) run, briefly.
    const auto deadline = Clock::now() + std::chrono::milliseconds(50);
    auto busy = [&] {
      for (auto& j : lane.jobs)
        if (j->peer == &peer && j->outstanding > 0) return true;
      return false;
    };
    while (busy() && Clock::now() < deadline) {
      if (ucp_worker_progress(lane.worker.get()) == 0) std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    DetachJobsOf(lane, &peer, why);
    lep.mapped_delta.clear();
    lep.rkeys.clear();
    lep.ops_in_flight = 0;
    lep.bytes_in_flight = 0;
  }

  void ReapFailedPeers(Lane& lane) {
    for (auto& p : lane.peers) {
      if (!p->failed.load() || !p->lanes[lane.index].ep) continue;
      Status why;
      {
        std::lock_guard<std::mutex> g(mu);
        why = p->failure;
      }
      CloseForced(lane, *p, why);
    }
  }

  // Counts this lane's part of the post as finished (successfully or not);
  // the last lane of a successful post sends the notification or marks the
  // transfer done. Returns true when this job must now send the notification.
  bool ReportLane(Job& j) {
    if (j.lane_reported) return false;
    j.lane_reported = true;
    std::lock_guard<std::mutex> g(mu);
    TransferCore& t = *j.t;
    if (t.seq != j.seq) return false;
    if (t.lanes_pending > 0) --t.lanes_pending;
    if (t.state == State::kRunning && j.failed) {
      t.state = State::kFailed;
      t.error = j.error.WithContext(fmt::format("transfer {} to {}", t.id, t.peer_name));
      t.metrics.Failed(t.error);
      cv.notify_all();
      return false;
    }
    if (t.lanes_pending > 0) return false;
    if (t.state == State::kRunning && t.cancel) {
      t.state = State::kCancelled;
      cv.notify_all();
      return false;
    }
    if (t.state != State::kRunning) {
      cv.notify_all();
      return false;
    }
    // Success is declared by FinishJob once every job has returned all its
    // UCX requests, so a caller woken by Wait can Post or Release at once.
    return t.has_wire;
  }

  // The notification of a post ended (sent, or failed): settle the transfer.
  void SettleNotification(Job& j) {
    std::lock_guard<std::mutex> g(mu);
    TransferCore& t = *j.t;
    if (t.seq == j.seq && t.state == State::kRunning) {
      if (j.failed) {
        t.state = State::kFailed;
        t.error = j.error.WithContext(fmt::format("transfer {} to {}", t.id, t.peer_name));
        t.metrics.Failed(t.error);
      } else {
        t.notified = true;
      }
    }
    cv.notify_all();
  }

  void FinishJob(Job& j) {
    std::lock_guard<std::mutex> g(mu);
    TransferCore& t = *j.t;
    if (t.jobs_alive > 0) --t.jobs_alive;
    if (t.seq == j.seq && t.state == State::kRunning && t.lanes_pending == 0 && t.jobs_alive == 0 &&
        (!t.has_wire || t.notified)) {
      t.state = State::kDone;
      t.metrics.Done(t.total_bytes);
    }
    if (t.state != State::kRunning && t.jobs_alive == 0) active.erase(&t);
    cv.notify_all();
  }

  // Issues as many of the job's operations as the flow-control limits allow
  // (at most kIssueBatch). Returns how many were handed to UCX.
  std::size_t IssueOps(Lane& lane, Job& j) {
    LaneEp& lep = *j.lep;
    const auto& ops = *j.ops;
    const TransferCore& t = *j.t;
    std::size_t issued = 0;
    bool copied = false;
    std::uint64_t copy_blocks = 0, copy_bytes = 0, requests = 0, request_bytes = 0, kernel_blocks = 0, kernel_bytes = 0;
    ucp_request_param_t p{};
    const std::uint64_t wall0 = ClockNs(CLOCK_MONOTONIC), cpu0 = ClockNs(CLOCK_THREAD_CPUTIME_ID);
    while (j.next < ops.size() && issued < kIssueBatch && !j.failed) {
      const PreparedOp& o = ops[j.next];
      const std::uint64_t bytes = o.bytes();
      if (o.kernel_copy) {
        // The kernel copies from / into the peer's pages (process_vm_readv /
        // process_vm_writev): no mapping of the peer here, no UCX request, no
        // credit (ReadPath, WritePath).
        Status st =
            t.op == TransferOp::kRead
                ? j.peer->kernel_copy.ReadRows(o.local, o.local_stride, o.remote_addr, o.remote_stride, o.count,
                                               o.length)
                : j.peer->kernel_copy.WriteRows(o.local, o.local_stride, o.remote_addr, o.remote_stride, o.count,
                                                o.length);
        if (!st.ok()) {
          j.Fail(st.WithContext(
              fmt::format("{} peer {}", t.op == TransferOp::kRead ? "READ from" : "WRITE to", t.peer_name)));
          break;
        }
        copied = true;
        ++kernel_blocks;
        kernel_bytes += bytes;
        ++j.next;
        ++issued;
        continue;
      }
      if (!t.am_write && o.rkey_index < lep.mapped_delta.size() && lep.mapped_delta[o.rkey_index]) {
        // The peer's region is mapped here (shared memory): the one-sided
        // move is a 2-D memcpy by this lane, no UCX request, no credit.
        std::byte* remote = reinterpret_cast<std::byte*>(static_cast<std::intptr_t>(o.remote_addr) +
                                                         *lep.mapped_delta[o.rkey_index]);
        if (t.op == TransferOp::kRead) {
          CopyRows(o.local, o.local_stride, remote, o.remote_stride, o.count, o.length);
        } else {
          CopyRows(remote, o.remote_stride, o.local, o.local_stride, o.count, o.length);
        }
        copied = true;
        ++copy_blocks;
        copy_bytes += bytes;
        ++j.next;
        ++issued;
        continue;
      }
      if (lep.ops_in_flight >= lane.ops_limit) break;
      if (lep.bytes_in_flight > 0 && lep.bytes_in_flight + bytes > lane.bytes_limit) break;
      if (j.free_cookies.empty()) break;
      const std::uint32_t ci = j.free_cookies.back();
      j.free_cookies.pop_back();
      OpCookie& c = j.cookies[ci];
      c.job = &j;
      c.bytes = bytes;
      c.requests = 0;
      p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
      p.cb.send = &Impl::OnOpDone;
      p.user_data = &c;
      if (!t.am_write) {
        p.op_attr_mask |= UCP_OP_ATTR_FIELD_MEMH;
        p.memh = o.memh;
      }
      // One request per row (active-message writes always have one row per op).
      for (std::uint64_t r = 0; r < o.count && !j.failed; ++r) {
        std::byte* local = o.local + r * o.local_stride;
        const std::uint64_t remote = o.remote_addr + r * o.remote_stride;
        ucs_status_ptr_t req;
        if (t.op == TransferOp::kRead) {
          req = ucp_get_nbx(lep.ep.get(), local, o.length, remote, lep.rkeys[o.rkey_index].get(), &p);
        } else if (t.am_write) {
          req = ucp_am_send_nbx(lep.ep.get(), kWriteAmId, &o.am, sizeof(o.am), local, o.length, &p);
        } else {
          req = ucp_put_nbx(lep.ep.get(), local, o.length, remote, lep.rkeys[o.rkey_index].get(), &p);
        }
        ++requests;
        request_bytes += o.length;
        if (UCS_PTR_IS_ERR(req)) {
          j.Fail(UcsError(t.op == TransferOp::kRead ? "ucp_get_nbx" : (t.am_write ? "ucp_am_send_nbx" : "ucp_put_nbx"),
                          UCS_PTR_STATUS(req)));
        } else if (req != nullptr) {
          ++c.requests;
          ++j.outstanding;
        }
      }
      ++j.next;
      ++issued;
      if (c.requests == 0) {
        j.free_cookies.push_back(ci);
      } else {
        ++j.ops_in_flight;
        j.bytes_in_flight += bytes;
        ++lep.ops_in_flight;
        lep.bytes_in_flight += bytes;
      }
    }
    // Direct copies must be visible before the flush/notification that follows.
    if (copied) std::atomic_thread_fence(std::memory_order_release);
    if (copy_blocks > 0) {
      counters.direct_copy_blocks.fetch_add(copy_blocks, std::memory_order_relaxed);
      counters.direct_copy_bytes.fetch_add(copy_bytes, std::memory_order_relaxed);
      if (requests == 0) {  // only direct copies in this batch: its time is theirs
        counters.direct_copy_ns.fetch_add(ClockNs(CLOCK_MONOTONIC) - wall0, std::memory_order_relaxed);
        counters.direct_copy_cpu_ns.fetch_add(ClockNs(CLOCK_THREAD_CPUTIME_ID) - cpu0, std::memory_order_relaxed);
      }
    }
    if (kernel_blocks > 0) {
      counters.kernel_copy_blocks.fetch_add(kernel_blocks, std::memory_order_relaxed);
      counters.kernel_copy_bytes.fetch_add(kernel_bytes, std::memory_order_relaxed);
      if (requests == 0 && copy_blocks == 0) {  // only kernel copies in this batch: its time is theirs
        counters.kernel_copy_ns.fetch_add(ClockNs(CLOCK_MONOTONIC) - wall0, std::memory_order_relaxed);
        counters.kernel_copy_cpu_ns.fetch_add(ClockNs(CLOCK_THREAD_CPUTIME_ID) - cpu0, std::memory_order_relaxed);
      }
    }
    if (requests > 0) {
      counters.ucx_requests.fetch_add(requests, std::memory_order_relaxed);
      counters.ucx_bytes.fetch_add(request_bytes, std::memory_order_relaxed);
    }
    return issued;
  }

  void SendFence(Lane& lane, Job& j) {
    j.fence_token = lane.next_token++;
    lane.fences[j.fence_token] = &j;
    ucp_request_param_t p{};
    p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
    p.flags = UCP_AM_SEND_FLAG_REPLY | UCP_AM_SEND_FLAG_EAGER;
    p.cb.send = &Impl::OnFenceSent;
    p.user_data = &j;
    ucs_status_ptr_t req = ucp_am_send_nbx(j.lep->ep.get(), kFenceAmId, &j.fence_token, sizeof(j.fence_token),
                                           nullptr, 0, &p);
    if (UCS_PTR_IS_ERR(req)) {
      lane.fences.erase(j.fence_token);
      j.Fail(UcsError("ucp_am_send_nbx(fence)", UCS_PTR_STATUS(req)));
    } else if (req != nullptr) {
      ++j.outstanding;
    }
  }

  void SendNotification(Job& j) {
    const std::vector<std::byte>& wire = j.t->post_wire;
    ucp_request_param_t p{};
    p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
    p.flags = UCP_AM_SEND_FLAG_EAGER;
    p.cb.send = &Impl::OnNotifySent;
    p.user_data = &j;
    ucs_status_ptr_t req = ucp_am_send_nbx(j.lep->ep.get(), kNotifyAmId, nullptr, 0, wire.data(), wire.size(), &p);
    if (req == nullptr) {
      j.notify_done = true;
    } else if (UCS_PTR_IS_ERR(req)) {
      j.notify_done = true;
      j.Fail(UcsError("ucp_am_send_nbx(notification)", UCS_PTR_STATUS(req)));
    } else {
      ++j.outstanding;
    }
  }

  // Advances every job of the lane. Returns whether anything happened.
  bool AdvanceJobs(Lane& lane) {
    bool did = false;
    for (auto it = lane.jobs.begin(); it != lane.jobs.end();) {
      Job& j = **it;
      bool cancel = false;
      {
        std::lock_guard<std::mutex> g(mu);
        cancel = j.t->cancel && j.t->seq == j.seq;
        if (!j.failed && j.t->seq == j.seq && j.t->state == State::kFailed && j.phase != Phase::kNotifying)
          j.Fail(j.t->error);
      }
      if (j.peer->failed.load()) {
        std::lock_guard<std::mutex> g(mu);
        j.Fail(j.peer->failure);
      }
      if (j.failed || (cancel && j.phase == Phase::kIssue)) {
        // Stop issuing; finish once UCX has returned every request.
        if (j.phase == Phase::kNotifying) {
          SettleNotification(j);
          j.phase = Phase::kFinished;
          did = true;
        } else if (!j.lane_reported) {
          ReportLane(j);
          did = true;
        }
        if (j.outstanding == 0) {
          lane.fences.erase(j.fence_token);
          j.phase = Phase::kFinished;
          FinishJob(j);
          it = lane.jobs.erase(it);
          did = true;
          continue;
        }
        ++it;
        continue;
      }
      switch (j.phase) {
        case Phase::kIssue:
          if (IssueOps(lane, j) > 0) did = true;
          if (!j.failed && j.next == j.ops->size()) {
            if (j.t->am_write && j.t->op == TransferOp::kWrite) {
              if (j.ops_in_flight == 0) {
                j.phase = Phase::kFencing;
                SendFence(lane, j);
                did = true;
              }
            } else {
              j.phase = Phase::kFlushing;
              ucp_request_param_t p{};
              p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
              p.cb.send = &Impl::OnFlushDone;
              p.user_data = &j;
              ucs_status_ptr_t req = ucp_ep_flush_nbx(j.lep->ep.get(), &p);
              if (req == nullptr) {
                j.flush_done = true;
              } else if (UCS_PTR_IS_ERR(req)) {
                j.Fail(UcsError("ucp_ep_flush_nbx", UCS_PTR_STATUS(req)));
              } else {
                ++j.outstanding;
              }
              did = true;
            }
          }
          break;
        case Phase::kFlushing:
          if (j.flush_done && j.ops_in_flight == 0) {
            if (ReportLane(j)) {
              j.phase = Phase::kNotifying;
              SendNotification(j);
            } else {
              j.phase = Phase::kFinished;
            }
            did = true;
          }
          break;
        case Phase::kFencing:
          if (j.fence_acked) {
            if (ReportLane(j)) {
              j.phase = Phase::kNotifying;
              SendNotification(j);
            } else {
              j.phase = Phase::kFinished;
            }
            did = true;
          }
          break;
        case Phase::kNotifying:
          if (j.notify_done) {
            SettleNotification(j);
            j.phase = Phase::kFinished;
            did = true;
          }
          break;
        case Phase::kFinished:
          break;
      }
      if (j.phase == Phase::kFinished && j.outstanding == 0) {
        FinishJob(j);
        it = lane.jobs.erase(it);
        did = true;
        continue;
      }
      ++it;
    }
    return did;
  }

  bool ServeAcks(Lane& lane) {
    if (lane.acks.empty() || lane.am_receiving > 0) return false;
    while (!lane.acks.empty()) {
      PendingAck a = lane.acks.front();
      lane.acks.pop_front();
      PendingSend& s = lane.sends.emplace_back();
      s.header = a.token;
      ucp_request_param_t p{};
      p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
      p.flags = UCP_AM_SEND_FLAG_EAGER;
      p.cb.send = &Impl::OnMessageSent;
      p.user_data = &s;
      ucs_status_ptr_t req = ucp_am_send_nbx(a.reply_ep, kFenceAckAmId, &s.header, sizeof(s.header), nullptr, 0, &p);
      if (req == nullptr || UCS_PTR_IS_ERR(req)) s.done = true;
    }
    return true;
  }

  void CollectReceives(Lane& lane) {
    lane.sends.remove_if([](const PendingSend& s) { return s.done; });
    for (auto it = lane.rndv_recvs.begin(); it != lane.rndv_recvs.end();) {
      if (!it->done) {
        ++it;
        continue;
      }
      if (it->status == UCS_OK) {
        EnqueueNotification(it->buffer.data(), it->buffer.size());
      } else {
        spdlog::warn("shardwire agent {}: receiving a notification failed: {}", options.name,
                     ucs_status_string(it->status));
      }
      it = lane.rndv_recvs.erase(it);
    }
  }

  // The lane's progress thread: progress, advance jobs, then sleep on the
  // worker's event fd and the wake eventfd (ucp_worker_arm protocol). Sleeps
  // kIdleSleep at most when idle; backs off (kMinBackoff..kMaxBackoff) only
  // while nothing progresses and either ucp_worker_arm reports UCS_ERR_BUSY or
  // the event fd fires kHotWakeups times in a row without events.
  void RunLane(Lane& lane) {
    if (options.lane_sched_batch) {
      // SCHED_BATCH (nice unchanged, no privilege needed): a lane woken by its
      // event fd (e.g. a peer's notification signalled through UCX's
      // shared-memory transport) does not preempt the running thread at
      // wake-up but runs at the next scheduling point. Without it, every
      // SendMessage to a sleeping same-host peer preempted the sender for
      // 60-900 us on a 2-core host (measured with getrusage ru_nivcsw).
      sched_param sp{};
      if (::pthread_setschedparam(::pthread_self(), SCHED_BATCH, &sp) != 0)
        spdlog::debug("shardwire agent {}: SCHED_BATCH refused for lane {}", options.name, lane.index);
    }
    std::unique_lock<std::mutex> lk(lane.mu);
    auto backoff = kMinBackoff;
    int hot_wakeups = 0;  // consecutive event-fd wake-ups that found nothing to do
    while (!lane.stop) {
      unsigned events = 0;
      for (int i = 0; i < kMaxProgressSpins; ++i) {
        const unsigned n = ucp_worker_progress(lane.worker.get());
        if (n == 0) break;
        events += n;
      }
      ReapFailedPeers(lane);
      bool did = AdvanceJobs(lane);
      did = ServeAcks(lane) || did;
      CollectReceives(lane);
      if (lane.index == 0) CheckLiveness();
      if (events != 0 || did) {
        backoff = kMinBackoff;
        hot_wakeups = 0;
        continue;
      }
      const ucs_status_t armed = ucp_worker_arm(lane.worker.get());
      std::chrono::nanoseconds sleep = kIdleSleep;
      bool watch_efd = true;
      if (armed == UCS_ERR_BUSY || hot_wakeups >= kHotWakeups) {
        // Nothing progressed, yet UCX cannot sleep (sends queued on a transport
        // that cannot signal free space) or its event fd keeps firing without
        // events (seen while a stopped peer's endpoint wires up): back off.
        sleep = backoff;
        backoff = std::min<std::chrono::microseconds>(backoff * 2, kMaxBackoff);
        watch_efd = armed != UCS_OK ? false : hot_wakeups < kHotWakeups;
      } else if (armed != UCS_OK) {
        spdlog::warn("shardwire agent {}: ucp_worker_arm: {}", options.name, ucs_status_string(armed));
        sleep = kMaxBackoff;
      }
      lk.unlock();
      pollfd fds[2] = {{lane.wake.get(), POLLIN, 0}, {lane.efd, POLLIN, 0}};
      timespec ts{static_cast<time_t>(sleep.count() / 1000000000), static_cast<long>(sleep.count() % 1000000000)};
      const int ready = ::ppoll(fds, watch_efd ? 2 : 1, &ts, nullptr);
      if ((fds[0].revents & POLLIN) != 0) {
        std::uint64_t v = 0;
        ssize_t r = ::read(lane.wake.get(), &v, sizeof(v));
        (void)r;
        backoff = kMinBackoff;
        hot_wakeups = 0;
      } else if (ready > 0 && watch_efd && (fds[1].revents & POLLIN) != 0) {
        ++hot_wakeups;  // reset as soon as a round makes progress
      }
      lk.lock();
    }
  }

  // ---- API-thread helpers ----------------------------------------------------
  // Bytes pre-faulted per hold of a lane's mutex: bounds how long a lane thread
  // waits (about 30-80 ms under a shadow-paging hypervisor, 4,096 pages).
  static constexpr std::uintptr_t kPrefaultChunk = std::uintptr_t{16} << 20;

  // Pre-faults, through lane `l`'s mapping of the peer's regions, the pages
  // lane l's ops of `t` write. The mapping lives as long as the lane's rkey,
  // which is destroyed (with mapped_delta cleared) only under the lane's mutex:
  // each chunk is touched with that mutex held after checking the mapping is
  // still there (a peer that fails meanwhile is simply not pre-faulted further).
  std::uint64_t PrefaultLane(PeerState& peer, const TransferCore& t, std::uint32_t l) {
    Lane& lane = *lanes[l];
    const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
    std::vector<transport::PageRange> ranges;
    {
      std::lock_guard<std::mutex> g(lane.mu);
      const LaneEp& lep = peer.lanes[l];
      if (!lep.ep) return 0;
      for (const PreparedOp& o : t.lane_ops[l]) {
        if (o.kernel_copy) continue;  // the kernel writes the peer's pages: nothing mapped here
        if (o.rkey_index >= lep.mapped_delta.size() || !lep.mapped_delta[o.rkey_index]) continue;
        const auto mapped =
            static_cast<std::uintptr_t>(static_cast<std::intptr_t>(o.remote_addr) + *lep.mapped_delta[o.rkey_index]);
        transport::AppendRowPages(mapped, o.count, o.length, o.remote_stride, page, ranges);
      }
    }
    transport::MergePageRanges(ranges);
    std::uint64_t pages = 0;
    for (const transport::PageRange& r : ranges) {
      for (std::uintptr_t a = r.begin; a < r.end;) {
        const std::uintptr_t b = std::min(r.end, a + kPrefaultChunk);
        std::lock_guard<std::mutex> g(lane.mu);
        if (!peer.lanes[l].ep || peer.lanes[l].mapped_delta.empty()) return pages;  // torn down meanwhile
        transport::PrefaultForWrite(reinterpret_cast<void*>(a), b - a);
        pages += (b - a) / page;
        a = b;
      }
    }
    return pages;
  }

  // Pre-faults every lane's pages of `t`, the lanes in parallel (lane 0 on
  // this thread): under a shadow-paging hypervisor this costs 7-20 us per page.
  void PrefaultRemotePages(PeerState& peer, const TransferCore& t) {
    const auto t0 = Clock::now();
    std::vector<std::uint64_t> pages(lanes.size(), 0);
    std::vector<std::thread> helpers;
    for (std::uint32_t l = 1; l < lanes.size(); ++l) {
      if (t.lane_ops[l].empty()) continue;
      try {
        helpers.emplace_back([this, &peer, &t, &pages, l] { pages[l] = PrefaultLane(peer, t, l); });
      } catch (const std::system_error&) {
        pages[l] = PrefaultLane(peer, t, l);  // no thread: do it here
      }
    }
    if (!t.lane_ops[0].empty()) pages[0] = PrefaultLane(peer, t, 0);
    for (auto& h : helpers) h.join();
    std::uint64_t total = 0;
    for (std::uint64_t p : pages) total += p;
    counters.prefaulted_pages.fetch_add(total, std::memory_order_relaxed);
    counters.prefault_ns.fetch_add(
        static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count()),
        std::memory_order_relaxed);
  }

  Result<std::shared_ptr<TransferCore>> FindTransfer(TransferHandle h) {
    auto it = transfers.find(h.id);
    if (it == transfers.end())
      return NotFound(fmt::format("transfer handle {} is not known to agent {}", h.id, options.name));
    return it->second;
  }

  // Closes a peer's endpoints and destroys its rkeys on every lane. With
  // nothing outstanding the rkeys go first and each endpoint is closed with a
  // flush (ucp_rkey_destroy: "after all outstanding operations ... are flushed,
  // and before the endpoint ... is destroyed"). Otherwise (invalidation,
  // failure) endpoints are force-closed: UCX completes queued requests with
  // UCS_ERR_CANCELED; requests already waiting for a dead NONE-mode peer may
  // never complete, so their jobs are abandoned (kept until the worker is
  // destroyed) and an abandoned READ keeps its local regions pinned.
  void TeardownPeer(const std::shared_ptr<PeerState>& peer, bool force, const Status& why) {
    RevokeLeases(*peer, why);
    {
      std::lock_guard<std::mutex> g(mu);
      peers_by_serial.erase(peer->serial);
      FailTransfersOfLocked(peer->serial, why);
      cv.notify_all();
    }
    const double bound = std::max(0.0, options.connect_timeout_s);
    for (auto& lp : lanes) {
      Lane& lane = *lp;
      std::lock_guard<std::mutex> g(lane.mu);
      LaneEp& lep = peer->lanes[lane.index];
      bool busy = false;
      for (auto& j : lane.jobs)
        if (j->peer == peer.get()) busy = true;
      if (!force && !busy && !peer->failed.load() && lep.ep) {
        lep.mapped_delta.clear();
        lep.rkeys.clear();
        if (!lep.ep.Close(/*force=*/false, bound))
          spdlog::warn("shardwire agent {}: closing endpoint to {} did not finish within {} s", options.name,
                       peer->name, bound);
      } else {
        CloseForced(lane, *peer, why);
      }
      DetachJobsOf(lane, peer.get(), why);
      lep.mapped_delta.clear();
      lep.rkeys.clear();
      lane.peers.erase(std::remove(lane.peers.begin(), lane.peers.end(), peer), lane.peers.end());
    }
  }

  void Shutdown() {
    if (lanes.empty()) return;
    for (auto& [name, p] : peers)
      RevokeLeases(*p, PeerDisconnected("the agent mapping peer " + name + " was destroyed"));
    {
      std::lock_guard<std::mutex> g(mu);
      shutting_down = true;
      for (TransferCore* t : active) {
        if (t->state == State::kRunning) {
          t->state = State::kFailed;
          t->error = PeerDisconnected("agent is shutting down");
          t->metrics.Failed(t->error);
        }
      }
    }
    for (auto& l : lanes) {
      {
        std::lock_guard<std::mutex> g(l->mu);
        l->stop = true;
      }
      l->Wake();
      if (l->thread.joinable()) l->thread.join();
    }
    // Single-threaded from here on.
    for (auto& l : lanes) {
      for (auto& p : l->peers) {
        LaneEp& lep = p->lanes[l->index];
        bool busy = false;
        for (auto& j : l->jobs)
          if (j->peer == p.get() && j->outstanding > 0) busy = true;
        if (!busy) {
          lep.mapped_delta.clear();
          lep.rkeys.clear();
        }
        lep.ep.Close(/*force=*/true, Endpoint::kDefaultCloseTimeoutS);
      }
      // Bounded: requests stuck on a dead peer's NONE-mode endpoint never finish.
      const auto deadline = Clock::now() + std::chrono::milliseconds(100);
      auto busy = [&] {
        for (auto& j : l->jobs)
          if (j->outstanding > 0) return true;
        for (auto& s : l->sends)
          if (!s.done) return true;
        return false;
      };
      while (busy() && Clock::now() < deadline) {
        if (ucp_worker_progress(l->worker.get()) == 0) std::this_thread::sleep_for(std::chrono::microseconds(200));
      }
      for (auto& p : l->peers) {
        p->lanes[l->index].mapped_delta.clear();
        p->lanes[l->index].rkeys.clear();
      }
    }
    for (auto& l : lanes) {
      l->peers.clear();
      l->address = WorkerAddress();
      l->worker.reset();  // may complete leftover requests; jobs are still alive
      l->jobs.clear();
      l->abandoned.clear();
      l->sends.clear();
      l->rndv_recvs.clear();
    }
    peers.clear();
    {
      std::lock_guard<std::mutex> g(mu);
      peers_by_serial.clear();
      active.clear();
    }
    transfers.clear();
    released_busy.clear();
    lanes.clear();
    {
      std::lock_guard<std::mutex> g(regions_mu);
      regions.clear();  // ucp_mem_unmap needs the context
    }
    ep_contexts.clear();
    context.reset();
  }
};

// ---- public API -------------------------------------------------------------

Agent::Agent(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Agent::~Agent() = default;

const std::string& Agent::name() const { return impl_->options.name; }
const AgentOptions& Agent::options() const { return impl_->options; }

Result<std::unique_ptr<Agent>> Agent::Create(AgentOptions options) {
  if (options.name.empty()) return InvalidArgument("Agent::Create: name is empty");
  if (options.name.size() > 0xFFFF)
    return InvalidArgument(fmt::format("Agent::Create: name is {} bytes, at most 65535", options.name.size()));
  if (!(options.connect_timeout_s >= 0))
    return InvalidArgument(fmt::format("Agent::Create: connect_timeout_s {} is negative or NaN", options.connect_timeout_s));
  if (!(options.keepalive_interval_s >= 0))
    return InvalidArgument(
        fmt::format("Agent::Create: keepalive_interval_s {} is negative or NaN", options.keepalive_interval_s));
  if (options.lanes == 0) options.lanes = kDefaultLanes;
  if (options.lanes > kMaxLanes)
    return InvalidArgument(fmt::format("Agent::Create: {} lanes, at most {}", options.lanes, kMaxLanes));
  if (options.slice_bytes < 4096)
    return InvalidArgument(fmt::format("Agent::Create: slice_bytes {} is below 4096", options.slice_bytes));
  if (options.max_ops_in_flight_per_peer == 0 || options.max_bytes_in_flight_per_peer == 0)
    return InvalidArgument("Agent::Create: flow-control limits must be positive");

  auto impl = std::make_unique<Impl>();
  impl->options = std::move(options);
  SW_ASSIGN_OR_RETURN(impl->metrics, transport::AgentMetrics::Make(impl->options.metrics, impl->options.name));
  impl->self = SelfIdentity();
  const std::string& name = impl->options.name;
  const std::string ctx = "Agent::Create " + name;

  ucp_config_t* raw_config = nullptr;
  ucs_status_t st = ucp_config_read(nullptr, nullptr, &raw_config);
  if (st != UCS_OK) return UcsError("ucp_config_read", st).WithContext(ctx);
  UcpConfig config(raw_config);
  if (impl->options.keepalive_interval_s > 0 && std::getenv("UCX_KEEPALIVE_INTERVAL") == nullptr) {
    const auto ms = std::max<long long>(1, std::llround(impl->options.keepalive_interval_s * 1000.0));
    st = ucp_config_modify(config.get(), "KEEPALIVE_INTERVAL", fmt::format("{}ms", ms).c_str());
    if (st != UCS_OK) return UcsError("ucp_config_modify(KEEPALIVE_INTERVAL)", st).WithContext(ctx);
  }

  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_NAME | UCP_PARAM_FIELD_MT_WORKERS_SHARED;
  params.features = UCP_FEATURE_RMA | UCP_FEATURE_AM | UCP_FEATURE_WAKEUP;
  params.name = name.c_str();
  params.mt_workers_shared = 1;  // lanes' workers are driven by different threads
  ucp_context_h raw_context = nullptr;
  st = ucp_init(&params, config.get(), &raw_context);
  if (st != UCS_OK) return UcsError("ucp_init", st).WithContext(ctx);
  impl->context.reset(raw_context);

  const std::uint32_t n = impl->options.lanes;
  for (std::uint32_t i = 0; i < n; ++i) {
    auto lane = std::make_unique<Impl::Lane>();
    lane->impl = impl.get();
    lane->index = i;
    lane->ops_limit = std::max<std::uint32_t>(1, impl->options.max_ops_in_flight_per_peer / n);
    lane->bytes_limit = std::max<std::uint64_t>(1, impl->options.max_bytes_in_flight_per_peer / n);
    ucp_worker_params_t wparams{};
    wparams.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
    wparams.thread_mode = UCS_THREAD_MODE_SERIALIZED;
    ucp_worker_h raw_worker = nullptr;
    st = ucp_worker_create(impl->context.get(), &wparams, &raw_worker);
    if (st != UCS_OK) return UcsError("ucp_worker_create", st).WithContext(ctx);
    lane->worker.reset(raw_worker);
    st = ucp_worker_get_efd(raw_worker, &lane->efd);
    if (st != UCS_OK) return UcsError("ucp_worker_get_efd", st).WithContext(ctx);
    lane->wake = FileDescriptor(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
    if (!lane->wake) return Internal(fmt::format("{}: eventfd: {}", ctx, std::strerror(errno)));
    ucp_address_t* raw_address = nullptr;
    std::size_t address_length = 0;
    st = ucp_worker_get_address(raw_worker, &raw_address, &address_length);
    if (st != UCS_OK) return UcsError("ucp_worker_get_address", st).WithContext(ctx);
    lane->address = WorkerAddress(raw_worker, raw_address, address_length);
    struct Handler {
      unsigned id;
      ucp_am_recv_callback_t cb;
      std::uint32_t flags;
    };
    const Handler handlers[] = {{kNotifyAmId, &Impl::OnNotification, UCP_AM_FLAG_WHOLE_MSG},
                                {kWriteAmId, &Impl::OnAmWrite, UCP_AM_FLAG_WHOLE_MSG},
                                {kFenceAmId, &Impl::OnFence, UCP_AM_FLAG_WHOLE_MSG},
                                {kFenceAckAmId, &Impl::OnFenceAck, UCP_AM_FLAG_WHOLE_MSG}};
    for (const Handler& h : handlers) {
      ucp_am_handler_param_t am{};
      am.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB |
                      UCP_AM_HANDLER_PARAM_FIELD_ARG | UCP_AM_HANDLER_PARAM_FIELD_FLAGS;
      am.id = h.id;
      am.flags = h.flags;
      am.cb = h.cb;
      am.arg = lane.get();
      st = ucp_worker_set_am_recv_handler(raw_worker, &am);
      if (st != UCS_OK) return UcsError("ucp_worker_set_am_recv_handler", st).WithContext(ctx);
    }
    impl->lanes.push_back(std::move(lane));
  }
  for (auto& lane : impl->lanes) {
    Impl::Lane* l = lane.get();
    Impl* im = impl.get();
    try {
      l->thread = std::thread([im, l] { im->RunLane(*l); });
    } catch (const std::system_error& e) {
      return Internal(fmt::format("{}: starting lane thread: {}", ctx, e.what()));
    }
  }
  return std::unique_ptr<Agent>(new Agent(std::move(impl)));
}

namespace {

Result<std::vector<std::byte>> PackRkey(ucp_context_h ctx, ucp_mem_h memh) {
  void* raw = nullptr;
  std::size_t size = 0;
  ucs_status_t st = ucp_rkey_pack(ctx, memh, &raw, &size);
  if (st != UCS_OK) return UcsError("ucp_rkey_pack", st);
  RkeyBuffer buffer(raw);
  const auto* b = static_cast<const std::byte*>(raw);
  return std::vector<std::byte>(b, b + size);
}

}  // namespace

Result<RegionId> Agent::RegisterMemory(void* addr, std::size_t length) {
  if (addr == nullptr) return InvalidArgument("RegisterMemory: address is null");
  if (length == 0) return InvalidArgument("RegisterMemory: length is 0");
  ucp_mem_map_params_t p{};
  p.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH;
  p.address = addr;
  p.length = length;
  ucp_mem_h raw = nullptr;
  ucs_status_t st = ucp_mem_map(impl_->context.get(), &p, &raw);
  if (st != UCS_OK) return UcsError(fmt::format("ucp_mem_map({} bytes at {})", length, addr), st);
  Impl::LocalRegion r;
  r.memh = MemHandle(impl_->context.get(), raw);
  SW_ASSIGN_OR_RETURN(r.packed_rkey, PackRkey(impl_->context.get(), raw));
  r.base = static_cast<std::byte*>(addr);
  r.length = length;
  std::lock_guard<std::mutex> g(impl_->regions_mu);
  r.id = impl_->next_region++;
  const RegionId id = r.id;
  impl_->regions.emplace(id, std::move(r));
  return id;
}

Result<std::vector<Agent::RangeLocation>> Agent::RegisterRanges(std::span<const MemoryRange> ranges,
                                                                std::size_t max_gap) {
  if (ranges.empty()) return InvalidArgument("RegisterRanges: no ranges");
  for (std::size_t i = 0; i < ranges.size(); ++i) {
    const auto a = reinterpret_cast<std::uintptr_t>(ranges[i].addr);
    if (ranges[i].addr == nullptr) return InvalidArgument(fmt::format("RegisterRanges: range {} has a null address", i));
    if (ranges[i].length == 0) return InvalidArgument(fmt::format("RegisterRanges: range {} has length 0", i));
    if (a + ranges[i].length < a) return InvalidArgument(fmt::format("RegisterRanges: range {} wraps around", i));
  }
  std::vector<std::size_t> order(ranges.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](std::size_t x, std::size_t y) {
    return reinterpret_cast<std::uintptr_t>(ranges[x].addr) < reinterpret_cast<std::uintptr_t>(ranges[y].addr);
  });
  std::vector<RangeLocation> out(ranges.size());
  std::vector<RegionId> created;
  auto rollback = [&] {
    for (RegionId id : created) (void)Deregister(id);
  };
  std::size_t k = 0;
  while (k < order.size()) {
    const auto start = reinterpret_cast<std::uintptr_t>(ranges[order[k]].addr);
    std::uintptr_t end = start + ranges[order[k]].length;
    std::size_t m = k + 1;
    while (m < order.size() && reinterpret_cast<std::uintptr_t>(ranges[order[m]].addr) <= end + max_gap &&
           end + max_gap >= end) {
      end = std::max(end, reinterpret_cast<std::uintptr_t>(ranges[order[m]].addr) + ranges[order[m]].length);
      ++m;
    }
    auto id = RegisterMemory(reinterpret_cast<void*>(start), end - start);
    if (!id.ok()) {
      rollback();
      return id.status().WithContext("RegisterRanges");
    }
    created.push_back(*id);
    for (std::size_t q = k; q < m; ++q)
      out[order[q]] = {*id, reinterpret_cast<std::uintptr_t>(ranges[order[q]].addr) - start};
    k = m;
  }
  return out;
}

Result<RegionId> Agent::AllocateArena(std::size_t length, ArenaMemory memory) {
  if (memory == ArenaMemory::kShared) return AllocateArena(length);
  if (length == 0) return InvalidArgument("AllocateArena: length is 0");
  SW_ASSIGN_OR_RETURN(transport::PrivateMapping owned, transport::PrivateMapping::Map(length));
  ucp_mem_map_params_t p{};
  p.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH;
  p.address = owned.data();
  p.length = length;
  ucp_mem_h raw = nullptr;
  ucs_status_t st = ucp_mem_map(impl_->context.get(), &p, &raw);
  if (st != UCS_OK) return UcsError(fmt::format("ucp_mem_map(private arena, {} bytes)", length), st);
  Impl::LocalRegion r;
  r.memh = MemHandle(impl_->context.get(), raw);
  SW_ASSIGN_OR_RETURN(r.packed_rkey, PackRkey(impl_->context.get(), raw));
  r.base = owned.data();
  r.length = length;
  r.arena = true;
  r.huge = owned.huge_pages();
  r.owned = std::move(owned);
  std::lock_guard<std::mutex> g(impl_->regions_mu);
  r.id = impl_->next_region++;
  const RegionId id = r.id;
  impl_->regions.emplace(id, std::move(r));
  return id;
}

Result<RegionId> Agent::AllocateArena(std::size_t length) {
  if (length == 0) return InvalidArgument("AllocateArena: length is 0");
  ucp_mem_map_params_t p{};
  p.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH | UCP_MEM_MAP_PARAM_FIELD_FLAGS;
  p.address = nullptr;
  p.length = length;
  p.flags = UCP_MEM_MAP_ALLOCATE;
  ucp_mem_h raw = nullptr;
  ucs_status_t st = ucp_mem_map(impl_->context.get(), &p, &raw);
  if (st != UCS_OK) return UcsError(fmt::format("ucp_mem_map(ALLOCATE, {} bytes)", length), st);
  Impl::LocalRegion r;
  r.memh = MemHandle(impl_->context.get(), raw);
  ucp_mem_attr_t attr{};
  attr.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS | UCP_MEM_ATTR_FIELD_LENGTH;
  st = ucp_mem_query(raw, &attr);
  if (st != UCS_OK) return UcsError("ucp_mem_query", st);
  if (attr.address == nullptr || attr.length < length)
    return Internal(fmt::format("ucp_mem_map(ALLOCATE) returned {} bytes at {} for a {}-byte request", attr.length,
                                attr.address, length));
  SW_ASSIGN_OR_RETURN(r.packed_rkey, PackRkey(impl_->context.get(), raw));
  r.base = static_cast<std::byte*>(attr.address);
  r.length = length;
  r.arena = true;
  std::lock_guard<std::mutex> g(impl_->regions_mu);
  r.id = impl_->next_region++;
  const RegionId id = r.id;
  impl_->regions.emplace(id, std::move(r));
  return id;
}

std::span<std::byte> Agent::RegionBytes(RegionId id) const {
  std::lock_guard<std::mutex> g(impl_->regions_mu);
  auto it = impl_->regions.find(id);
  if (it == impl_->regions.end()) return {};
  return {it->second.base, it->second.length};
}

Status Agent::Deregister(RegionId id) {
  Impl::LocalRegion doomed;
  {
    std::lock_guard<std::mutex> g(impl_->regions_mu);
    auto it = impl_->regions.find(id);
    if (it == impl_->regions.end()) return NotFound(fmt::format("Deregister: region {} is not registered", id));
    if (it->second.pins > 0)
      return InvalidArgument(fmt::format(
          "Deregister: region {} is used by {} prepared transfer(s); Release them first", id, it->second.pins));
    doomed = std::move(it->second);
    impl_->regions.erase(it);
  }
  return Status::Ok();  // `doomed` unmaps outside the lock
}

Result<std::vector<std::byte>> Agent::ExportMetadata() const {
  AgentMetadata m;
  m.name = impl_->options.name;
  for (const auto& l : impl_->lanes) {
    const auto* a = static_cast<const std::byte*>(l->address.data());
    m.worker_addresses.emplace_back(a, a + l->address.size());
  }
  m.process = impl_->self;
  std::lock_guard<std::mutex> g(impl_->regions_mu);
  m.regions.reserve(impl_->regions.size());
  for (const auto& [id, r] : impl_->regions)
    m.regions.push_back(RegionRecord{id, reinterpret_cast<std::uint64_t>(r.base), r.length, r.packed_rkey});
  return EncodeAgentMetadata(m);
}

Result<std::string> Agent::ImportMetadata(std::span<const std::byte> blob) {
  SW_ASSIGN_OR_RETURN(AgentMetadata m, DecodeAgentMetadata(blob));
  Impl& im = *impl_;
  const std::string ctx = "ImportMetadata of peer " + m.name;
  auto existing = im.peers.find(m.name);
  if (existing != im.peers.end() && !existing->second->failed.load()) {
    std::lock_guard<std::mutex> g(im.mu);
    for (TransferCore* t : im.active)
      if (t->peer_serial == existing->second->serial && t->state == State::kRunning)
        return InvalidArgument(fmt::format(
            "ImportMetadata: peer {} still has transfers in flight; Wait for them or InvalidatePeer first", m.name));
  }

  auto peer = std::make_shared<Impl::PeerState>();
  peer->name = m.name;
  peer->serial = im.next_peer_serial++;
  peer->process = m.process;
  peer->remote_lanes = static_cast<std::uint32_t>(m.worker_addresses.size());
  peer->same_host = !m.process.host.empty() && m.process.host == im.self.host && m.process.pid != 0;
  peer->liveness_checked = im.options.failure_detection == PeerFailureDetection::kAuto && peer->same_host;
  peer->ucx_error_handling = !peer->liveness_checked;
  for (const RegionRecord& r : m.regions) {
    peer->region_index[r.id] = static_cast<std::uint32_t>(peer->regions.size());
    peer->regions.push_back({r.id, r.base, r.length});
  }
  peer->lanes.resize(im.lanes.size());
  auto& ep_ctx = im.ep_contexts.emplace_back(std::make_unique<Impl::EpContext>());
  ep_ctx->impl = &im;
  ep_ctx->peer_serial = peer->serial;

  Status failure;
  for (auto& lp : im.lanes) {
    Impl::Lane& lane = *lp;
    std::lock_guard<std::mutex> g(lane.mu);
    LaneEp& lep = peer->lanes[lane.index];
    ucp_ep_params_t ep{};
    ep.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
    ep.address =
        reinterpret_cast<const ucp_address_t*>(m.worker_addresses[lane.index % m.worker_addresses.size()].data());
    if (peer->liveness_checked) {
      ep.err_mode = UCP_ERR_HANDLING_MODE_NONE;
    } else {
      ep.field_mask |= UCP_EP_PARAM_FIELD_ERR_HANDLER;
      ep.err_mode = UCP_ERR_HANDLING_MODE_PEER;
      ep.err_handler.cb = &Impl::OnEpError;
      ep.err_handler.arg = ep_ctx.get();
    }
    ucp_ep_h raw_ep = nullptr;
    ucs_status_t st = ucp_ep_create(lane.worker.get(), &ep, &raw_ep);
    if (st != UCS_OK) {
      failure = UcsError("ucp_ep_create", st).WithContext(ctx);
      break;
    }
    lep.ep = Endpoint(lane.worker.get(), raw_ep);
    lep.rkeys.reserve(m.regions.size());
    for (const RegionRecord& r : m.regions) {
      ucp_rkey_h raw_rkey = nullptr;
      st = ucp_ep_rkey_unpack(raw_ep, r.packed_rkey.data(), &raw_rkey);
      if (st != UCS_OK) {
        failure = UcsError(fmt::format("ucp_ep_rkey_unpack of region {}", r.id), st).WithContext(ctx);
        break;
      }
      lep.rkeys.emplace_back(raw_rkey);
      void* mapped = nullptr;
      if (ucp_rkey_ptr(raw_rkey, r.base, &mapped) == UCS_OK && mapped != nullptr) {
        lep.mapped_delta.emplace_back(reinterpret_cast<std::intptr_t>(mapped) - static_cast<std::intptr_t>(r.base));
      } else {
        lep.mapped_delta.emplace_back(std::nullopt);
      }
      if (lane.index == 0) peer->region_mapped.push_back(lep.mapped_delta.back().has_value());
    }
    if (!failure.ok()) break;
    if (lane.index == 0) peer->transports = EndpointTransports(raw_ep);
  }
  if (!failure.ok()) {
    for (auto& lp : im.lanes) {
      std::lock_guard<std::mutex> g(lp->mu);
      peer->lanes[lp->index].mapped_delta.clear();
      peer->lanes[lp->index].rkeys.clear();
      peer->lanes[lp->index].ep.Close(/*force=*/true, Endpoint::kDefaultCloseTimeoutS);
    }
    return failure;
  }
  switch (im.options.write_path) {
    case WritePath::kAuto:
    case WritePath::kKernelCopy:  // UCX's path for what is not a kernel copy, as kAuto
      peer->write_path = OnlyTcp(peer->transports) ? WritePath::kActiveMessage : WritePath::kPut;
      break;
    case WritePath::kPut:
    case WritePath::kActiveMessage:
      peer->write_path = im.options.write_path;
      break;
  }
  if ((im.options.read_path != ReadPath::kMapped || WritesMayKernelCopy(im.options.write_path)) && peer->same_host && !peer->transports.empty() &&
      !OnlyTcp(peer->transports)) {
    std::uint64_t probe = 0;
    for (const RemoteRegion& r : peer->regions) {
      if (r.length > 0) {
        probe = r.base;
        break;
      }
    }
    auto opened = transport::PeerProcess::Open(static_cast<pid_t>(m.process.pid), probe);
    // Opened first, then the start time compared: the pidfd names the process
    // whose identity the blob carries, even if the pid is reused later.
    if (opened.ok() && ProcessGone(m.process).empty()) {
      peer->kernel_copy = std::move(*opened);
    } else {
      spdlog::debug("shardwire agent {}: no kernel copy from peer {}: {}", im.options.name, m.name,
                    opened.ok() ? ProcessGone(m.process) : opened.status().ToString());
    }
  }
  spdlog::debug("shardwire agent {}: peer {} via [{}], write path {}, kernel copy {}", im.options.name, m.name,
                fmt::join(peer->transports, ", "), WritePathName(peer->write_path), peer->kernel_copy.valid());

  if (existing != im.peers.end()) {
    std::shared_ptr<Impl::PeerState> old = existing->second;
    existing->second = peer;
    im.TeardownPeer(old, /*force=*/old->failed.load(), PeerDisconnected("peer " + m.name + " was re-imported"));
  } else {
    im.peers.emplace(m.name, peer);
  }
  {
    std::lock_guard<std::mutex> g(im.mu);
    im.peers_by_serial[peer->serial] = peer;
  }
  for (auto& lp : im.lanes) {
    std::lock_guard<std::mutex> g(lp->mu);
    lp->peers.push_back(peer);
  }
  return m.name;
}

Status Agent::InvalidatePeer(const std::string& peer) {
  Impl& im = *impl_;
  auto it = im.peers.find(peer);
  if (it == im.peers.end()) return NotFound(fmt::format("InvalidatePeer: peer {} is not imported", peer));
  std::shared_ptr<Impl::PeerState> p = it->second;
  im.peers.erase(it);
  im.TeardownPeer(p, /*force=*/true, PeerDisconnected("peer " + peer + " was invalidated"));
  return Status::Ok();
}

Result<PeerInfo> Agent::DescribePeer(const std::string& peer) const {
  auto it = impl_->peers.find(peer);
  if (it == impl_->peers.end()) return NotFound(fmt::format("DescribePeer: peer {} is not imported", peer));
  const Impl::PeerState& p = *it->second;
  PeerInfo info;
  info.name = p.name;
  info.remote_lanes = p.remote_lanes;
  info.same_host = p.same_host;
  info.ucx_error_handling = p.ucx_error_handling;
  info.write_path = p.write_path;
  info.kernel_copy = p.kernel_copy.valid() && impl_->options.read_path != ReadPath::kMapped;
  info.kernel_copy_writes = p.kernel_copy.valid() && WritesMayKernelCopy(impl_->options.write_path);
  info.transports = p.transports;
  {
    std::lock_guard<std::mutex> g(impl_->lanes[0]->mu);
    const LaneEp& lep = p.lanes[0];
    for (std::size_t i = 0; i < lep.mapped_delta.size() && i < p.regions.size(); ++i)
      if (lep.mapped_delta[i]) info.mapped_regions.push_back(p.regions[i].id);
  }
  std::sort(info.mapped_regions.begin(), info.mapped_regions.end());
  return info;
}

Result<MappedRegion> Agent::MapPeerRegion(const std::string& peer, RegionId region) {
  Impl& im = *impl_;
  auto it = im.peers.find(peer);
  if (it == im.peers.end()) return NotFound(fmt::format("MapPeerRegion: peer {} is not imported", peer));
  Impl::PeerState& p = *it->second;
  if (p.failed.load()) {
    std::lock_guard<std::mutex> g(im.mu);
    return p.failure.WithContext("MapPeerRegion");
  }
  auto rit = p.region_index.find(region);
  if (rit == p.region_index.end())
    return NotFound(fmt::format("MapPeerRegion: peer {} exported no region {}", peer, region));
  const std::uint32_t index = rit->second;
  std::byte* base = nullptr;
  {
    std::lock_guard<std::mutex> g(im.lanes[0]->mu);
    const LaneEp& lep = p.lanes[0];
    if (!lep.ep) return PeerDisconnected(fmt::format("MapPeerRegion: the connection to peer {} is closed", peer));
    if (index >= lep.mapped_delta.size() || !lep.mapped_delta[index]) {
      return Unsupported(fmt::format(
          "MapPeerRegion: region {} of peer {} cannot be mapped into this process (transports [{}]; a mapping "
          "needs a same-host arena in shared memory)",
          region, peer, fmt::join(p.transports, ", ")));
    }
    base = reinterpret_cast<std::byte*>(static_cast<std::intptr_t>(p.regions[index].base) + *lep.mapped_delta[index]);
  }
  std::lock_guard<std::mutex> g(p.leases_mu);
  if (p.leases.size() < p.regions.size()) p.leases.resize(p.regions.size());
  std::shared_ptr<MappedRegion::Lease>& lease = p.leases[index];
  if (!lease) {
    lease = std::make_shared<MappedRegion::Lease>();
    lease->peer = peer;
    lease->region = region;
    lease->base = base;
    lease->length = p.regions[index].length;
  }
  return MappedRegion(lease);
}

// ---- MappedRegion -------------------------------------------------------------

MappedRegion::Access::Access(std::shared_ptr<Lease> lease, std::span<std::byte> bytes)
    : lease_(std::move(lease)), lock_(lease_->mu), bytes_(bytes) {}

MappedRegion::Access::~Access() {
  // Stores through the mapping become visible before whatever the caller does next (e.g. a
  // notification to the peer); a no-op instruction on x86-64.
  if (lock_.owns_lock()) std::atomic_thread_fence(std::memory_order_release);
}

Result<std::span<std::byte>> MappedRegion::Access::Range(std::uint64_t offset, std::uint64_t length) const {
  if (offset > bytes_.size() || length > bytes_.size() - offset) {
    return InvalidArgument(fmt::format("mapped region {} of peer {}: bytes [{}, +{}) lie outside its {} bytes",
                                       lease_->region, lease_->peer, offset, length, bytes_.size()));
  }
  return bytes_.subspan(offset, length);
}

const std::string& MappedRegion::peer() const {
  static const std::string kNone;
  return lease_ ? lease_->peer : kNone;
}
RegionId MappedRegion::region() const { return lease_ ? lease_->region : 0; }
std::uint64_t MappedRegion::size() const { return lease_ ? lease_->length : 0; }

Result<MappedRegion::Access> MappedRegion::Acquire() const {
  if (!lease_) return InvalidArgument("MappedRegion::Acquire on an empty MappedRegion");
  Access a(lease_, std::span<std::byte>(lease_->base, lease_->length));
  if (lease_->revoked) {
    return lease_->why.WithContext(fmt::format("mapped region {} of peer {}", lease_->region, lease_->peer));
  }
  return a;
}

Result<std::uint64_t> MappedRegion::PrefaultForWrite(std::uint64_t offset, std::uint64_t length) const {
  SW_ASSIGN_OR_RETURN(const Access a, Acquire());
  SW_ASSIGN_OR_RETURN(const std::span<std::byte> range, a.Range(offset, length));
  if (range.empty()) return std::uint64_t{0};
  return transport::PrefaultForWrite(range.data(), range.size()).touched_pages;
}

Result<TransferHandle> Agent::PrepareTransfer(TransferOp op, const std::string& peer_name,
                                              std::vector<TransferDescriptor> descriptors,
                                              std::optional<std::vector<std::byte>> notification_payload) {
  Impl& im = *impl_;
  auto pit = im.peers.find(peer_name);
  if (pit == im.peers.end()) return NotFound(fmt::format("PrepareTransfer: peer {} is not imported", peer_name));
  std::shared_ptr<Impl::PeerState> peer = pit->second;
  if (peer->failed.load()) {
    std::lock_guard<std::mutex> g(im.mu);
    return peer->failure.WithContext("PrepareTransfer");
  }
  if (notification_payload && notification_payload->size() > (std::size_t{1} << 31))
    return InvalidArgument(
        fmt::format("PrepareTransfer: notification payload of {} bytes exceeds 2^31", notification_payload->size()));

  auto t = std::make_shared<TransferCore>();
  t->op = op;
  t->peer_name = peer_name;
  t->peer_serial = peer->serial;
  t->metrics = im.metrics.ForTransfer(peer_name, op);
  t->am_write = op == TransferOp::kWrite && peer->write_path == WritePath::kActiveMessage;
  std::vector<PreparedOp> slices;
  slices.reserve(descriptors.size());
  std::map<RegionId, std::uint32_t> pins;
  std::set<std::uint32_t> remote_used;
  std::vector<transport::RowBlock> blocks;
  std::uint64_t total = 0;
  const std::uint64_t slice = im.options.slice_bytes;
  {
    std::lock_guard<std::mutex> g(im.regions_mu);
    for (std::size_t i = 0; i < descriptors.size(); ++i) {
      const TransferDescriptor& d = descriptors[i];
      auto lit = im.regions.find(d.local_region);
      if (lit == im.regions.end())
        return InvalidArgument(fmt::format("PrepareTransfer: descriptor {}: local region {} is not registered", i,
                                           d.local_region));
      const Impl::LocalRegion& lr = lit->second;
      SW_RETURN_IF_ERROR(transport::CheckRows(d.local_offset, d.local_stride, d.count, d.length, lr.length,
                                              fmt::format("descriptor {}: local region {}:", i, d.local_region))
                             .WithContext("PrepareTransfer"));
      auto rit = peer->region_index.find(d.remote_region);
      if (rit == peer->region_index.end())
        return InvalidArgument(fmt::format("PrepareTransfer: descriptor {}: peer {} has no region {}", i, peer_name,
                                           d.remote_region));
      const RemoteRegion& rr = peer->regions[rit->second];
      SW_RETURN_IF_ERROR(transport::CheckRows(d.remote_offset, d.remote_stride, d.count, d.length, rr.length,
                                              fmt::format("descriptor {}: remote region {} of peer {}:", i,
                                                          d.remote_region, peer_name))
                             .WithContext("PrepareTransfer"));
      ++pins[d.local_region];
      if (d.length == 0 || d.count == 0) continue;
      remote_used.insert(rit->second);
      const bool remote_mapped = rit->second < peer->region_mapped.size() && peer->region_mapped[rit->second];
      const bool kernel_copy =
          op == TransferOp::kRead
              ? peer->kernel_copy.valid() && (im.options.read_path == ReadPath::kKernelCopy ||
                                               (im.options.read_path == ReadPath::kAuto && lr.huge))
              : !t->am_write && peer->kernel_copy.valid() &&
                    (im.options.write_path == WritePath::kKernelCopy ||
                     (im.options.write_path == WritePath::kAuto && !remote_mapped));
      blocks.clear();
      transport::CutIntoBlocks(d, slice, /*one_row_per_block=*/t->am_write, blocks);
      for (const transport::RowBlock& b : blocks) {
        PreparedOp o;
        o.length = b.length;
        o.count = b.count;
        o.local_stride = b.local_stride;
        o.remote_stride = b.remote_stride;
        o.local = lr.base + b.local_offset;
        o.remote_addr = rr.base + b.remote_offset;
        o.memh = lr.memh.get();
        o.rkey_index = rit->second;
        o.am.region = d.remote_region;
        o.am.offset = b.remote_offset;
        o.kernel_copy = kernel_copy;
        slices.push_back(o);
      }
      if (d.bytes() > UINT64_MAX - total)
        return InvalidArgument(fmt::format("PrepareTransfer: descriptor {}: total bytes overflow 64 bits", i));
      total += d.bytes();
    }
    for (const auto& [id, n] : pins) {
      im.regions.at(id).pins += n;
      t->pinned.insert(t->pinned.end(), n, id);
    }
  }
  // Contiguous runs of about total/lanes bytes per lane (keeps locality). A
  // transfer of at most one slice stays on one lane (chosen by transfer id):
  // splitting it would only add a hand-off per lane.
  const std::size_t nl = im.lanes.size();
  t->lane_ops.resize(nl);
  t->total_bytes = total;
  if (total <= slice) {
    t->lane_ops[im.next_transfer % nl] = std::move(slices);
  } else {
    std::size_t lane = 0;
    std::uint64_t acc = 0;
    const std::uint64_t share = (total + nl - 1) / nl;
    for (const PreparedOp& o : slices) {
      if (lane + 1 < nl && acc >= share * (lane + 1)) ++lane;
      t->lane_ops[lane].push_back(o);
      acc += o.bytes();
    }
  }
  if (notification_payload) t->prepared_wire = EncodeNotification(im.options.name, *notification_payload);

  // Pre-fault the pages of this process's mappings of the peer's shared-memory
  // regions that each lane will write (see AgentOptions::prefault_remote).
  if (im.options.prefault_remote && op == TransferOp::kWrite && !t->am_write && total > 0)
    im.PrefaultRemotePages(*peer, *t);

  // READs copy from this process's mapping of the peer's shared-memory region: populate
  // the ranges each lane will read (one madvise per contiguous range) instead of taking
  // a read fault per 4 KiB page during the copy (a VM exit each: a quarter of a P2P
  // load's CPU time in perf). Ranges only, not whole regions: a loader reads a part.
  if (im.options.prefault_remote && op == TransferOp::kRead) {
    for (auto& lp : im.lanes) {
      std::vector<std::pair<std::uintptr_t, std::uintptr_t>> ranges;  // [begin, end) in this process
      {
        std::lock_guard<std::mutex> g(lp->mu);
        LaneEp& lep = peer->lanes[lp->index];
        if (!lep.ep) continue;
        if (lp->index >= t->lane_ops.size()) continue;
        for (const PreparedOp& o : t->lane_ops[lp->index]) {
          if (o.kernel_copy) continue;  // the kernel reads the peer's pages: nothing mapped here
          void* ptr = nullptr;
          if (o.rkey_index >= lep.rkeys.size() || !lep.rkeys[o.rkey_index]) continue;
          if (ucp_rkey_ptr(lep.rkeys[o.rkey_index].get(), o.remote_addr, &ptr) != UCS_OK || ptr == nullptr) continue;
          const std::uint64_t span = o.count > 1 ? (o.count - 1) * o.remote_stride + o.length : o.length;
          ranges.emplace_back(reinterpret_cast<std::uintptr_t>(ptr), reinterpret_cast<std::uintptr_t>(ptr) + span);
        }
      }
      std::sort(ranges.begin(), ranges.end());
      std::vector<std::pair<std::uintptr_t, std::uintptr_t>> merged;
      for (const auto& r : ranges) {
        if (!merged.empty() && r.first <= merged.back().second + 4096) {
          merged.back().second = std::max(merged.back().second, r.second);
        } else {
          merged.push_back(r);
        }
      }
      // The mapping lives as long as the rkey, which only this thread destroys.
      for (const auto& [b, e] : merged) (void)transport::PrefaultForRead(reinterpret_cast<const void*>(b), e - b);
    }
  }

  t->id = im.next_transfer++;
  const TransferHandle h{t->id};
  im.transfers.emplace(h.id, std::move(t));
  return h;
}

Status Agent::Post(TransferHandle handle) { return Post(handle, std::span<const std::byte>(), /*replace=*/false); }

Status Agent::Post(TransferHandle handle, std::span<const std::byte> payload) {
  return Post(handle, payload, /*replace=*/true);
}

Status Agent::Post(TransferHandle handle, std::span<const std::byte> payload, bool replace) {
  Impl& im = *impl_;
  SW_ASSIGN_OR_RETURN(std::shared_ptr<TransferCore> t, im.FindTransfer(handle));
  auto pit = im.peers.find(t->peer_name);
  if (pit == im.peers.end() || pit->second->serial != t->peer_serial) {
    Status gone = PeerDisconnected(fmt::format(
        "Post: transfer {} was prepared against an earlier import of peer {}, which is gone; prepare it again",
        handle.id, t->peer_name));
    t->metrics.Failed(gone);
    return gone;
  }
  std::shared_ptr<Impl::PeerState> peer = pit->second;
  if (replace && payload.size() > (std::size_t{1} << 31))
    return InvalidArgument(fmt::format("Post: notification payload of {} bytes exceeds 2^31", payload.size()));
  std::vector<std::uint32_t> lanes_used;
  for (std::uint32_t l = 0; l < t->lane_ops.size(); ++l)
    if (!t->lane_ops[l].empty() || t->all_lanes) lanes_used.push_back(l);
  if (lanes_used.empty()) lanes_used.push_back(0);  // flush (and notify) only
  {
    std::lock_guard<std::mutex> g(im.mu);
    if (peer->failed.load()) {
      t->metrics.Failed(peer->failure);
      return peer->failure.WithContext("Post");
    }
    if (t->state == State::kRunning)
      return InvalidArgument(fmt::format("Post: transfer {} is still in flight; Wait for it first", handle.id));
    if (t->jobs_alive > 0)
      return InvalidArgument(fmt::format("Post: transfer {} ended but its requests are still draining", handle.id));
    ++t->seq;
    t->state = State::kRunning;
    t->error = Status::Ok();
    t->cancel = false;
    t->notified = false;
    t->lanes_pending = static_cast<std::uint32_t>(lanes_used.size());
    t->jobs_alive = static_cast<std::uint32_t>(lanes_used.size());
    if (replace) {
      t->post_wire = EncodeNotification(im.options.name, payload);
      t->has_wire = true;
    } else if (t->prepared_wire) {
      t->post_wire = *t->prepared_wire;
      t->has_wire = true;
    } else {
      t->has_wire = false;
    }
    im.active.insert(t.get());
  }
  im.counters.posts.fetch_add(1, std::memory_order_relaxed);
  for (std::uint32_t l : lanes_used) {
    Impl::Lane& lane = *im.lanes[l];
    auto job = std::make_unique<Impl::Job>();
    job->t = t;
    job->seq = t->seq;
    job->lane = &lane;
    job->peer = peer.get();
    job->ops = &t->lane_ops[l];
    const std::size_t cookies = std::min<std::size_t>(lane.ops_limit, std::max<std::size_t>(1, job->ops->size()));
    job->cookies.resize(cookies);
    job->free_cookies.resize(cookies);
    for (std::size_t c = 0; c < cookies; ++c) job->free_cookies[c] = static_cast<std::uint32_t>(cookies - 1 - c);
    {
      std::lock_guard<std::mutex> g(lane.mu);
      LaneEp& lep = peer->lanes[l];
      job->lep = &lep;
      if (!lep.ep) job->Fail(PeerDisconnected(fmt::format("peer {} endpoint is closed", t->peer_name)));
      lane.jobs.push_back(std::move(job));
    }
    // Small single-lane transfer: issue it from this thread if the lane is not
    // busy; one-sided puts then complete before Post returns and nobody has to
    // be woken (saves two thread hand-offs per post). Never blocks.
    bool wake = true;
    if (lanes_used.size() == 1 && t->total_bytes <= im.options.slice_bytes) {
      std::unique_lock<std::mutex> lk(lane.mu, std::try_to_lock);
      if (lk.owns_lock()) {
        // Run the job to completion while it makes progress: one-sided puts
        // into a mapped arena complete at once, and a few hundred descriptors
        // need several rounds of kIssueBatch plus the flush (the old cap of 3
        // rounds handed every transfer above 192 descriptors to the lane
        // thread). Stop at the first round without progress (requests waiting
        // for a remote reply) and let the lane thread finish.
        for (int round = 0; round < kInlineRounds && !lane.jobs.empty(); ++round) {
          const unsigned events = ucp_worker_progress(lane.worker.get());
          if (!im.AdvanceJobs(lane) && events == 0) break;
        }
        lane.sends.remove_if([](const Impl::PendingSend& s) { return s.done; });
        wake = !lane.jobs.empty() || !lane.sends.empty();
      }
    }
    if (wake) lane.Wake();
  }
  return Status::Ok();
}

namespace {

Status SettledStatus(const TransferCore& t, std::string_view what) {
  switch (t.state) {
    case State::kDone: return Status::Ok();
    case State::kFailed: return t.error;
    case State::kCancelled:
      return InvalidArgument(fmt::format("{}: transfer {} was cancelled; post it again", what, t.id));
    case State::kIdle: return InvalidArgument(fmt::format("{}: transfer {} was never posted", what, t.id));
    case State::kRunning: break;
  }
  return Internal("SettledStatus on a running transfer");
}

}  // namespace

Result<bool> Agent::Test(TransferHandle handle) {
  Impl& im = *impl_;
  SW_ASSIGN_OR_RETURN(std::shared_ptr<TransferCore> t, im.FindTransfer(handle));
  std::lock_guard<std::mutex> g(im.mu);
  if (t->state == State::kRunning) return false;
  SW_RETURN_IF_ERROR(SettledStatus(*t, "Test"));
  return true;
}

Status Agent::Wait(TransferHandle handle, double timeout_s) {
  Impl& im = *impl_;
  SW_RETURN_IF_ERROR(CheckTimeout(timeout_s, "Wait"));
  SW_ASSIGN_OR_RETURN(std::shared_ptr<TransferCore> t, im.FindTransfer(handle));
  const auto deadline = DeadlineAfter(timeout_s);
  std::unique_lock<std::mutex> lk(im.mu);
  if (t->state == State::kIdle) return InvalidArgument(fmt::format("Wait: transfer {} was never posted", handle.id));
  if (!im.cv.wait_until(lk, deadline, [&] { return t->state != State::kRunning; }))
    return TimedOut(fmt::format("Wait for transfer {} to {}: no completion within {} s", handle.id, t->peer_name,
                                timeout_s));
  return SettledStatus(*t, "Wait");
}

Status Agent::Cancel(TransferHandle handle, double timeout_s) {
  Impl& im = *impl_;
  SW_RETURN_IF_ERROR(CheckTimeout(timeout_s, "Cancel"));
  SW_ASSIGN_OR_RETURN(std::shared_ptr<TransferCore> t, im.FindTransfer(handle));
  {
    std::lock_guard<std::mutex> g(im.mu);
    if (t->state == State::kIdle) return InvalidArgument(fmt::format("Cancel: transfer {} was never posted", handle.id));
    if (t->state == State::kRunning) t->cancel = true;
  }
  im.WakeAll();
  const auto deadline = DeadlineAfter(timeout_s);
  std::unique_lock<std::mutex> lk(im.mu);
  if (!im.cv.wait_until(lk, deadline, [&] { return t->state != State::kRunning && t->jobs_alive == 0; }))
    return TimedOut(fmt::format("Cancel of transfer {}: issued operations did not drain within {} s", handle.id,
                                timeout_s));
  return Status::Ok();
}

Status Agent::Release(TransferHandle handle) {
  Impl& im = *impl_;
  SW_ASSIGN_OR_RETURN(std::shared_ptr<TransferCore> t, im.FindTransfer(handle));
  bool busy = false;
  bool abandoned = false;
  {
    std::lock_guard<std::mutex> g(im.mu);
    busy = t->state == State::kRunning || t->jobs_alive > 0;
    abandoned = t->abandoned_requests;
  }
  auto pit = im.peers.find(t->peer_name);
  const bool peer_gone = pit == im.peers.end() || pit->second->serial != t->peer_serial || pit->second->failed.load();
  if (busy && !peer_gone)
    return InvalidArgument(fmt::format("Release: transfer {} is in flight; Wait for it, Cancel it or InvalidatePeer({})",
                                       handle.id, t->peer_name));
  const bool keep_pins = (busy || abandoned) && t->op == TransferOp::kRead;  // a late reply could land
  {
    std::lock_guard<std::mutex> g(im.regions_mu);
    for (RegionId id : t->pinned) {
      auto it = im.regions.find(id);
      if (!keep_pins && it != im.regions.end() && it->second.pins > 0) --it->second.pins;
    }
  }
  {
    std::lock_guard<std::mutex> g(im.mu);
    if (t->state == State::kRunning) {
      t->state = State::kFailed;
      t->error = PeerDisconnected("released");
      t->metrics.Failed(t->error);
    }
    if (t->jobs_alive == 0) im.active.erase(t.get());
  }
  im.transfers.erase(handle.id);
  if (busy) im.released_busy.push_back(std::move(t));  // jobs may still point at it
  return Status::Ok();
}

Status Agent::WireUp(const std::string& peer_name, double timeout_s) {
  Impl& im = *impl_;
  SW_RETURN_IF_ERROR(CheckTimeout(timeout_s, "WireUp"));
  auto pit = im.peers.find(peer_name);
  if (pit == im.peers.end()) return NotFound(fmt::format("WireUp: peer {} is not imported", peer_name));
  // An empty transfer posted on every lane: each lane's job goes straight to
  // ucp_ep_flush_nbx, which completes only once that endpoint is wired up.
  SW_ASSIGN_OR_RETURN(const TransferHandle h, PrepareTransfer(TransferOp::kWrite, peer_name, {}, std::nullopt));
  im.transfers.at(h.id)->all_lanes = true;
  im.transfers.at(h.id)->metrics = {};  // internal: not a transfer of the caller's
  Status st = Post(h);
  if (st.ok()) st = Wait(h, timeout_s);
  if (st.code() == ErrorCode::kTimedOut) (void)Cancel(h, 1.0);
  (void)Release(h);
  return st.WithContext("WireUp with peer " + peer_name);
}

Status Agent::SendMessage(const std::string& peer_name, std::span<const std::byte> payload) {
  Impl& im = *impl_;
  auto pit = im.peers.find(peer_name);
  if (pit == im.peers.end()) return NotFound(fmt::format("SendMessage: peer {} is not imported", peer_name));
  std::shared_ptr<Impl::PeerState> peer = pit->second;
  if (peer->failed.load()) {
    std::lock_guard<std::mutex> g(im.mu);
    return peer->failure.WithContext("SendMessage");
  }
  if (payload.size() > (std::size_t{1} << 31))
    return InvalidArgument(fmt::format("SendMessage: payload of {} bytes exceeds 2^31", payload.size()));
  Impl::Lane& lane = *im.lanes[0];
  {
    std::lock_guard<std::mutex> g(lane.mu);
    LaneEp& lep = peer->lanes[0];
    if (!lep.ep) return PeerDisconnected(fmt::format("SendMessage: endpoint to {} is closed", peer_name));
    Impl::PendingSend& s = lane.sends.emplace_back();
    s.wire = EncodeNotification(im.options.name, payload);
    ucp_request_param_t p{};
    p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
    p.flags = UCP_AM_SEND_FLAG_EAGER;
    p.cb.send = &Impl::OnMessageSent;
    p.user_data = &s;
    ucs_status_ptr_t req = ucp_am_send_nbx(lep.ep.get(), kNotifyAmId, nullptr, 0, s.wire.data(), s.wire.size(), &p);
    if (req == nullptr) {
      // Completed at once: on a shared-memory endpoint nothing is left for
      // the lane thread, so do not wake it (it would compete for this mutex
      // and the CPU). TCP endpoints may keep unsent bytes that need progress.
      lane.sends.pop_back();
      const bool any_tcp = std::any_of(peer->transports.begin(), peer->transports.end(),
                                       [](const std::string& tr) { return tr.rfind("tcp/", 0) == 0; });
      if (!peer->transports.empty() && !any_tcp) return Status::Ok();
    } else if (UCS_PTR_IS_ERR(req)) {
      lane.sends.pop_back();
      return UcsError("ucp_am_send_nbx", UCS_PTR_STATUS(req)).WithContext("SendMessage to " + peer_name);
    }
  }
  lane.Wake();
  return Status::Ok();
}

Result<Notification> Agent::WaitNotification(double timeout_s) {
  Impl& im = *impl_;
  SW_RETURN_IF_ERROR(CheckTimeout(timeout_s, "WaitNotification"));
  const auto deadline = DeadlineAfter(timeout_s);
  std::unique_lock<std::mutex> lk(im.mu);
  if (!im.cv.wait_until(lk, deadline, [&] { return !im.notifications.empty() || !im.unreported_failures.empty(); }))
    return TimedOut(fmt::format("WaitNotification: no completion within {} s", timeout_s));
  if (im.notifications.empty()) {
    Status f = std::move(im.unreported_failures.front());
    im.unreported_failures.pop_front();
    return f.WithContext("WaitNotification");
  }
  Notification n = std::move(im.notifications.front());
  im.notifications.pop_front();
  return n;
}

std::vector<Notification> Agent::TakeNotifications() {
  Impl& im = *impl_;
  std::lock_guard<std::mutex> g(im.mu);
  std::vector<Notification> out(std::make_move_iterator(im.notifications.begin()),
                                std::make_move_iterator(im.notifications.end()));
  im.notifications.clear();
  return out;
}

void Agent::Progress() { impl_->WakeAll(); }

AgentStats Agent::Stats() const {
  const Impl::Counters& c = impl_->counters;
  AgentStats s;
  s.posts = c.posts.load(std::memory_order_relaxed);
  s.direct_copy_blocks = c.direct_copy_blocks.load(std::memory_order_relaxed);
  s.direct_copy_bytes = c.direct_copy_bytes.load(std::memory_order_relaxed);
  s.ucx_requests = c.ucx_requests.load(std::memory_order_relaxed);
  s.ucx_bytes = c.ucx_bytes.load(std::memory_order_relaxed);
  s.prefaulted_pages = c.prefaulted_pages.load(std::memory_order_relaxed);
  s.prefault_s = static_cast<double>(c.prefault_ns.load(std::memory_order_relaxed)) / 1e9;
  s.direct_copy_s = static_cast<double>(c.direct_copy_ns.load(std::memory_order_relaxed)) / 1e9;
  s.direct_copy_cpu_s = static_cast<double>(c.direct_copy_cpu_ns.load(std::memory_order_relaxed)) / 1e9;
  s.kernel_copy_blocks = c.kernel_copy_blocks.load(std::memory_order_relaxed);
  s.kernel_copy_bytes = c.kernel_copy_bytes.load(std::memory_order_relaxed);
  s.kernel_copy_s = static_cast<double>(c.kernel_copy_ns.load(std::memory_order_relaxed)) / 1e9;
  s.kernel_copy_cpu_s = static_cast<double>(c.kernel_copy_cpu_ns.load(std::memory_order_relaxed)) / 1e9;
  return s;
}

std::vector<std::string> Agent::FailedPeers() const {
  std::vector<std::string> out;
  for (const auto& [name, p] : impl_->peers)
    if (p->failed.load()) out.push_back(name);
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace shardwire
