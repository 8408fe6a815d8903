// The UCX backend's life: the context and one worker (event fd, address,
// active-message handlers) and one local message channel per lane, progress and
// the ucp_worker_arm protocol, and the ordered release of everything at shutdown.
#include "transport/ucx/ucx_backend.h"
#include "transport/ucx/ucx_factory.h"

#include <sys/epoll.h>

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include <fmt/format.h>

#include "transport/ucx/shared_memory_tls.h"

namespace shardwire::transport::ucx {

Result<std::unique_ptr<TransportBackend>> UcxBackend::Make(const AgentOptions& options) {
  const std::string ctx = "Agent::Create " + options.name;
  if (!(options.ucx.keepalive_interval_s >= 0))
    return InvalidArgument(
        fmt::format("Agent::Create: ucx.keepalive_interval_s {} is negative or NaN", options.ucx.keepalive_interval_s));
  std::unique_ptr<UcxBackend> b(new UcxBackend());
  b->options_ = options;
  ucp_config_t* raw_config = nullptr;
  ucs_status_t st = ucp_config_read(nullptr, nullptr, &raw_config);
  if (st != UCS_OK) return UcsError("ucp_config_read", st).WithContext(ctx);
  UcpConfig config(raw_config);
  if (options.ucx.keepalive_interval_s > 0 && std::getenv("UCX_KEEPALIVE_INTERVAL") == nullptr) {
    const auto ms = std::max<long long>(1, std::llround(options.ucx.keepalive_interval_s * 1000.0));
    st = ucp_config_modify(config.get(), "KEEPALIVE_INTERVAL", fmt::format("{}ms", ms).c_str());
    if (st != UCS_OK) return UcsError("ucp_config_modify(KEEPALIVE_INTERVAL)", st).WithContext(ctx);
  }
  // Each worker's shared-memory interfaces (posix, sysv) start with a pool of receive
  // buffers of UCX_MM_RX_BUFS_GROW elements of UCX_MM_SEG_SIZE (8 KiB) each, every one
  // written at ucp_worker_create: 512 by default, 4 MiB per interface and hundreds of
  // first touches, which cost 10-20 us each on the PVM guests of docs/benchmarks.md
  // (`shardwire load` of 4 ranks: 3,000 page faults and 25-40 ms of its agents' creation
  // fewer with 64). Same-host messages travel over Unix sockets
  // (UcxOptions::local_message_sockets) and data by kernel copy or mapped regions, so
  // these buffers carry little; 64 (the FIFO's size, which takes one buffer per element
  // at creation) and growth by 64 on demand. An explicit setting in the environment
  // (UCX_MM_, UCX_POSIX_ or UCX_SYSV_RX_BUFS_GROW) wins; without shared-memory transports
  // in UCX_TLS (e.g. tcp alone) nothing reads it, and UCX would warn at every worker.
  if (std::getenv("UCX_MM_RX_BUFS_GROW") == nullptr && std::getenv("UCX_POSIX_RX_BUFS_GROW") == nullptr &&
      std::getenv("UCX_SYSV_RX_BUFS_GROW") == nullptr && UcxTlsSelectsSharedMemory(std::getenv("UCX_TLS"))) {
    st = ucp_config_modify(config.get(), "MM_RX_BUFS_GROW", "64");
    if (st != UCS_OK) return UcsError("ucp_config_modify(MM_RX_BUFS_GROW)", st).WithContext(ctx);
  }

  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_NAME | UCP_PARAM_FIELD_MT_WORKERS_SHARED;
  params.features = UCP_FEATURE_RMA | UCP_FEATURE_AM | UCP_FEATURE_WAKEUP;
  params.name = b->options_.name.c_str();
  params.mt_workers_shared = 1;  // lanes' workers are driven by different threads
  ucp_context_h raw_context = nullptr;
  st = ucp_init(&params, config.get(), &raw_context);
  if (st != UCS_OK) return UcsError("ucp_init", st).WithContext(ctx);
  b->context_.reset(raw_context);

  for (std::uint32_t i = 0; i < options.lanes; ++i) {
    auto lane = std::make_unique<Lane>();
    lane->backend = b.get();
    lane->index = i;
    ucp_worker_params_t wparams{};
    wparams.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
    wparams.thread_mode = UCS_THREAD_MODE_SERIALIZED;
    ucp_worker_h raw_worker = nullptr;
    st = ucp_worker_create(b->context_.get(), &wparams, &raw_worker);
    if (st != UCS_OK) return UcsError("ucp_worker_create", st).WithContext(ctx);
    lane->worker.reset(raw_worker);
    st = ucp_worker_get_efd(raw_worker, &lane->efd);
    if (st != UCS_OK) return UcsError("ucp_worker_get_efd", st).WithContext(ctx);
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
    const Handler handlers[] = {{kNotifyAmId, &UcxBackend::OnNotification, UCP_AM_FLAG_WHOLE_MSG},
                                {kWriteAmId, &UcxBackend::OnAmWrite, UCP_AM_FLAG_WHOLE_MSG},
                                {kFenceAmId, &UcxBackend::OnFence, UCP_AM_FLAG_WHOLE_MSG},
                                {kFenceAckAmId, &UcxBackend::OnFenceAck, UCP_AM_FLAG_WHOLE_MSG}};
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
    if (options.ucx.local_message_sockets) {
      auto channel = LocalMessageChannel::Open(reinterpret_cast<std::uintptr_t>(b.get()), i);
      if (!channel.ok()) return channel.status().WithContext(ctx);
      lane->messages = std::move(*channel);
      // One fd the lane thread sleeps on: readable when the worker or the channel has events.
      lane->epoll = FileDescriptor(::epoll_create1(EPOLL_CLOEXEC));
      lane->hangups = FileDescriptor(::epoll_create1(EPOLL_CLOEXEC));
      if (!lane->epoll || !lane->hangups)
        return Internal(fmt::format("{}: epoll_create1: {}", ctx, std::strerror(errno)));
      for (int fd : {lane->efd, lane->messages->EventFd(), lane->hangups.get()}) {
        epoll_event ev{};
        ev.events = EPOLLIN;
        ev.data.fd = fd;
        if (::epoll_ctl(lane->epoll.get(), EPOLL_CTL_ADD, fd, &ev) != 0)
          return Internal(fmt::format("{}: epoll_ctl(ADD): {}", ctx, std::strerror(errno)));
      }
    }
    b->lanes_.push_back(std::move(lane));
  }
  return std::unique_ptr<TransportBackend>(std::move(b));
}

UcxBackend::~UcxBackend() {
  StopLanes();
  context_.reset();  // after every memory handle (the agent released its regions first)
}

unsigned UcxBackend::Progress(std::uint32_t lane) {
  Lane& l = *lanes_[lane];
  unsigned n = ucp_worker_progress(l.worker.get());
  // The channel (an epoll_wait per poll) is polled when it may have work (after
  // Arm, a send, or a poll that found some) and otherwise every
  // kChannelPollEvery-th call, so a busy lane does not pay a system call per
  // round for a channel that carries a few messages per transfer.
  if (l.messages && (l.messages_due || ++l.progress_calls % kChannelPollEvery == 0)) {
    // Hang-ups (another epoll_wait) are looked for after a wake-up (a hang-up wakes a sleeping
    // lane: the set is in the lane's epoll) and on a busy lane every kHangupPollEvery-th call.
    const bool hangups_due = l.messages_due || l.progress_calls % kHangupPollEvery == 0;
    unsigned m = l.messages->Poll(
        [&](const std::byte* data, std::size_t length) { events_->OnMessage(l.index, data, length); });
    std::erase_if(l.backlog, [&](Link* link) {
      if (link->messages && link->messages->Flush()) return false;
      ++m;  // drained (or failed): progress
      return true;
    });
    if (hangups_due) m += ReportHangups(l);
    l.messages_due = m > 0;
    n += m;
  }
  return n;
}

bool UcxBackend::Service(std::uint32_t lane) {
  Lane& l = *lanes_[lane];
  const bool did = ServeAcks(l);
  CollectReceives(l);
  return did;
}

int UcxBackend::EventFd(std::uint32_t lane) {
  const Lane& l = *lanes_[lane];
  return l.epoll ? l.epoll.get() : l.efd;
}

ArmResult UcxBackend::Arm(std::uint32_t lane, std::string& error) {
  Lane& l = *lanes_[lane];
  l.messages_due = true;  // whatever wakes the lane, its next Progress polls the channel
  if (!l.backlog.empty()) return ArmResult::kBusy;  // retried (with backoff) as the peers drain
  const ucs_status_t armed = ucp_worker_arm(l.worker.get());
  if (armed == UCS_OK) return ArmResult::kArmed;
  if (armed == UCS_ERR_BUSY) return ArmResult::kBusy;
  error = fmt::format("ucp_worker_arm: {}", ucs_status_string(armed));
  return ArmResult::kError;
}

void UcxBackend::StopLanes() {
  for (auto& p : peers_) {
    for (std::size_t i = 0; i < p->links.size() && i < lanes_.size(); ++i) {
      Link& link = p->links[i];
      link.rkeys.clear();
      link.ep.Close(/*force=*/true, Endpoint::kDefaultCloseTimeoutS);
      SetMessageLink(*lanes_[i], link, nullptr);
    }
  }
  for (auto& l : lanes_) {
    l->address = WorkerAddress();
    l->worker.reset();  // may complete leftover requests; the agent's jobs are still alive
    l->backlog.clear();
    l->messages.reset();
    l->sends.clear();
    l->rndv_recvs.clear();
    l->fences.clear();
  }
  lanes_.clear();
  peers_.clear();
}

}  // namespace shardwire::transport::ucx

namespace shardwire::transport::ucx {

Result<std::unique_ptr<TransportBackend>> MakeUcxBackend(const AgentOptions& options) {
  return UcxBackend::Make(options);
}

}  // namespace shardwire::transport::ucx
