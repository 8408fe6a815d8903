// Agent implementation over UCP (UCX 1.13.1). See include/shardwire/agent.h for
// the contract and docs/transport.md for the design and measurements.
//
// Structure (one object per UCX handle, see transport/ucx_raii.h):
//   Impl
//     context_ (ucp_context)  worker_ (ucp_worker, efd_)  address_
//     regions_   RegionId -> LocalRegion {MemHandle, packed rkey, pins}
//     peers_     name -> Peer {EpContext, Endpoint, RemoteRegion{Rkey}...}
//     transfers_ id -> Transfer {resolved ops, notification, execution state}
//     sends_     in-flight SendMessage copies
//
// A post is a small state machine advanced by Progress(): kRma (puts/gets and
// the ep flush outstanding) -> kNotify (active message outstanding) -> kDone.
// UCX callbacks only update counters and flags of the object in user_data; all
// state transitions that issue new UCX operations happen in AdvanceAll(),
// outside UCX callbacks.
//
// Growth points (not built yet): several workers ("lanes") per agent with peers
// striped across them, a credit-based cap on outstanding requests per peer, and
// an optional progress thread (would need UCS_THREAD_MODE_SERIALIZED or
// a worker per thread).
#include "shardwire/agent.h"

#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <list>
#include <map>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "shardwire/metadata_blob.h"
#include "transport/ucx_raii.h"

namespace shardwire {

using transport::Endpoint;
using transport::MemHandle;
using transport::Rkey;
using transport::RkeyBuffer;
using transport::UcpConfig;
using transport::UcpContext;
using transport::UcpWorker;
using transport::UcsError;
using transport::WorkerAddress;

namespace {

// Active-message id of notifications. Wire payload of such a message:
//   u8 format (1), u16 little-endian sender-name length, name bytes, user payload.
constexpr unsigned kNotifyAmId = 17;
constexpr std::uint8_t kNotifyFormat = 1;
constexpr std::size_t kNotifyPrefix = 3;
// Upper bound on consecutive ucp_worker_progress calls in one Progress().
constexpr int kMaxProgressSpins = 256;
// Longest single sleep on the event fd (seconds): bounds the latency of
// deadline checks and of UCX keepalive rounds, which run inside progress.
constexpr double kMaxSleepSliceS = 0.1;
// WaitFor's backoff while ucp_worker_arm reports UCS_ERR_BUSY without progress.
constexpr int kBusySpins = 16;
constexpr std::chrono::microseconds kMinBackoff{20};
constexpr std::chrono::microseconds kMaxBackoff{1000};
// How often same-host peers' processes are checked (see CheckLiveness).
constexpr std::chrono::milliseconds kLivenessPeriod{100};

using Clock = std::chrono::steady_clock;

Clock::time_point DeadlineAfter(double seconds) {
  // Clamp far-future deadlines so the addition cannot overflow.
  const double s = std::min(seconds, 1e9);
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
  const std::size_t name_len =
      static_cast<std::size_t>(data[1]) | (static_cast<std::size_t>(data[2]) << 8);
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
  // After ") " come fields 3..; starttime is field 22, i.e. the 20th from here.
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

}  // namespace

struct Agent::Impl {
  // ---- types -------------------------------------------------------------
  struct LocalRegion {
    RegionId id = 0;
    std::byte* base = nullptr;
    std::size_t length = 0;
    bool arena = false;
    MemHandle memh;
    std::vector<std::byte> packed_rkey;
    std::uint32_t pins = 0;  // prepared transfers using this region
  };

  struct RemoteRegion {
    std::uint64_t base = 0;
    std::uint64_t length = 0;
    Rkey rkey;
  };

  // The error-callback argument of one endpoint. Owned by the Impl (never freed
  // before the worker), so a late callback never reads freed memory.
  struct EpContext {
    Impl* impl = nullptr;
    std::uint64_t peer_serial = 0;
  };

  struct Peer {
    std::string name;
    std::uint64_t serial = 0;  // unique per import; transfers remember it
    ProcessIdentity process;
    bool liveness_checked = false;  // UCP_ERR_HANDLING_MODE_NONE + ProcessGone()
    Endpoint ep;
    std::unordered_map<RegionId, RemoteRegion> regions;  // destroyed before ep
    bool failed = false;
    Status failure;
  };

  struct PreparedOp {
    void* local = nullptr;
    std::uint64_t remote_addr = 0;
    std::size_t length = 0;
    ucp_rkey_h rkey = nullptr;
    ucp_mem_h memh = nullptr;
  };

  enum class State { kIdle, kRma, kNotify, kDone, kFailed };

  struct Transfer {
    std::uint64_t id = 0;
    TransferOp op = TransferOp::kWrite;
    std::string peer;
    std::uint64_t peer_serial = 0;
    std::vector<PreparedOp> ops;
    std::vector<RegionId> pinned;                      // one entry per pin taken
    std::optional<std::vector<std::byte>> notify_wire;  // encoded once, at prepare
    // Execution state of the latest post.
    State state = State::kIdle;
    std::size_t pending = 0;  // outstanding UCX requests (rma, flush, am)
    bool flush_done = false;
    bool am_done = false;
    Status error;
    std::uint64_t posts = 0;

    void Fail(Status s) {
      if (state != State::kFailed) {
        state = State::kFailed;
        error = std::move(s);
      }
    }
  };

  struct PendingSend {
    std::vector<std::byte> wire;
    std::uint64_t peer_serial = 0;
    bool done = false;
  };

  struct RndvRecv {
    std::vector<std::byte> buffer;
    bool done = false;
    ucs_status_t status = UCS_OK;
  };

  // ---- members (declaration order = safe implicit destruction order reversed;
  // the destructor still tears down explicitly) ------------------------------
  AgentOptions options;
  ProcessIdentity self;
  Clock::time_point next_liveness_check{};
  UcpContext context;
  UcpWorker worker;
  int efd = -1;
  WorkerAddress address;
  std::map<RegionId, LocalRegion> regions;
  RegionId next_region = 1;
  std::deque<std::unique_ptr<EpContext>> ep_contexts;
  std::unordered_map<std::string, std::unique_ptr<Peer>> peers;
  std::uint64_t next_peer_serial = 1;
  std::unordered_map<std::uint64_t, std::unique_ptr<Transfer>> transfers;
  std::unordered_set<Transfer*> active;
  std::vector<std::unique_ptr<Transfer>> abandoned;  // released with requests stuck
  std::uint64_t next_transfer = 1;
  std::list<PendingSend> sends;
  std::list<RndvRecv> rndv_recvs;
  std::deque<Notification> notifications;
  std::deque<Status> unreported_failures;
  bool shutting_down = false;

  ~Impl() { Shutdown(); }

  // ---- UCX callbacks (run inside ucp_worker_progress) ----------------------
  static void OnRmaDone(void* request, ucs_status_t status, void* user_data) {
    auto* t = static_cast<Transfer*>(user_data);
    --t->pending;
    if (status != UCS_OK) t->Fail(UcsError(t->op == TransferOp::kWrite ? "ucp_put_nbx" : "ucp_get_nbx", status));
    ucp_request_free(request);
  }
  static void OnFlushDone(void* request, ucs_status_t status, void* user_data) {
    auto* t = static_cast<Transfer*>(user_data);
    --t->pending;
    t->flush_done = true;
    if (status != UCS_OK) t->Fail(UcsError("ucp_ep_flush_nbx", status));
    ucp_request_free(request);
  }
  static void OnAmSendDone(void* request, ucs_status_t status, void* user_data) {
    auto* t = static_cast<Transfer*>(user_data);
    --t->pending;
    t->am_done = true;
    if (status != UCS_OK) t->Fail(UcsError("ucp_am_send_nbx", status));
    ucp_request_free(request);
  }
  static void OnMessageSent(void* request, ucs_status_t status, void* user_data) {
    auto* s = static_cast<PendingSend*>(user_data);
    s->done = true;
    if (status != UCS_OK) spdlog::debug("shardwire agent: standalone notification failed: {}", ucs_status_string(status));
    ucp_request_free(request);
  }
  static void OnRndvRecvDone(void* request, ucs_status_t status, std::size_t /*length*/, void* user_data) {
    auto* r = static_cast<RndvRecv*>(user_data);
    r->done = true;
    r->status = status;
    ucp_request_free(request);
  }
  static void OnEpError(void* arg, ucp_ep_h /*ep*/, ucs_status_t status) {
    auto* c = static_cast<EpContext*>(arg);
    c->impl->MarkPeerFailed(c->peer_serial, status);
  }
  static ucs_status_t OnNotification(void* arg, const void* /*header*/, std::size_t /*header_length*/, void* data,
                                     std::size_t length, const ucp_am_recv_param_t* param) {
    auto* impl = static_cast<Impl*>(arg);
    if ((param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0) {
      // Large message sent with the rendezvous protocol: fetch it into our own
      // buffer (ucp_am_recv_data_nbx); decoded once complete.
      RndvRecv& r = impl->rndv_recvs.emplace_back();
      r.buffer.resize(length);
      ucp_request_param_t p{};
      p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
      p.cb.recv_am = &Impl::OnRndvRecvDone;
      p.user_data = &r;
      ucs_status_ptr_t req = ucp_am_recv_data_nbx(impl->worker.get(), data, r.buffer.data(), length, &p);
      if (req == nullptr) {
        r.done = true;
      } else if (UCS_PTR_IS_ERR(req)) {
        r.done = true;
        r.status = UCS_PTR_STATUS(req);
      }
      return UCS_INPROGRESS;
    }
    impl->EnqueueNotification(static_cast<const std::byte*>(data), length);
    return UCS_OK;
  }

  void EnqueueNotification(const std::byte* data, std::size_t length) {
    if (auto n = DecodeNotification(data, length)) {
      notifications.push_back(std::move(*n));
    } else {
      spdlog::warn("shardwire agent {}: dropped a malformed notification of {} bytes", options.name, length);
    }
  }

  void MarkPeerFailed(std::uint64_t serial, ucs_status_t status) {
    if (shutting_down) return;
    for (auto& [name, peer] : peers) {
      if (peer->serial == serial) {
        MarkPeerFailed(*peer, fmt::format("UCX endpoint error: {}", ucs_status_string(status)));
        return;
      }
    }
  }

  void MarkPeerFailed(Peer& peer, const std::string& why) {
    if (peer.failed) return;
    peer.failed = true;
    peer.failure = PeerDisconnected(fmt::format("peer {} disconnected: {}", peer.name, why));
    spdlog::debug("shardwire agent {}: {}", options.name, peer.failure.message());
    FailTransfersOf(peer.serial, peer.failure);
    unreported_failures.push_back(peer.failure);
  }

  // Same-host peers without UCX failure detection: is the process still there?
  // Rate-limited to one /proc read per peer per kLivenessPeriod.
  void CheckLiveness() {
    const auto now = Clock::now();
    if (now < next_liveness_check) return;
    next_liveness_check = now + kLivenessPeriod;
    for (auto& [name, peer] : peers) {
      if (!peer->liveness_checked || peer->failed) continue;
      std::string gone = ProcessGone(peer->process);
      if (!gone.empty()) MarkPeerFailed(*peer, gone);
    }
  }

  // A failed peer's endpoint is force-closed (ucp_ep_close_nbx with
  // UCP_EP_CLOSE_FLAG_FORCE, as ucp.h asks after an error) and its rkeys are
  // destroyed. Runs outside UCX callbacks. See TeardownPeer for why the rkeys
  // may go even if requests are still counted as outstanding.
  void ReapFailedPeers() {
    for (auto& [name, peer] : peers) {
      if (!peer->failed || !peer->ep) continue;
      CloseForced(*peer);
    }
  }

  void CloseForced(Peer& peer) {
    if (!peer.ep.Close(/*force=*/true, Endpoint::kDefaultCloseTimeoutS))
      spdlog::warn("shardwire agent {}: force-closing endpoint to {} did not finish", options.name, peer.name);
    // Let cancellations (UCS_ERR_CANCELED completions) run, briefly.
    const auto deadline = Clock::now() + std::chrono::milliseconds(50);
    while (PeerBusy(peer.serial) && Clock::now() < deadline) {
      if (ucp_worker_progress(worker.get()) == 0) std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    peer.regions.clear();
  }

  void FailTransfersOf(std::uint64_t serial, const Status& why) {
    for (Transfer* t : active) {
      if (t->peer_serial == serial) t->Fail(why);
    }
  }

  // ---- progress ------------------------------------------------------------
  // Returns how many events ucp_worker_progress reported.
  unsigned ProgressAll() {
    unsigned events = 0;
    for (int i = 0; i < kMaxProgressSpins; ++i) {
      const unsigned n = ucp_worker_progress(worker.get());
      if (n == 0) break;
      events += n;
    }
    CheckLiveness();
    ReapFailedPeers();
    AdvanceAll();
    sends.remove_if([](const PendingSend& s) { return s.done; });
    for (auto it = rndv_recvs.begin(); it != rndv_recvs.end();) {
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
      it = rndv_recvs.erase(it);
    }
    return events;
  }

  void AdvanceAll() {
    if (active.empty()) return;
    std::vector<Transfer*> snapshot(active.begin(), active.end());
    for (Transfer* t : snapshot) {
      Advance(*t);
      const bool settled = t->state == State::kDone || t->state == State::kIdle ||
                           (t->state == State::kFailed && t->pending == 0);
      if (settled) active.erase(t);
    }
  }

  void Advance(Transfer& t) {
    if (t.state == State::kRma && t.pending == 0 && t.flush_done) {
      if (!t.notify_wire) {
        t.state = State::kDone;
        return;
      }
      Peer* peer = FindPeer(t.peer, t.peer_serial);
      if (peer == nullptr) {
        t.Fail(PeerDisconnected(fmt::format("peer {} was invalidated before the notification was sent", t.peer)));
        return;
      }
      t.state = State::kNotify;
      t.am_done = false;
      ucp_request_param_t p{};
      p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
      p.flags = UCP_AM_SEND_FLAG_EAGER;
      p.cb.send = &Impl::OnAmSendDone;
      p.user_data = &t;
      ucs_status_ptr_t req =
          ucp_am_send_nbx(peer->ep.get(), kNotifyAmId, nullptr, 0, t.notify_wire->data(), t.notify_wire->size(), &p);
      if (req == nullptr) {
        t.am_done = true;
      } else if (UCS_PTR_IS_ERR(req)) {
        t.Fail(UcsError("ucp_am_send_nbx", UCS_PTR_STATUS(req)));
        return;
      } else {
        ++t.pending;
      }
    }
    if (t.state == State::kNotify && t.pending == 0 && t.am_done) t.state = State::kDone;
  }

  // Progresses and sleeps on the event fd until `done` yields a status or the
  // deadline passes. The canonical UCP wake-up loop (ucp.h, ucp_worker_arm):
  // progress until idle, check, arm, poll. ucp_worker_arm keeps answering
  // UCS_ERR_BUSY while sends are queued on a transport (e.g. a shared-memory
  // FIFO the peer does not drain), which would turn that loop into a spin; so
  // after kBusySpins fruitless rounds the loop sleeps with exponential backoff
  // (kMinBackoff doubling up to kMaxBackoff) instead, resetting on progress.
  template <typename Done>
  Status WaitFor(double timeout_s, std::string_view what, Done&& done) {
    SW_RETURN_IF_ERROR(CheckTimeout(timeout_s, what));
    const auto deadline = DeadlineAfter(std::max(0.0, timeout_s));
    int idle_busy_rounds = 0;
    for (;;) {
      const unsigned events = ProgressAll();
      if (std::optional<Status> s = done()) return *s;
      const auto now = Clock::now();
      if (now >= deadline) return TimedOut(fmt::format("{}: no completion within {} s", what, timeout_s));
      if (events != 0) idle_busy_rounds = 0;
      const ucs_status_t armed = ucp_worker_arm(worker.get());
      if (armed == UCS_ERR_BUSY) {
        if (events == 0 && ++idle_busy_rounds > kBusySpins) {
          const int shift = std::min(idle_busy_rounds - kBusySpins - 1, 16);
          const auto backoff = std::min<Clock::duration>(kMaxBackoff, kMinBackoff * (1 << shift));
          std::this_thread::sleep_for(std::min<Clock::duration>(backoff, deadline - now));
        }
        continue;
      }
      if (armed != UCS_OK) return UcsError("ucp_worker_arm", armed);
      const double left = std::chrono::duration<double>(deadline - now).count();
      const int ms = static_cast<int>(std::ceil(std::min(left, kMaxSleepSliceS) * 1000.0));
      pollfd pfd{efd, POLLIN, 0};
      if (poll(&pfd, 1, std::max(ms, 1)) < 0 && errno != EINTR)
        return IoError(fmt::format("{}: poll on the UCX event fd failed: {}", what, std::strerror(errno)));
    }
  }

  // ---- lookups -------------------------------------------------------------
  Peer* FindPeer(const std::string& name, std::uint64_t serial) {
    auto it = peers.find(name);
    if (it == peers.end() || it->second->serial != serial) return nullptr;
    return it->second.get();
  }

  Result<Transfer*> FindTransfer(TransferHandle h) {
    auto it = transfers.find(h.id);
    if (it == transfers.end()) return NotFound(fmt::format("transfer handle {} is not known to agent {}", h.id, options.name));
    return it->second.get();
  }

  bool PeerBusy(std::uint64_t serial) const {
    for (const auto& [id, t] : transfers) {
      if (t->peer_serial == serial && t->pending > 0) return true;
    }
    for (const PendingSend& s : sends) {
      if (s.peer_serial == serial && !s.done) return true;
    }
    return false;
  }

  // Closes a peer's endpoint and destroys its rkeys. With nothing outstanding,
  // rkeys go first and the endpoint is closed with a flush (ucp_rkey_destroy:
  // "after all outstanding operations ... are flushed, and before the endpoint
  // ... is destroyed"). Otherwise (invalidation, failure) the endpoint is
  // force-closed first: UCX discards its lanes and completes queued requests
  // with UCS_ERR_CANCELED. On a UCP_ERR_HANDLING_MODE_NONE endpoint UCX 1.13.1
  // does not complete requests that were already handed to the transport and
  // wait for a reply from the peer (observed: a flush waiting for emulated-put
  // acknowledgements). Such requests no longer use the rkey, so the rkeys are
  // destroyed anyway, and the transfers are abandoned on Release (kept
  // allocated until the worker is destroyed). A WRITE's local bytes were
  // already copied out; a READ's reply could still arrive from a live peer
  // that was merely invalidated, so an abandoned READ keeps its local regions
  // pinned (Deregister refuses them) for the Agent's lifetime.
  void TeardownPeer(std::unique_ptr<Peer> peer, bool force) {
    const double bound = std::max(0.0, options.connect_timeout_s);
    if (!force && !peer->failed && !PeerBusy(peer->serial)) {
      peer->regions.clear();
      if (!peer->ep.Close(/*force=*/false, bound))
        spdlog::warn("shardwire agent {}: closing endpoint to {} did not finish within {} s", options.name,
                     peer->name, bound);
      return;
    }
    CloseForced(*peer);
    AdvanceAll();
  }

  void Shutdown() {
    if (!worker) return;
    for (Transfer* t : active) t->Fail(PeerDisconnected("agent is shutting down"));
    shutting_down = true;
    for (auto& [name, peer] : peers) {
      if (!PeerBusy(peer->serial)) peer->regions.clear();
      peer->ep.Close(/*force=*/true, Endpoint::kDefaultCloseTimeoutS);
    }
    // Bounded: requests stuck on a dead peer's NONE-mode endpoint never finish.
    const auto deadline = Clock::now() + std::chrono::milliseconds(100);
    auto busy = [&] {
      for (const auto& [id, t] : transfers)
        if (t->pending > 0) return true;
      for (const PendingSend& s : sends)
        if (!s.done) return true;
      return false;
    };
    while (busy() && Clock::now() < deadline) {
      if (ucp_worker_progress(worker.get()) == 0) std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    peers.clear();          // rkeys (endpoints already closed)
    address = WorkerAddress();
    worker.reset();         // may complete leftover requests; their targets are still alive
    transfers.clear();
    abandoned.clear();
    active.clear();
    sends.clear();
    rndv_recvs.clear();
    regions.clear();        // ucp_mem_unmap needs the context
    ep_contexts.clear();
    context.reset();
  }

};

// ---- public API -------------------------------------------------------------

Agent::Agent(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Agent::~Agent() = default;

const std::string& Agent::name() const { return impl_->options.name; }

Result<std::unique_ptr<Agent>> Agent::Create(AgentOptions options) {
  if (options.name.empty()) return InvalidArgument("Agent::Create: name is empty");
  if (options.name.size() > 0xFFFF)
    return InvalidArgument(fmt::format("Agent::Create: name is {} bytes, at most 65535", options.name.size()));
  if (!(options.connect_timeout_s >= 0))
    return InvalidArgument(fmt::format("Agent::Create: connect_timeout_s {} is negative or NaN", options.connect_timeout_s));
  if (!(options.keepalive_interval_s >= 0))
    return InvalidArgument(
        fmt::format("Agent::Create: keepalive_interval_s {} is negative or NaN", options.keepalive_interval_s));

  auto impl = std::make_unique<Impl>();
  impl->options = std::move(options);
  impl->self = SelfIdentity();
  const std::string& name = impl->options.name;

  ucp_config_t* raw_config = nullptr;
  ucs_status_t st = ucp_config_read(nullptr, nullptr, &raw_config);
  if (st != UCS_OK) return UcsError("ucp_config_read", st).WithContext("Agent::Create " + name);
  UcpConfig config(raw_config);
  if (impl->options.keepalive_interval_s > 0 && std::getenv("UCX_KEEPALIVE_INTERVAL") == nullptr) {
    const auto ms = std::max<long long>(1, std::llround(impl->options.keepalive_interval_s * 1000.0));
    st = ucp_config_modify(config.get(), "KEEPALIVE_INTERVAL", fmt::format("{}ms", ms).c_str());
    if (st != UCS_OK) return UcsError("ucp_config_modify(KEEPALIVE_INTERVAL)", st).WithContext("Agent::Create " + name);
  }

  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_NAME;
  params.features = UCP_FEATURE_RMA | UCP_FEATURE_AM | UCP_FEATURE_WAKEUP;
  params.name = name.c_str();
  ucp_context_h raw_context = nullptr;
  st = ucp_init(&params, config.get(), &raw_context);
  if (st != UCS_OK) return UcsError("ucp_init", st).WithContext("Agent::Create " + name);
  impl->context.reset(raw_context);

  ucp_worker_params_t wparams{};
  wparams.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  wparams.thread_mode = UCS_THREAD_MODE_SINGLE;
  ucp_worker_h raw_worker = nullptr;
  st = ucp_worker_create(impl->context.get(), &wparams, &raw_worker);
  if (st != UCS_OK) return UcsError("ucp_worker_create", st).WithContext("Agent::Create " + name);
  impl->worker.reset(raw_worker);

  st = ucp_worker_get_efd(raw_worker, &impl->efd);
  if (st != UCS_OK) return UcsError("ucp_worker_get_efd", st).WithContext("Agent::Create " + name);

  ucp_address_t* raw_address = nullptr;
  std::size_t address_length = 0;
  st = ucp_worker_get_address(raw_worker, &raw_address, &address_length);
  if (st != UCS_OK) return UcsError("ucp_worker_get_address", st).WithContext("Agent::Create " + name);
  impl->address = WorkerAddress(raw_worker, raw_address, address_length);

  ucp_am_handler_param_t am{};
  am.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB | UCP_AM_HANDLER_PARAM_FIELD_ARG |
                  UCP_AM_HANDLER_PARAM_FIELD_FLAGS;
  am.id = kNotifyAmId;
  am.flags = UCP_AM_FLAG_WHOLE_MSG;
  am.cb = &Impl::OnNotification;
  am.arg = impl.get();
  st = ucp_worker_set_am_recv_handler(raw_worker, &am);
  if (st != UCS_OK) return UcsError("ucp_worker_set_am_recv_handler", st).WithContext("Agent::Create " + name);

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
  r.id = impl_->next_region++;
  r.base = static_cast<std::byte*>(addr);
  r.length = length;
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
  r.id = impl_->next_region++;
  r.base = static_cast<std::byte*>(attr.address);
  r.length = length;
  r.arena = true;
  const RegionId id = r.id;
  impl_->regions.emplace(id, std::move(r));
  return id;
}

std::span<std::byte> Agent::RegionBytes(RegionId id) const {
  auto it = impl_->regions.find(id);
  if (it == impl_->regions.end()) return {};
  return {it->second.base, it->second.length};
}

Status Agent::Deregister(RegionId id) {
  auto it = impl_->regions.find(id);
  if (it == impl_->regions.end()) return NotFound(fmt::format("Deregister: region {} is not registered", id));
  if (it->second.pins > 0)
    return InvalidArgument(fmt::format("Deregister: region {} is used by {} prepared transfer(s); Release them first",
                                       id, it->second.pins));
  impl_->regions.erase(it);
  return Status::Ok();
}

Result<std::vector<std::byte>> Agent::ExportMetadata() const {
  AgentMetadata m;
  m.name = impl_->options.name;
  const auto* a = static_cast<const std::byte*>(impl_->address.data());
  m.worker_address.assign(a, a + impl_->address.size());
  m.process = impl_->self;
  m.regions.reserve(impl_->regions.size());
  for (const auto& [id, r] : impl_->regions) {
    m.regions.push_back(RegionRecord{id, reinterpret_cast<std::uint64_t>(r.base), r.length, r.packed_rkey});
  }
  return EncodeAgentMetadata(m);
}

Result<std::string> Agent::ImportMetadata(std::span<const std::byte> blob) {
  SW_ASSIGN_OR_RETURN(AgentMetadata m, DecodeAgentMetadata(blob));
  Impl& im = *impl_;
  auto existing = im.peers.find(m.name);
  if (existing != im.peers.end() && !existing->second->failed && im.PeerBusy(existing->second->serial))
    return InvalidArgument(fmt::format(
        "ImportMetadata: peer {} still has transfers in flight; Wait for them or InvalidatePeer first", m.name));

  auto peer = std::make_unique<Impl::Peer>();
  peer->name = m.name;
  peer->serial = im.next_peer_serial++;
  peer->process = m.process;
  peer->liveness_checked = im.options.failure_detection == PeerFailureDetection::kAuto &&
                           !m.process.host.empty() && m.process.host == im.self.host && m.process.pid != 0;
  auto& ctx = im.ep_contexts.emplace_back(std::make_unique<Impl::EpContext>());
  ctx->impl = &im;
  ctx->peer_serial = peer->serial;

  ucp_ep_params_t ep{};
  ep.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
  ep.address = reinterpret_cast<const ucp_address_t*>(m.worker_address.data());
  if (peer->liveness_checked) {
    ep.err_mode = UCP_ERR_HANDLING_MODE_NONE;
  } else {
    ep.field_mask |= UCP_EP_PARAM_FIELD_ERR_HANDLER;
    ep.err_mode = UCP_ERR_HANDLING_MODE_PEER;
    ep.err_handler.cb = &Impl::OnEpError;
    ep.err_handler.arg = ctx.get();
  }
  ucp_ep_h raw_ep = nullptr;
  ucs_status_t st = ucp_ep_create(im.worker.get(), &ep, &raw_ep);
  if (st != UCS_OK) return UcsError("ucp_ep_create", st).WithContext("ImportMetadata of peer " + m.name);
  peer->ep = Endpoint(im.worker.get(), raw_ep);

  for (const RegionRecord& r : m.regions) {
    ucp_rkey_h raw_rkey = nullptr;
    st = ucp_ep_rkey_unpack(raw_ep, r.packed_rkey.data(), &raw_rkey);
    if (st != UCS_OK) {
      peer->regions.clear();
      peer->ep.Close(/*force=*/true, Endpoint::kDefaultCloseTimeoutS);
      return UcsError(fmt::format("ucp_ep_rkey_unpack of region {}", r.id), st)
          .WithContext("ImportMetadata of peer " + m.name);
    }
    Impl::RemoteRegion rr;
    rr.base = r.base;
    rr.length = r.length;
    rr.rkey.reset(raw_rkey);
    peer->regions.emplace(r.id, std::move(rr));
  }

  if (existing != im.peers.end()) {
    std::unique_ptr<Impl::Peer> old = std::move(existing->second);
    existing->second = std::move(peer);
    im.FailTransfersOf(old->serial, PeerDisconnected("peer " + m.name + " was re-imported"));
    const bool force = old->failed;
    im.TeardownPeer(std::move(old), force);
  } else {
    im.peers.emplace(m.name, std::move(peer));
  }
  return m.name;
}

Status Agent::InvalidatePeer(const std::string& peer) {
  Impl& im = *impl_;
  auto it = im.peers.find(peer);
  if (it == im.peers.end()) return NotFound(fmt::format("InvalidatePeer: peer {} is not imported", peer));
  std::unique_ptr<Impl::Peer> p = std::move(it->second);
  im.peers.erase(it);
  im.FailTransfersOf(p->serial, PeerDisconnected("peer " + peer + " was invalidated"));
  im.TeardownPeer(std::move(p), /*force=*/true);
  return Status::Ok();
}

Result<TransferHandle> Agent::PrepareTransfer(TransferOp op, const std::string& peer_name,
                                              std::vector<TransferDescriptor> descriptors,
                                              std::optional<std::vector<std::byte>> notification_payload) {
  Impl& im = *impl_;
  auto pit = im.peers.find(peer_name);
  if (pit == im.peers.end()) return NotFound(fmt::format("PrepareTransfer: peer {} is not imported", peer_name));
  Impl::Peer& peer = *pit->second;
  if (peer.failed) return peer.failure.WithContext("PrepareTransfer");

  auto t = std::make_unique<Impl::Transfer>();
  t->op = op;
  t->peer = peer_name;
  t->peer_serial = peer.serial;
  t->ops.reserve(descriptors.size());
  std::map<RegionId, std::uint32_t> pins;
  for (std::size_t i = 0; i < descriptors.size(); ++i) {
    const TransferDescriptor& d = descriptors[i];
    auto lit = im.regions.find(d.local_region);
    if (lit == im.regions.end())
      return InvalidArgument(fmt::format("PrepareTransfer: descriptor {}: local region {} is not registered", i,
                                         d.local_region));
    const Impl::LocalRegion& lr = lit->second;
    if (d.local_offset > lr.length || d.length > lr.length - d.local_offset)
      return InvalidArgument(fmt::format(
          "PrepareTransfer: descriptor {}: local range [{}, {}+{}) exceeds region {} of {} bytes", i,
          d.local_offset, d.local_offset, d.length, d.local_region, lr.length));
    auto rit = peer.regions.find(d.remote_region);
    if (rit == peer.regions.end())
      return InvalidArgument(fmt::format("PrepareTransfer: descriptor {}: peer {} has no region {}", i, peer_name,
                                         d.remote_region));
    const Impl::RemoteRegion& rr = rit->second;
    if (d.remote_offset > rr.length || d.length > rr.length - d.remote_offset)
      return InvalidArgument(fmt::format(
          "PrepareTransfer: descriptor {}: remote range [{}, {}+{}) exceeds region {} of peer {} ({} bytes)", i,
          d.remote_offset, d.remote_offset, d.length, d.remote_region, peer_name, rr.length));
    ++pins[d.local_region];
    if (d.length == 0) continue;
    Impl::PreparedOp o;
    o.local = lr.base + d.local_offset;
    o.remote_addr = rr.base + d.remote_offset;
    o.length = static_cast<std::size_t>(d.length);
    o.rkey = rr.rkey.get();
    o.memh = lr.memh.get();
    t->ops.push_back(o);
  }
  if (notification_payload) {
    if (notification_payload->size() > (std::size_t{1} << 31))
      return InvalidArgument(fmt::format("PrepareTransfer: notification payload of {} bytes exceeds 2^31",
                                         notification_payload->size()));
    t->notify_wire = EncodeNotification(im.options.name, *notification_payload);
  }
  for (const auto& [id, n] : pins) {
    im.regions.at(id).pins += n;
    t->pinned.insert(t->pinned.end(), n, id);
  }
  t->id = im.next_transfer++;
  const TransferHandle h{t->id};
  im.transfers.emplace(h.id, std::move(t));
  return h;
}

Status Agent::Post(TransferHandle handle) {
  Impl& im = *impl_;
  SW_ASSIGN_OR_RETURN(Impl::Transfer * t, im.FindTransfer(handle));
  auto pit = im.peers.find(t->peer);
  if (pit == im.peers.end() || pit->second->serial != t->peer_serial)
    return PeerDisconnected(fmt::format(
        "Post: transfer {} was prepared against an earlier import of peer {}, which is gone; prepare it again",
        handle.id, t->peer));
  Impl::Peer& peer = *pit->second;
  if (peer.failed) return peer.failure.WithContext("Post");
  if (t->state == Impl::State::kRma || t->state == Impl::State::kNotify)
    return InvalidArgument(fmt::format("Post: transfer {} is still in flight; Wait for it first", handle.id));
  if (t->pending > 0)
    return InvalidArgument(fmt::format("Post: transfer {} failed and its requests are still draining", handle.id));

  t->state = Impl::State::kRma;
  t->error = Status::Ok();
  t->flush_done = false;
  t->am_done = false;
  ++t->posts;
  im.active.insert(t);
  ucp_ep_h ep = peer.ep.get();
  ucp_request_param_t p{};
  p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_MEMH;
  p.cb.send = &Impl::OnRmaDone;
  p.user_data = t;
  const bool write = t->op == TransferOp::kWrite;
  for (const Impl::PreparedOp& o : t->ops) {
    p.memh = o.memh;
    ucs_status_ptr_t req = write ? ucp_put_nbx(ep, o.local, o.length, o.remote_addr, o.rkey, &p)
                                 : ucp_get_nbx(ep, o.local, o.length, o.remote_addr, o.rkey, &p);
    if (UCS_PTR_IS_ERR(req)) {
      t->Fail(UcsError(write ? "ucp_put_nbx" : "ucp_get_nbx", UCS_PTR_STATUS(req)).WithContext("Post to " + t->peer));
      break;
    }
    if (req != nullptr) ++t->pending;
  }
  if (t->state == Impl::State::kRma) {
    ucp_request_param_t fp{};
    fp.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
    fp.cb.send = &Impl::OnFlushDone;
    fp.user_data = t;
    ucs_status_ptr_t req = ucp_ep_flush_nbx(ep, &fp);
    if (req == nullptr) {
      t->flush_done = true;
    } else if (UCS_PTR_IS_ERR(req)) {
      t->Fail(UcsError("ucp_ep_flush_nbx", UCS_PTR_STATUS(req)).WithContext("Post to " + t->peer));
    } else {
      ++t->pending;
    }
  }
  im.AdvanceAll();
  if (t->state == Impl::State::kFailed) return t->error;
  return Status::Ok();
}

Result<bool> Agent::Test(TransferHandle handle) {
  Impl& im = *impl_;
  SW_ASSIGN_OR_RETURN(Impl::Transfer * t, im.FindTransfer(handle));
  if (t->state == Impl::State::kIdle)
    return InvalidArgument(fmt::format("Test: transfer {} was never posted", handle.id));
  im.ProgressAll();
  switch (t->state) {
    case Impl::State::kDone: return true;
    case Impl::State::kFailed: return t->error;
    default: return false;
  }
}

Status Agent::Wait(TransferHandle handle, double timeout_s) {
  Impl& im = *impl_;
  SW_ASSIGN_OR_RETURN(Impl::Transfer * t, im.FindTransfer(handle));
  if (t->state == Impl::State::kIdle)
    return InvalidArgument(fmt::format("Wait: transfer {} was never posted", handle.id));
  const std::string what = fmt::format("Wait for transfer {} to {}", handle.id, t->peer);
  return im.WaitFor(timeout_s, what, [t]() -> std::optional<Status> {
    if (t->state == Impl::State::kDone) return Status::Ok();
    if (t->state == Impl::State::kFailed) return t->error;
    return std::nullopt;
  });
}

Status Agent::Release(TransferHandle handle) {
  Impl& im = *impl_;
  SW_ASSIGN_OR_RETURN(Impl::Transfer * t, im.FindTransfer(handle));
  im.ProgressAll();
  const bool busy = t->pending > 0 || t->state == Impl::State::kRma || t->state == Impl::State::kNotify;
  // The endpoint is gone (peer invalidated, re-imported, or failed and
  // force-closed): requests still counted can never touch this transfer's
  // buffers again (see TeardownPeer), so the transfer may be abandoned.
  const Impl::Peer* peer = im.FindPeer(t->peer, t->peer_serial);
  const bool endpoint_gone = peer == nullptr || !peer->ep;
  if (busy && !endpoint_gone)
    return InvalidArgument(
        fmt::format("Release: transfer {} is in flight; Wait for it or InvalidatePeer({}) first", handle.id, t->peer));
  const bool keep_pins = busy && t->op == TransferOp::kRead;  // see TeardownPeer
  for (RegionId id : t->pinned) {
    auto it = im.regions.find(id);
    if (!keep_pins && it != im.regions.end() && it->second.pins > 0) --it->second.pins;
  }
  im.active.erase(t);
  auto node = im.transfers.extract(handle.id);
  if (busy) im.abandoned.push_back(std::move(node.mapped()));
  return Status::Ok();
}

Status Agent::SendMessage(const std::string& peer_name, std::span<const std::byte> payload) {
  Impl& im = *impl_;
  auto pit = im.peers.find(peer_name);
  if (pit == im.peers.end()) return NotFound(fmt::format("SendMessage: peer {} is not imported", peer_name));
  Impl::Peer& peer = *pit->second;
  if (peer.failed) return peer.failure.WithContext("SendMessage");
  if (payload.size() > (std::size_t{1} << 31))
    return InvalidArgument(fmt::format("SendMessage: payload of {} bytes exceeds 2^31", payload.size()));
  Impl::PendingSend& s = im.sends.emplace_back();
  s.wire = EncodeNotification(im.options.name, payload);
  s.peer_serial = peer.serial;
  ucp_request_param_t p{};
  p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
  p.flags = UCP_AM_SEND_FLAG_EAGER;
  p.cb.send = &Impl::OnMessageSent;
  p.user_data = &s;
  ucs_status_ptr_t req = ucp_am_send_nbx(peer.ep.get(), kNotifyAmId, nullptr, 0, s.wire.data(), s.wire.size(), &p);
  if (req == nullptr) {
    s.done = true;
  } else if (UCS_PTR_IS_ERR(req)) {
    s.done = true;
    return UcsError("ucp_am_send_nbx", UCS_PTR_STATUS(req)).WithContext("SendMessage to " + peer_name);
  }
  return Status::Ok();
}

Result<Notification> Agent::WaitNotification(double timeout_s) {
  Impl& im = *impl_;
  Status s = im.WaitFor(timeout_s, "WaitNotification", [&]() -> std::optional<Status> {
    if (!im.notifications.empty()) return Status::Ok();
    if (!im.unreported_failures.empty()) {
      Status f = std::move(im.unreported_failures.front());
      im.unreported_failures.pop_front();
      return f;
    }
    return std::nullopt;
  });
  if (!s.ok()) return s.WithContext("WaitNotification");
  Notification n = std::move(im.notifications.front());
  im.notifications.pop_front();
  return n;
}

std::vector<Notification> Agent::TakeNotifications() {
  Impl& im = *impl_;
  im.ProgressAll();
  std::vector<Notification> out(std::make_move_iterator(im.notifications.begin()),
                                std::make_move_iterator(im.notifications.end()));
  im.notifications.clear();
  return out;
}

void Agent::Progress() { impl_->ProgressAll(); }

std::vector<std::string> Agent::FailedPeers() const {
  std::vector<std::string> out;
  for (const auto& [name, p] : impl_->peers)
    if (p->failed) out.push_back(name);
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace shardwire
