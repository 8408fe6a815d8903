// Peer failure: failures the backend reports (backend_events.cc), the /proc
// liveness check of same-host peers (lane 0), marking a peer failed (its transfers
// fail, its MappedRegions are revoked), force-closing its links on every lane and
// tearing a peer down (InvalidatePeer, re-import). See agent_impl.h for locks.
#include <algorithm>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "transport/agent_impl.h"
#include "transport/peer_liveness.h"

namespace shardwire {

using transport::ProcessGone;

namespace {

// How often same-host peers' processes are checked (see CheckLiveness).
constexpr std::chrono::milliseconds kLivenessPeriod{100};

}  // namespace

void Agent::Impl::RevokeLeases(PeerState& peer, const Status& why) {
  std::lock_guard<std::mutex> g(peer.leases_mu);
  for (auto& lease : peer.leases) {
    if (!lease) continue;
    std::unique_lock<std::shared_mutex> w(lease->mu);
    if (lease->revoked) continue;
    lease->revoked = true;
    lease->why = why;
  }
}

void Agent::Impl::MarkPeerFailed(PeerState& peer, const std::string& why) {
  {
    std::lock_guard<std::mutex> g(mu);
    if (shutting_down || peer.failed.load()) return;
    peer.failure = PeerDisconnected(fmt::format("peer {} disconnected: {}", peer.name, why));
    peer.failed.store(true);
    spdlog::debug("shardwire agent {}: {}", options.name, peer.failure.message());
    FailTransfersOfLocked(peer.serial, peer.failure);
    unreported_failures.push_back(peer.failure);
    NotifyWaiters();
  }
  RevokeLeases(peer, peer.failure);
  WakeAll();
}

void Agent::Impl::FailTransfersOfLocked(std::uint64_t serial, const Status& why) {
  for (TransferCore* t : active) {
    if (t->peer_serial == serial && t->state == TransferState::kRunning) {
      t->state = TransferState::kFailed;
      t->error = why;
      t->metrics.Failed(why);
    }
  }
}

void Agent::Impl::CheckLiveness() {
  const auto now = Clock::now();
  if (now < next_liveness_check) return;
  next_liveness_check = now + kLivenessPeriod;
  std::vector<std::shared_ptr<PeerState>> check;
  {
    std::lock_guard<std::mutex> g(mu);
    for (auto& [serial, p] : peers_by_serial)
      if (p->liveness_checked && !p->failed.load()) check.push_back(p);
  }
  // Every check first, then one drain, then the marks: a peer found gone is dead, so whatever it
  // sent is already in this process's socket buffers when the drain runs. (Draining at the first
  // dead peer left a second one, which died while the drain ran, marked without a drain.)
  std::vector<std::pair<std::shared_ptr<PeerState>, std::string>> gone;
  for (auto& p : check) {
    std::string why = ProcessGone(p->process);
    if (!why.empty()) gone.emplace_back(p, std::move(why));
  }
  if (gone.empty()) return;
  // What a dead peer sent before it died may sit unpolled in this process's socket buffers (a
  // busy lane polls its channel every few rounds): delivered before the failure, so a wait for
  // that message does not see the failure instead. Lane 0 (this thread holds its mutex)
  // carries every SendMessage; another lane (a transfer's notification) is drained when its
  // mutex is free (try_lock: never waits), else it is left to its own next poll.
  backend->DrainMessages(0);
  for (std::size_t i = 1; i < lanes.size(); ++i) {
    std::unique_lock<std::mutex> other(lanes[i]->mu, std::try_to_lock);
    if (other.owns_lock()) backend->DrainMessages(static_cast<std::uint32_t>(i));
  }
  for (auto& [p, why] : gone) MarkPeerFailed(*p, why);
}

void Agent::Impl::DetachJobsOf(Lane& lane, PeerState* peer, const Status& why) {
  for (auto it = lane.jobs.begin(); it != lane.jobs.end();) {
    Job& j = **it;
    if (j.peer != peer) {
      ++it;
      continue;
    }
    j.Fail(why);
    j.lep = nullptr;
    if (j.awaiting_ack) {
      backend->ForgetAck(lane.index, &j.flush_visible);
      j.awaiting_ack = false;
    }
    if (j.phase == Phase::kNotifying) {
      SettleNotification(j);
    } else {
      ReportLane(j);
    }
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

void Agent::Impl::CloseForced(Lane& lane, PeerState& peer, const Status& why) {
  LaneEp& lep = peer.lanes[lane.index];
  if (!lep.open) return;
  // Before lane 0's remote keys (and with them the mappings MappedRegions use) go: a lane may
  // reap a failed peer before MarkPeerFailed, on another thread, has revoked them.
  if (lane.index == 0) RevokeLeases(peer, why);
  lep.open = false;
  if (!backend->CloseLink(lane.index, lep.link, /*force=*/true, transport::kForceCloseTimeoutS))
    spdlog::warn("shardwire agent {}: force-closing the link to {} did not finish", options.name, peer.name);
  // Let cancellations (error completions of queued requests) run, briefly.
  const auto deadline = Clock::now() + std::chrono::milliseconds(50);
  auto busy = [&] {
    for (auto& j : lane.jobs)
      if (j->peer == &peer && j->outstanding > 0) return true;
    return false;
  };
  while (busy() && Clock::now() < deadline) {
    if (backend->Progress(lane.index) == 0) std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  DetachJobsOf(lane, &peer, why);
  lep.mapped_delta.clear();
  backend->ReleaseKeys(lane.index, lep.link);
  lep.ops_in_flight = 0;
  lep.bytes_in_flight = 0;
}

void Agent::Impl::ReapFailedPeers(Lane& lane) {
  for (auto& p : lane.peers) {
    if (!p->failed.load() || !p->lanes[lane.index].open) continue;
    Status why;
    {
      std::lock_guard<std::mutex> g(mu);
      why = p->failure;
    }
    CloseForced(lane, *p, why);
  }
}

void Agent::Impl::TeardownPeer(const std::shared_ptr<PeerState>& peer, bool force, const Status& why) {
  RevokeLeases(*peer, why);
  {
    std::lock_guard<std::mutex> g(mu);
    peers_by_serial.erase(peer->serial);
    FailTransfersOfLocked(peer->serial, why);
    NotifyWaiters();
  }
  const double bound = std::max(0.0, options.connect_timeout_s);
  for (auto& lp : lanes) {
    Lane& lane = *lp;
    std::lock_guard<std::mutex> g(lane.mu);
    LaneEp& lep = peer->lanes[lane.index];
    bool busy = false;
    for (auto& j : lane.jobs)
      if (j->peer == peer.get()) busy = true;
    if (!force && !busy && !peer->failed.load() && lep.open) {
      lep.mapped_delta.clear();
      backend->ReleaseKeys(lane.index, lep.link);
      lep.open = false;
      if (!backend->CloseLink(lane.index, lep.link, /*force=*/false, bound))
        spdlog::warn("shardwire agent {}: closing the link to {} did not finish within {} s", options.name,
                     peer->name, bound);
    } else {
      CloseForced(lane, *peer, why);
    }
    DetachJobsOf(lane, peer.get(), why);
    lep.mapped_delta.clear();
    backend->ReleaseKeys(lane.index, lep.link);
    lane.peers.erase(std::remove(lane.peers.begin(), lane.peers.end(), peer), lane.peers.end());
  }
}

}  // namespace shardwire
