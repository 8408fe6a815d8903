// An Agent's life: Agent::Create (validate the options, make the backend, one
// wake eventfd per lane, the lane threads) and Agent::Impl::Shutdown (stop the
// lanes, close every link, release every backend resource in order).
#include <sys/eventfd.h>

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <system_error>
#include <thread>

#include <fmt/format.h>

#include "transport/agent_impl.h"
#include "transport/peer_liveness.h"

namespace shardwire {

using transport::SelfIdentity;

Result<std::unique_ptr<Agent>> Agent::Create(AgentOptions options) {
  if (options.name.empty()) return InvalidArgument("Agent::Create: name is empty");
  if (options.name.size() > 0xFFFF)
    return InvalidArgument(fmt::format("Agent::Create: name is {} bytes, at most 65535", options.name.size()));
  if (!(options.connect_timeout_s >= 0) || !std::isfinite(options.connect_timeout_s))
    return InvalidArgument(
        fmt::format("Agent::Create: connect_timeout_s {} is not finite and >= 0", options.connect_timeout_s));
  if (options.lanes == 0) options.lanes = kDefaultLanes;
  if (options.lanes > kMaxLanes)
    return InvalidArgument(fmt::format("Agent::Create: {} lanes, at most {}", options.lanes, kMaxLanes));
  if (options.slice_bytes < 4096)
    return InvalidArgument(fmt::format("Agent::Create: slice_bytes {} is below 4096", options.slice_bytes));
  if (!(options.idle_spin_s >= 0 && options.idle_spin_s <= 0.01))
    return InvalidArgument(fmt::format("Agent::Create: idle_spin_s {} is not in [0, 0.01]", options.idle_spin_s));
  if (options.max_ops_in_flight_per_peer == 0 || options.max_bytes_in_flight_per_peer == 0)
    return InvalidArgument("Agent::Create: flow-control limits must be positive");

  auto impl = std::make_unique<Impl>();
  impl->options = std::move(options);
  SW_ASSIGN_OR_RETURN(impl->metrics, transport::AgentMetrics::Make(impl->options.metrics, impl->options.name));
  impl->self = SelfIdentity();
  const std::string& name = impl->options.name;
  const std::string ctx = "Agent::Create " + name;

  SW_ASSIGN_OR_RETURN(impl->backend, transport::MakeBackend(impl->options));
  impl->backend->SetEvents(impl.get());

  const std::uint32_t n = impl->options.lanes;
  for (std::uint32_t i = 0; i < n; ++i) {
    auto lane = std::make_unique<Impl::Lane>();
    lane->impl = impl.get();
    lane->index = i;
    lane->ops_limit = std::max<std::uint32_t>(1, impl->options.max_ops_in_flight_per_peer / n);
    lane->bytes_limit = std::max<std::uint64_t>(1, impl->options.max_bytes_in_flight_per_peer / n);
    lane->wake = FileDescriptor(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
    if (!lane->wake) return Internal(fmt::format("{}: eventfd: {}", ctx, std::strerror(errno)));
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

void Agent::Impl::Shutdown() {
  if (lanes.empty()) return;
  for (auto& [name, p] : peers)
    RevokeLeases(*p, PeerDisconnected("the agent mapping peer " + name + " was destroyed"));
  {
    std::lock_guard<std::mutex> g(mu);
    shutting_down = true;
    for (TransferCore* t : active) {
      if (t->state == TransferState::kRunning) {
        t->state = TransferState::kFailed;
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
        backend->ReleaseKeys(l->index, lep.link);
      }
      lep.open = false;
      backend->CloseLink(l->index, lep.link, /*force=*/true, transport::kForceCloseTimeoutS);
    }
    // Bounded: requests stuck on a dead peer's link never finish.
    const auto deadline = Clock::now() + std::chrono::milliseconds(100);
    auto busy = [&] {
      for (auto& j : l->jobs)
        if (j->outstanding > 0) return true;
      return backend->SendsPending(l->index);
    };
    while (busy() && Clock::now() < deadline) {
      if (backend->Progress(l->index) == 0) std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    for (auto& p : l->peers) {
      p->lanes[l->index].mapped_delta.clear();
      backend->ReleaseKeys(l->index, p->lanes[l->index].link);
    }
  }
  backend->StopLanes();  // may complete leftover requests; jobs are still alive
  for (auto& l : lanes) {
    l->peers.clear();
    l->jobs.clear();
    l->abandoned.clear();
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
    regions.clear();  // the backend releases them (UCX: ucp_mem_unmap needs the context)
  }
  backend.reset();
}

}  // namespace shardwire
