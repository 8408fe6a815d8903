// An Agent's life: Agent::Create (validate the options, the UCX context, one
// worker, eventfd and set of active-message handlers per lane, the lane
// threads) and Agent::Impl::Shutdown (stop the lanes, close every endpoint,
// release every UCX resource in order).
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

using transport::kFenceAckAmId;
using transport::kFenceAmId;
using transport::kNotifyAmId;
using transport::kWriteAmId;
using transport::SelfIdentity;
using transport::UcpConfig;

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

}  // namespace shardwire
