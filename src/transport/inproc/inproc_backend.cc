// The in-process backend (inproc_factory.h): agents of one process, ops as
// memcpy between registered regions, messages queued to the peer's lane, and
// fault injection (drop, corrupt, delay, kill). Proves the backend seam
// (backend.h) with a second backend the backend-independent tests run against.
//
// State: a Node per backend instance (shared with the peers that connected to
// it, so it outlives the backend): its regions and liveness under a shared
// mutex (an op copies under the shared lock; deregistration and death take it
// exclusively), one inbox and eventfd per lane. The fabric (process-wide) maps
// node ids and agent names to live nodes.
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <shared_mutex>
#include <thread>
#include <unordered_map>
#include <utility>

#include <fmt/format.h>

#include "transport/file_descriptor.h"
#include "transport/inproc/inproc_factory.h"

namespace shardwire::transport::inproc {

namespace {

using Clock = std::chrono::steady_clock;

/// A message on its way to a lane (Progress delivers it once due).
struct Message {
  std::vector<std::byte> bytes;
  Clock::time_point due;
};

/// One lane's inbox. `mu` guards `queue`; `efd` is written after each push.
struct Inbox {
  std::mutex mu;
  std::deque<Message> queue;
  FileDescriptor efd;
};

/// The shared state of one backend instance.
struct Node {
  std::uint64_t id = 0;
  std::string name;
  std::shared_mutex mu;  // regions, alive, death
  bool alive = true;
  std::string death;
  struct Range {
    std::byte* base = nullptr;
    std::size_t length = 0;
    std::byte* owned = nullptr;  // AllocateRegion's memory (freed on release)
  };
  std::unordered_map<std::uint64_t, Range> regions;  // by region serial
  std::vector<std::unique_ptr<Inbox>> inbox;           // by lane
  std::mutex faults_mu;
  FaultPlan faults;  // guarded by faults_mu

  /// Wakes every lane of this node (its eventfds). Any thread.
  void WakeAll() const {
    for (const auto& in : inbox) {
      const std::uint64_t one = 1;
      ssize_t r = ::write(in->efd.get(), &one, sizeof(one));
      (void)r;
    }
  }
};

/// Every live node of the process.
struct Fabric {
  std::mutex mu;
  std::uint64_t next_id = 1;
  std::unordered_map<std::uint64_t, std::weak_ptr<Node>> nodes;
};

Fabric& TheFabric() {
  static Fabric* f = new Fabric();  // never destroyed: agents may outlive static destruction order
  return *f;
}

std::shared_ptr<Node> FindByName(std::string_view name) {
  Fabric& f = TheFabric();
  std::lock_guard<std::mutex> g(f.mu);
  std::shared_ptr<Node> best;
  for (auto& [id, w] : f.nodes) {
    auto n = w.lock();
    if (n && n->name == name && (!best || n->id > best->id)) best = n;
  }
  return best;
}

void PutU64(std::vector<std::byte>& out, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<std::byte>((v >> (8 * i)) & 0xFF));
}

std::optional<std::uint64_t> GetU64(std::span<const std::byte> in) {
  if (in.size() != 8) return std::nullopt;
  std::uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<std::uint64_t>(in[i]) << (8 * i);
  return v;
}

class InProcessBackend final : public TransportBackend {
 public:
  explicit InProcessBackend(const AgentOptions& options) : options_(options) {}

  Status Init() {
    node_ = std::make_shared<Node>();
    node_->name = options_.name;
    for (std::uint32_t i = 0; i < options_.lanes; ++i) {
      auto in = std::make_unique<Inbox>();
      in->efd = FileDescriptor(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
      if (!in->efd) return Internal(fmt::format("in-process backend: eventfd: {}", std::strerror(errno)));
      node_->inbox.push_back(std::move(in));
    }
    lanes_.resize(options_.lanes);
    Fabric& f = TheFabric();
    std::lock_guard<std::mutex> g(f.mu);
    node_->id = f.next_id++;
    f.nodes[node_->id] = node_;
    return Status::Ok();
  }

  ~InProcessBackend() override {
    {
      Fabric& f = TheFabric();
      std::lock_guard<std::mutex> g(f.mu);
      f.nodes.erase(node_->id);
    }
    MarkDead(*node_, "agent " + options_.name + " was destroyed");
    std::unique_lock<std::shared_mutex> w(node_->mu);
    for (auto& [serial, r] : node_->regions) std::free(r.owned);
    node_->regions.clear();
  }

  /// Declares `n` dead and wakes every live node's lanes so its peers notice at once.
  static void MarkDead(Node& n, const std::string& why) {
    {
      std::unique_lock<std::shared_mutex> w(n.mu);
      if (!n.alive) return;
      n.alive = false;
      n.death = why;
    }
    Fabric& f = TheFabric();
    std::vector<std::shared_ptr<Node>> live;
    {
      std::lock_guard<std::mutex> g(f.mu);
      for (auto& [id, wp] : f.nodes)
        if (auto p = wp.lock()) live.push_back(std::move(p));
    }
    for (auto& p : live) p->WakeAll();
  }

  std::string_view name() const override { return kInProcessBackend; }
  std::uint32_t lanes() const override { return options_.lanes; }
  void SetEvents(BackendEvents* events) override { events_ = events; }

  // ---- regions ----
  Result<BackendRegion> RegisterRegion(void* addr, std::size_t length, std::string_view /*what*/) override {
    return AddRegion(static_cast<std::byte*>(addr), length, nullptr);
  }

  Result<BackendRegion> AllocateRegion(std::size_t length) override {
    const std::size_t rounded = (length + 4095) / 4096 * 4096;
    auto* p = static_cast<std::byte*>(std::aligned_alloc(4096, rounded));
    if (p == nullptr) return Internal(fmt::format("in-process backend: aligned_alloc of {} bytes failed", length));
    std::memset(p, 0, rounded);
    return AddRegion(p, length, p);
  }

  void ReleaseRegion(void* key) override {
    std::unique_lock<std::shared_mutex> w(node_->mu);  // waits for copies in progress
    auto it = node_->regions.find(reinterpret_cast<std::uintptr_t>(key));
    if (it == node_->regions.end()) return;
    std::free(it->second.owned);
    node_->regions.erase(it);
  }

  // ---- connection ----
  std::vector<std::byte> ConnectionInfo() override {
    std::vector<std::byte> out;
    PutU64(out, node_->id);
    return out;
  }

  Result<void*> OpenPeer(const ConnectRequest& request) override {
    auto id = GetU64(request.connection);
    if (!id) return CorruptData(fmt::format("in-process section of peer {}: {} bytes, expected 8", request.peer_name,
                                            request.connection.size()));
    std::shared_ptr<Node> target;
    {
      Fabric& f = TheFabric();
      std::lock_guard<std::mutex> g(f.mu);
      auto it = f.nodes.find(*id);
      if (it != f.nodes.end()) target = it->second.lock();
    }
    if (!target)
      return PeerDisconnected(fmt::format("in-process peer {} (node {}) is not in this process any more",
                                          request.peer_name, *id));
    // Built whole, then published: lanes read peers_ (Progress, Arm) while this runs.
    auto p = std::make_unique<Peer>();
    p->target = target;
    p->token = request.peer_token;
    p->name = std::string(request.peer_name);
    for (const auto& k : request.region_keys) {
      auto serial = GetU64(k);
      if (!serial)
        return CorruptData(fmt::format("in-process section of peer {}: a region key of {} bytes, expected 8",
                                       request.peer_name, k.size()));
      p->serials.push_back(*serial);
    }
    p->links.resize(options_.lanes);
    std::lock_guard<std::mutex> g(peers_mu_);
    Peer* added = peers_.emplace_back(std::move(p)).get();
    peer_count_.store(peers_.size(), std::memory_order_release);
    return static_cast<void*>(added);
  }

  Status ConnectLane(std::uint32_t lane, void* peer, BackendLink& link) override {
    auto* p = static_cast<Peer*>(peer);
    Link& l = p->links[lane];
    l.peer = p;
    l.open = true;
    link.link = &l;
    link.mapped_delta.assign(p->serials.size(), std::nullopt);  // every op goes through PostOp
    return Status::Ok();
  }

  BackendPeer DescribePeer(void* peer) override {
    auto* p = static_cast<Peer*>(peer);
    BackendPeer d;
    d.remote_lanes = static_cast<std::uint32_t>(p->target->inbox.size());
    d.transports = {"inproc/memcpy"};
    d.reports_failures = true;
    return d;
  }

  // ---- one lane ----
  std::uint32_t PostOp(std::uint32_t lane, void* link, TransferOp op, bool /*as_message*/, const PreparedOp& o,
                       Completion* c, PostCounts& counts, Status& error) override {
    Link& lk = *static_cast<Link*>(link);
    Node& t = *lk.peer->target;
    bool corrupt = false;
    std::chrono::milliseconds delay{0};
    std::chrono::milliseconds hold{0};
    {
      std::lock_guard<std::mutex> g(node_->faults_mu);
      if (node_->faults.corrupt_ops > 0) {
        --node_->faults.corrupt_ops;
        corrupt = true;
      }
      delay = DelayTo(lk.peer->name);
      hold = std::exchange(node_->faults.hold_lane, std::chrono::milliseconds{0});
    }
    {
      std::shared_lock<std::shared_mutex> r(t.mu);
      if (!t.alive) {
        error = PeerDisconnected(fmt::format("in-process peer {} is gone: {}", lk.peer->name, t.death));
        return 0;
      }
      auto it = t.regions.find(lk.peer->serials[o.rkey_index]);
      const std::uint64_t span = o.count == 0 ? 0 : (o.count - 1) * o.remote_stride + o.length;
      if (it == t.regions.end() || o.remote_addr < reinterpret_cast<std::uintptr_t>(it->second.base) ||
          o.remote_addr + span > reinterpret_cast<std::uintptr_t>(it->second.base) + it->second.length) {
        error = TransportError(fmt::format("in-process peer {}: region index {} is no longer registered there",
                                           lk.peer->name, o.rkey_index));
        return 0;
      }
      for (std::uint64_t row = 0; row < o.count; ++row) {
        std::byte* local = o.local + row * o.local_stride;
        auto* remote = reinterpret_cast<std::byte*>(o.remote_addr + row * o.remote_stride);
        if (op == TransferOp::kRead) {
          std::memcpy(local, remote, o.length);
        } else {
          std::memcpy(remote, local, o.length);
        }
      }
      if (corrupt && o.length > 0) {
        std::byte* first = op == TransferOp::kRead ? o.local : reinterpret_cast<std::byte*>(o.remote_addr);
        *first ^= std::byte{0xFF};
      }
    }
    counts.requests += o.count;
    counts.bytes += o.bytes();
    if (!corrupt && delay.count() == 0 && hold.count() == 0) return 0;
    Deferred d;
    d.due = Clock::now() + delay;
    if (hold.count() > 0) {
      // Completes when the lane thread's hold ends (Service), not before.
      lanes_[lane].hold = std::max(lanes_[lane].hold, hold);
      d.due = Clock::time_point::max();
    }
    d.c = c;
    d.link = &lk;
    if (corrupt)
      d.error = CorruptData(fmt::format("in-process link to {}: op of {} bytes corrupted in flight (checksum "
                                        "mismatch, injected)",
                                        lk.peer->name, o.bytes()));
    lanes_[lane].deferred.push_back(std::move(d));
    return 1;
  }

  Status Flush(std::uint32_t lane, void* link, bool /*as_message*/, Completion* /*request*/, Completion* visible,
               std::uint32_t& pending) override {
    pending = 0;
    auto& q = lanes_[lane].deferred;
    Clock::time_point last{};
    bool any = false;
    for (const Deferred& d : q) {
      if (d.link == link) {
        last = std::max(last, d.due);
        any = true;
      }
    }
    if (!any) {
      visible->done(visible, nullptr);
      return Status::Ok();
    }
    Deferred d;
    d.due = last;
    d.c = visible;
    d.link = static_cast<Link*>(link);
    q.push_back(std::move(d));
    return Status::Ok();
  }

  void ForgetAck(std::uint32_t lane, Completion* visible) override {
    auto& q = lanes_[lane].deferred;
    q.erase(std::remove_if(q.begin(), q.end(), [&](const Deferred& d) { return d.c == visible; }), q.end());
  }

  Status Send(std::uint32_t lane, void* link, std::span<const std::byte> message, Completion* /*c*/,
              std::uint32_t& pending) override {
    pending = 0;
    return Deliver(lane, *static_cast<Link*>(link), {message.begin(), message.end()});
  }

  Result<bool> SendOwned(std::uint32_t lane, void* link, std::vector<std::byte> message) override {
    SW_RETURN_IF_ERROR(Deliver(lane, *static_cast<Link*>(link), std::move(message)));
    return false;
  }

  bool SendsPending(std::uint32_t /*lane*/) override { return false; }

  bool CloseLink(std::uint32_t lane, void* link, bool /*force*/, double /*timeout_s*/) override {
    if (link == nullptr) return true;
    auto* lk = static_cast<Link*>(link);
    lk->open = false;
    // Outstanding completions of the link end as errors at the next Progress.
    for (Deferred& d : lanes_[lane].deferred) {
      if (d.link == lk && d.error.ok()) {
        d.error = PeerDisconnected(fmt::format("in-process link to {} closed", lk->peer->name));
        d.due = Clock::now();
      }
    }
    return true;
  }

  void ReleaseKeys(std::uint32_t /*lane*/, void* /*link*/) override {}

  // ---- progress ----
  unsigned Progress(std::uint32_t lane) override {
    unsigned events = 0;
    const auto now = Clock::now();
    // Messages that arrived (and are due).
    std::vector<Message> ready;
    {
      Inbox& in = *node_->inbox[lane];
      std::lock_guard<std::mutex> g(in.mu);
      for (auto it = in.queue.begin(); it != in.queue.end();) {
        if (it->due <= now) {
          ready.push_back(std::move(*it));
          it = in.queue.erase(it);
        } else {
          ++it;
        }
      }
    }
    bool alive = true;
    {
      std::shared_lock<std::shared_mutex> r(node_->mu);
      alive = node_->alive;
    }
    for (const Message& m : ready) {
      if (alive) events_->OnMessage(lane, m.bytes.data(), m.bytes.size());
      ++events;
    }
    // Completions that are due, in order.
    auto& q = lanes_[lane].deferred;
    while (!q.empty()) {
      auto it = std::find_if(q.begin(), q.end(), [&](const Deferred& d) { return d.due <= now; });
      if (it == q.end()) break;
      Deferred d = std::move(*it);
      q.erase(it);
      d.c->done(d.c, d.error.ok() ? nullptr : &d.error);
      ++events;
    }
    // Peers that died.
    for (Peer* p : LanePeers(lane)) {
      if (p->reported.load()) continue;
      std::string death;
      {
        std::shared_lock<std::shared_mutex> r(p->target->mu);
        if (p->target->alive) continue;
        death = p->target->death;
      }
      if (!p->reported.exchange(true)) {
        events_->OnPeerFailed(p->token, "in-process peer " + p->name + " died: " + death);
        ++events;
      }
    }
    return events;
  }

  // Messages are delivered by Progress (with the completions that are due): there is no
  // polling rhythm that could leave one behind, and the in-process peers have no /proc check.
  unsigned DrainMessages(std::uint32_t /*lane*/) override { return 0; }

  // A held-up lane (FaultPlan::hold_lane): the lane thread (the only caller of Service; a
  // thread that runs a small post inline never calls it) sleeps under the agent's lane lock, as
  // a lane thread starved of CPU or waiting for that lock would; then the held ops (and the
  // flushes behind them) are due.
  bool Service(std::uint32_t lane) override {
    const auto hold = std::exchange(lanes_[lane].hold, std::chrono::milliseconds{0});
    if (hold.count() == 0) return false;
    std::this_thread::sleep_for(hold);
    const auto now = Clock::now();
    for (Deferred& d : lanes_[lane].deferred)
      if (d.due == Clock::time_point::max()) d.due = now;
    return true;
  }

  int EventFd(std::uint32_t lane) override { return node_->inbox[lane]->efd.get(); }

  ArmResult Arm(std::uint32_t lane, std::string& /*error*/) override {
    Inbox& in = *node_->inbox[lane];
    std::uint64_t v = 0;
    ssize_t r = ::read(in.efd.get(), &v, sizeof(v));  // reset before checking: no lost wake-up
    (void)r;
    {
      std::lock_guard<std::mutex> g(in.mu);
      if (!in.queue.empty()) return ArmResult::kBusy;  // arrived, or due later: poll
    }
    if (!lanes_[lane].deferred.empty()) return ArmResult::kBusy;
    for (Peer* p : LanePeers(lane)) {
      if (p->reported.load()) continue;
      std::shared_lock<std::shared_mutex> rl(p->target->mu);
      if (!p->target->alive) return ArmResult::kBusy;
    }
    return ArmResult::kArmed;
  }

  void StopLanes() override {
    for (auto& l : lanes_) l.deferred.clear();
  }

 private:
  struct Peer;
  struct Link {
    Peer* peer = nullptr;
    bool open = false;
  };
  struct Peer {
    std::shared_ptr<Node> target;
    std::uint64_t token = 0;
    std::string name;
    std::vector<std::uint64_t> serials;  // by region index
    std::vector<Link> links;             // by lane
    std::atomic<bool> reported{false};
  };
  /// A completion to signal at `due` (delayed ops, corrupted ops, flushes behind them).
  struct Deferred {
    Clock::time_point due;
    Completion* c = nullptr;
    Link* link = nullptr;
    Status error;
  };
  struct LaneState {
    std::deque<Deferred> deferred;
    std::chrono::milliseconds hold{0};  ///< FaultPlan::hold_lane taken by an op: the next Service sleeps it
    std::vector<Peer*> peers;  ///< this lane's copy of peers_ (LanePeers), appended as peers_ grows
  };

  Result<BackendRegion> AddRegion(std::byte* base, std::size_t length, std::byte* owned) {
    std::unique_lock<std::shared_mutex> w(node_->mu);
    const std::uint64_t serial = next_serial_++;
    node_->regions[serial] = {base, length, owned};
    BackendRegion r;
    r.base = base;
    r.length = length;
    r.key = reinterpret_cast<void*>(static_cast<std::uintptr_t>(serial));
    PutU64(r.remote_key, serial);
    return r;
  }

  /// FaultPlan::delay_to for `peer`, else FaultPlan::delay. Caller holds node_->faults_mu.
  std::chrono::milliseconds DelayTo(std::string_view peer) const {
    auto it = node_->faults.delay_to.find(peer);
    return it != node_->faults.delay_to.end() ? it->second : node_->faults.delay;
  }

  /// Queues `bytes` to the link's peer lane (faults applied), then wakes it.
  Status Deliver(std::uint32_t lane, Link& lk, std::vector<std::byte> bytes) {
    Node& t = *lk.peer->target;
    {
      std::shared_lock<std::shared_mutex> r(t.mu);
      if (!t.alive) return PeerDisconnected(fmt::format("in-process peer {} is gone: {}", lk.peer->name, t.death));
    }
    {
      std::shared_lock<std::shared_mutex> r(node_->mu);
      if (!node_->alive) return Status::Ok();  // a dead agent's messages are lost
    }
    std::chrono::milliseconds delay{0};
    {
      std::lock_guard<std::mutex> g(node_->faults_mu);
      if (node_->faults.drop_messages > 0) {
        --node_->faults.drop_messages;
        return Status::Ok();
      }
      if (node_->faults.corrupt_messages > 0 && !bytes.empty()) {
        --node_->faults.corrupt_messages;
        bytes[0] ^= std::byte{0xFF};
      }
      delay = DelayTo(lk.peer->name);
    }
    Inbox& in = *t.inbox[lane % t.inbox.size()];
    {
      std::lock_guard<std::mutex> g(in.mu);
      in.queue.push_back({std::move(bytes), Clock::now() + delay});
    }
    const std::uint64_t one = 1;
    ssize_t r = ::write(in.efd.get(), &one, sizeof(one));
    (void)r;
    return Status::Ok();
  }

  AgentOptions options_;
  std::shared_ptr<Node> node_;
  std::vector<LaneState> lanes_;
  /// The connected peers, appended by OpenPeer (API thread) while lanes read them in
  /// Progress and Arm (found by the TSan stage, session 12): guarded by peers_mu_, and
  /// peer_count_ publishes their number. A Peer lives as long as the backend and the list
  /// only grows, so each lane keeps its own copy of the pointers (LaneState::peers) and
  /// takes the lock only when peer_count_ says a peer was added: no lock and no allocation
  /// per Progress or Arm.
  std::mutex peers_mu_;
  std::deque<std::unique_ptr<Peer>> peers_;
  std::atomic<std::size_t> peer_count_{0};
  /// The peers as lane `lane` sees them (lane thread, Lane::mu held).
  const std::vector<Peer*>& LanePeers(std::uint32_t lane) {
    std::vector<Peer*>& mine = lanes_[lane].peers;
    if (mine.size() != peer_count_.load(std::memory_order_acquire)) {
      std::lock_guard<std::mutex> g(peers_mu_);
      for (std::size_t i = mine.size(); i < peers_.size(); ++i) mine.push_back(peers_[i].get());
    }
    return mine;
  }
  std::uint64_t next_serial_ = 1;  // guarded by node_->mu
  BackendEvents* events_ = nullptr;
};

}  // namespace

Result<std::unique_ptr<TransportBackend>> MakeInProcessBackend(const AgentOptions& options) {
  auto b = std::make_unique<InProcessBackend>(options);
  SW_RETURN_IF_ERROR(b->Init());
  return std::unique_ptr<TransportBackend>(std::move(b));
}

Status InjectFaults(std::string_view agent, const FaultPlan& plan) {
  auto n = FindByName(agent);
  if (!n) return NotFound(fmt::format("InjectFaults: no in-process agent named {}", agent));
  std::lock_guard<std::mutex> g(n->faults_mu);
  n->faults = plan;
  return Status::Ok();
}

Status Kill(std::string_view agent, const std::string& why) {
  auto n = FindByName(agent);
  if (!n) return NotFound(fmt::format("Kill: no in-process agent named {}", agent));
  InProcessBackend::MarkDead(*n, why);
  return Status::Ok();
}

}  // namespace shardwire::transport::inproc
