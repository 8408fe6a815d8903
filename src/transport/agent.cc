// Agent: the public transfer API over Agent::Impl (agent_impl.h): post, test,
// wait, cancel and release prepared transfers, wire up a peer, send and receive
// notifications, statistics. Creation, regions, peers, preparation and the
// lanes are in their own files (agent_impl.h lists them); the transport is the
// backend's (backend.h). See include/shardwire/agent.h for the contract and docs/transport.md
// for the design and measurements.
#include "shardwire/agent.h"

#include <algorithm>
#include <cmath>
#include <iterator>

#include <fmt/format.h>

#include "transport/agent_impl.h"

namespace shardwire {

using transport::EncodeNotification;

namespace {

// Upper bound on the progress/advance rounds Post runs inline for a small
// single-lane transfer (each round issues at most kIssueBatch operations).
constexpr int kInlineRounds = 64;

// Post runs a lane's job on the posting thread when that lane holds at most this many
// slices' bytes (AgentOptions::slice_bytes): 2 MiB by default, tens of microseconds of copying
// into a mapped arena. A 64 x 64 KiB post (4 MiB on two lanes) then wakes one lane thread
// instead of two (docs/benchmarks_history.md, "Small transfers").
constexpr std::uint64_t kInlineLaneSlices = 2;

// The time `seconds` from now (clamped to [0, 1e9] s: a negative timeout polls once). Pure but for the clock.
Clock::time_point DeadlineAfter(double seconds) {
  const double s = std::clamp(seconds, 0.0, 1e9);
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s));
}

// kInvalidArgument naming `what` when `timeout_s` is NaN; OK otherwise.
Status CheckTimeout(double timeout_s, std::string_view what) {
  if (std::isnan(timeout_s)) return InvalidArgument(fmt::format("{}: timeout is NaN", what));
  return Status::Ok();
}

// The outcome of a transfer that is not running, for Test and Wait (`what`): OK when done, its error
// when failed, kInvalidArgument when cancelled or never posted. Impl::mu held.
Status SettledStatus(const TransferCore& t, std::string_view what) {
  switch (t.state) {
    case TransferState::kDone: return Status::Ok();
    case TransferState::kFailed: return t.error;
    case TransferState::kCancelled:
      return InvalidArgument(fmt::format("{}: transfer {} was cancelled; post it again", what, t.id));
    case TransferState::kIdle: return InvalidArgument(fmt::format("{}: transfer {} was never posted", what, t.id));
    case TransferState::kRunning: break;
  }
  return Internal("SettledStatus on a running transfer");
}

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

Agent::Agent(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Agent::~Agent() = default;

const std::string& Agent::name() const { return impl_->options.name; }
const AgentOptions& Agent::options() const { return impl_->options; }

Result<std::shared_ptr<TransferCore>> Agent::Impl::FindTransfer(TransferHandle h) {
  auto it = transfers.find(h.id);
  if (it == transfers.end())
    return NotFound(fmt::format("transfer handle {} is not known to agent {}", h.id, options.name));
  return it->second;
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
    if (t->state == TransferState::kRunning)
      return InvalidArgument(fmt::format("Post: transfer {} is still in flight; Wait for it first", handle.id));
    if (t->jobs_alive > 0)
      return InvalidArgument(fmt::format("Post: transfer {} ended but its requests are still draining", handle.id));
    ++t->seq;
    t->state = TransferState::kRunning;
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
  im.counters.lane_jobs.fetch_add(lanes_used.size(), std::memory_order_relaxed);
  bool woke_sleeper = false;
  std::optional<std::uint32_t> inline_lane;
  if (t->lane_bytes[lanes_used[0]] <= kInlineLaneSlices * im.options.slice_bytes) inline_lane = lanes_used[0];
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
      if (!lep.open) job->Fail(PeerDisconnected(fmt::format("peer {} endpoint is closed", t->peer_name)));
      lane.jobs.push_back(std::move(job));
    }
    if (l != inline_lane) woke_sleeper = lane.Wake() || woke_sleeper;
  }
  // A small post (at most kInlineLaneSlices slices on its first lane): this thread runs the first
  // lane's job itself if that lane is not busy, after the other lanes were woken, so they work
  // beside it. One-sided puts and direct copies into a mapped arena then complete before Post
  // returns and that lane's thread is never woken: a single-lane post saves two thread
  // hand-offs, a post split over two lanes one of three. Then it takes what the other lanes'
  // threads have not started (their lock free): a woken thread may need tens to a hundred
  // microseconds to run, longer than a lane's share of a small post (docs/transport.md,
  // "Idle spin"). Never blocks on a lock.
  // Runs lane `l`'s jobs on this thread if its lock is free; true when the lane thread must
  // still finish something (jobs left or sends pending), or the lock was taken.
  auto run_here = [&](std::uint32_t l) {
    Impl::Lane& lane = *im.lanes[l];
    std::unique_lock<std::mutex> lk(lane.mu, std::try_to_lock);
    if (!lk.owns_lock()) return true;
    // Run the jobs to completion while they make progress: a few hundred descriptors need
    // several rounds of kIssueBatch plus the flush (the old cap of 3 rounds handed every
    // transfer above 192 descriptors to the lane thread). Stop at the first round without
    // progress (requests waiting for a remote reply) and let the lane thread finish.
    for (int round = 0; round < kInlineRounds && !lane.jobs.empty(); ++round) {
      const unsigned events = im.backend->Progress(l);
      if (!im.AdvanceJobs(lane) && events == 0) break;
    }
    return !lane.jobs.empty() || im.backend->SendsPending(l);
  };
  if (inline_lane) {
    if (run_here(*inline_lane)) woke_sleeper = im.lanes[*inline_lane]->Wake() || woke_sleeper;
    for (std::uint32_t l : lanes_used)
      if (l != *inline_lane) (void)run_here(l);  // already woken: it finishes what is left
  }
  t->woke_sleeping_lane.store(woke_sleeper, std::memory_order_relaxed);
  return Status::Ok();
}

Result<bool> Agent::Test(TransferHandle handle) {
  Impl& im = *impl_;
  SW_ASSIGN_OR_RETURN(std::shared_ptr<TransferCore> t, im.FindTransfer(handle));
  std::lock_guard<std::mutex> g(im.mu);
  if (t->state == TransferState::kRunning) return false;
  SW_RETURN_IF_ERROR(SettledStatus(*t, "Test"));
  return true;
}

Status Agent::Wait(TransferHandle handle, double timeout_s) {
  Impl& im = *impl_;
  SW_RETURN_IF_ERROR(CheckTimeout(timeout_s, "Wait"));
  SW_ASSIGN_OR_RETURN(std::shared_ptr<TransferCore> t, im.FindTransfer(handle));
  const auto deadline = DeadlineAfter(timeout_s);
  std::unique_lock<std::mutex> lk(im.mu);
  if (t->state == TransferState::kIdle) return InvalidArgument(fmt::format("Wait: transfer {} was never posted", handle.id));
  // Poll for the completion for idle_spin_s before sleeping on cv (AgentOptions::idle_spin_s):
  // look under mu only when a notification was sent.
  const double spin_s = std::min(im.options.idle_spin_s, std::clamp(timeout_s, 0.0, 1e9));
  if (spin_s > 0 && t->state == TransferState::kRunning && !t->woke_sleeping_lane.load(std::memory_order_relaxed)) {
    const auto spin_end = DeadlineAfter(spin_s);
    std::uint64_t seen = im.cv_signals.load(std::memory_order_acquire);
    while (t->state == TransferState::kRunning && Clock::now() < spin_end) {
      lk.unlock();
      const bool signalled = transport::SpinUntil(std::chrono::duration<double>(spin_end - Clock::now()).count(), [&] {
        return im.cv_signals.load(std::memory_order_acquire) != seen;
      });
      lk.lock();
      if (!signalled) break;
      seen = im.cv_signals.load(std::memory_order_acquire);
    }
  }
  if (!im.cv.wait_until(lk, deadline, [&] { return t->state != TransferState::kRunning; }))
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
    if (t->state == TransferState::kIdle) return InvalidArgument(fmt::format("Cancel: transfer {} was never posted", handle.id));
    if (t->state == TransferState::kRunning) t->cancel = true;
  }
  im.WakeAll();
  const auto deadline = DeadlineAfter(timeout_s);
  std::unique_lock<std::mutex> lk(im.mu);
  if (!im.cv.wait_until(lk, deadline, [&] { return t->state != TransferState::kRunning && t->jobs_alive == 0; }))
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
    busy = t->state == TransferState::kRunning || t->jobs_alive > 0;
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
    if (t->state == TransferState::kRunning) {
      t->state = TransferState::kFailed;
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
  // the backend's flush (UCX: ucp_ep_flush_nbx, complete only once that endpoint is wired up).
  SW_ASSIGN_OR_RETURN(const TransferHandle h, PrepareTransfer(TransferOp::kWrite, peer_name, {}, std::nullopt));
  im.transfers.at(h.id)->all_lanes = true;
  im.transfers.at(h.id)->metrics = {};  // internal: not a transfer of the caller's
  Status st = Post(h);
  if (st.ok()) st = Wait(h, timeout_s);
  if (!st.ok()) {
    // A flush to a stalled peer cannot be drained (Cancel gives it 1 s) and would make the
    // peer's next ImportMetadata fail with "transfers in flight": the peer is forgotten.
    if (st.code() == ErrorCode::kTimedOut) (void)Cancel(h, 1.0);
    (void)InvalidatePeer(peer_name);
    st = st.WithContext("the peer was invalidated (import it again to retry)");
  }
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
    if (!lep.open) return PeerDisconnected(fmt::format("SendMessage: endpoint to {} is closed", peer_name));
    auto wake = im.backend->SendOwned(0, lep.link, EncodeNotification(im.options.name, payload));
    if (!wake.ok()) return wake.status().WithContext("SendMessage to " + peer_name);
    if (!*wake) return Status::Ok();
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

std::vector<double> Agent::LaneStallSeconds() const {
  std::vector<double> out;
  out.reserve(impl_->lanes.size());
  for (const auto& lane : impl_->lanes) out.push_back(lane->StalledSeconds());
  return out;
}

AgentStats Agent::Stats() const {
  const Impl::Counters& c = impl_->counters;
  AgentStats s;
  s.posts = c.posts.load(std::memory_order_relaxed);
  s.lane_jobs = c.lane_jobs.load(std::memory_order_relaxed);
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

}  // namespace shardwire
