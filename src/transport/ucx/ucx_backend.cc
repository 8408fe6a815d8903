// The UCX backend's life: the data and message contexts, each lane's workers
// (event fd, address, active-message handlers) and the epoll fd over both,
// progress and the ucp_worker_arm protocol, and the ordered release of
// everything at shutdown.
#include "transport/ucx/ucx_backend.h"
#include "transport/ucx/ucx_factory.h"

#include <sys/epoll.h>

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include <chrono>
#include <thread>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

namespace shardwire::transport::ucx {

namespace {

// Reads the UCX configuration (environment) and applies the agent's keepalive
// interval and, when `transports` is not empty, UCX_TLS = `transports`.
Result<UcpConfig> ReadConfig(const AgentOptions& options, const std::string& transports) {
  ucp_config_t* raw_config = nullptr;
  ucs_status_t st = ucp_config_read(nullptr, nullptr, &raw_config);
  if (st != UCS_OK) return UcsError("ucp_config_read", st);
  UcpConfig config(raw_config);
  if (options.ucx.keepalive_interval_s > 0 && std::getenv("UCX_KEEPALIVE_INTERVAL") == nullptr) {
    const auto ms = std::max<long long>(1, std::llround(options.ucx.keepalive_interval_s * 1000.0));
    st = ucp_config_modify(config.get(), "KEEPALIVE_INTERVAL", fmt::format("{}ms", ms).c_str());
    if (st != UCS_OK) return UcsError("ucp_config_modify(KEEPALIVE_INTERVAL)", st);
  }
  if (!transports.empty()) {
    st = ucp_config_modify(config.get(), "TLS", transports.c_str());
    if (st != UCS_OK) return UcsError(fmt::format("ucp_config_modify(TLS={})", transports), st);
  }
  return config;
}

// ucp_init with `features` (mt_workers_shared: lanes' workers are driven by
// different threads).
Result<UcpContext> InitContext(const AgentOptions& options, const UcpConfig& config, std::uint64_t features) {
  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_NAME | UCP_PARAM_FIELD_MT_WORKERS_SHARED;
  params.features = features;
  params.name = options.name.c_str();
  params.mt_workers_shared = 1;
  ucp_context_h raw_context = nullptr;
  ucs_status_t st = ucp_init(&params, config.get(), &raw_context);
  if (st != UCS_OK) return UcsError("ucp_init", st);
  return UcpContext(raw_context);
}

}  // namespace

Result<std::unique_ptr<TransportBackend>> UcxBackend::Make(const AgentOptions& options) {
  const std::string ctx = "Agent::Create " + options.name;
  if (!(options.ucx.keepalive_interval_s >= 0))
    return InvalidArgument(
        fmt::format("Agent::Create: ucx.keepalive_interval_s {} is negative or NaN", options.ucx.keepalive_interval_s));
  std::unique_ptr<UcxBackend> b(new UcxBackend());
  b->options_ = options;
  {
    auto config = ReadConfig(options, "");
    if (!config.ok()) return config.status().WithContext(ctx);
    auto context = InitContext(options, *config, UCP_FEATURE_RMA | UCP_FEATURE_AM | UCP_FEATURE_WAKEUP);
    if (!context.ok()) return context.status().WithContext(ctx);
    b->context_ = std::move(*context);
  }
  const std::string& message_tls = options.ucx.message_transports;
  if (!message_tls.empty()) {
    const std::string mctx = fmt::format("{}: message context (ucx.message_transports \"{}\")", ctx, message_tls);
    auto config = ReadConfig(options, message_tls);
    if (!config.ok()) return config.status().WithContext(mctx);
    auto context = InitContext(options, *config, UCP_FEATURE_AM | UCP_FEATURE_WAKEUP);
    if (!context.ok()) return context.status().WithContext(mctx);
    b->message_context_ = std::move(*context);
  }

  for (std::uint32_t i = 0; i < options.lanes; ++i) {
    auto lane = std::make_unique<Lane>();
    lane->backend = b.get();
    lane->index = i;
    SW_RETURN_IF_ERROR(b->OpenWorker(b->context_.get(), *lane, lane->data_arg, lane->worker, lane->efd,
                                     lane->address).WithContext(ctx));
    if (b->message_context_) {
      int message_efd = -1;
      SW_RETURN_IF_ERROR(b->OpenWorker(b->message_context_.get(), *lane, lane->message_arg, lane->message_worker,
                                       message_efd, lane->message_address).WithContext(ctx + ": message worker"));
      // One fd the lane thread sleeps on: readable when either worker has events.
      lane->epoll = FileDescriptor(::epoll_create1(EPOLL_CLOEXEC));
      if (!lane->epoll) return Internal(fmt::format("{}: epoll_create1: {}", ctx, std::strerror(errno)));
      for (int fd : {lane->efd, message_efd}) {
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

Status UcxBackend::OpenWorker(ucp_context_h context, Lane& lane, HandlerArg& arg, UcpWorker& worker, int& efd,
                              WorkerAddress& address) {
  ucp_worker_params_t wparams{};
  wparams.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  wparams.thread_mode = UCS_THREAD_MODE_SERIALIZED;
  ucp_worker_h raw_worker = nullptr;
  ucs_status_t st = ucp_worker_create(context, &wparams, &raw_worker);
  if (st != UCS_OK) return UcsError("ucp_worker_create", st);
  worker.reset(raw_worker);
  st = ucp_worker_get_efd(raw_worker, &efd);
  if (st != UCS_OK) return UcsError("ucp_worker_get_efd", st);
  ucp_address_t* raw_address = nullptr;
  std::size_t address_length = 0;
  st = ucp_worker_get_address(raw_worker, &raw_address, &address_length);
  if (st != UCS_OK) return UcsError("ucp_worker_get_address", st);
  address = WorkerAddress(raw_worker, raw_address, address_length);
  arg.lane = &lane;
  arg.worker = raw_worker;
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
    am.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB | UCP_AM_HANDLER_PARAM_FIELD_ARG |
                    UCP_AM_HANDLER_PARAM_FIELD_FLAGS;
    am.id = h.id;
    am.flags = h.flags;
    am.cb = h.cb;
    am.arg = &arg;
    st = ucp_worker_set_am_recv_handler(raw_worker, &am);
    if (st != UCS_OK) return UcsError("ucp_worker_set_am_recv_handler", st);
  }
  return Status::Ok();
}

UcxBackend::~UcxBackend() {
  StopLanes();
  if (message_context_leaked_) (void)message_context_.release();
  message_context_.reset();
  context_.reset();  // after every memory handle (the agent released its regions first)
}

unsigned UcxBackend::Progress(std::uint32_t lane) {
  Lane& l = *lanes_[lane];
  unsigned n = ucp_worker_progress(l.worker.get());
  if (l.message_worker) n += ucp_worker_progress(l.message_worker.get());
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
  for (ucp_worker_h w : {l.worker.get(), l.message_worker.get()}) {
    if (w == nullptr) continue;
    const ucs_status_t armed = ucp_worker_arm(w);
    if (armed == UCS_ERR_BUSY) return ArmResult::kBusy;
    if (armed != UCS_OK) {
      error = fmt::format("ucp_worker_arm{}: {}", w == l.worker.get() ? "" : " (message worker)",
                          ucs_status_string(armed));
      return ArmResult::kError;
    }
  }
  return ArmResult::kArmed;
}

namespace {

// Flushes `worker` (every endpoint, UCX's own included), progressing it for at
// most `timeout_s`. Returns whether the flush finished (with or without error).
bool FlushWorker(ucp_worker_h worker, double timeout_s) {
  ucp_request_param_t p{};
  ucs_status_ptr_t req = ucp_worker_flush_nbx(worker, &p);
  if (req == nullptr || UCS_PTR_IS_ERR(req)) return true;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  while (ucp_request_check_status(req) == UCS_INPROGRESS) {
    if (std::chrono::steady_clock::now() >= deadline) {
      ucp_request_free(req);
      return false;
    }
    if (ucp_worker_progress(worker) == 0) std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  ucp_request_free(req);
  return true;
}

}  // namespace

void UcxBackend::StopLanes() {
  for (auto& p : peers_) {
    for (Link& link : p->links) {
      link.rkeys.clear();
      CloseLink(0, &link, /*force=*/true, Endpoint::kDefaultCloseTimeoutS);
    }
  }
  for (auto& l : lanes_) {
    l->address = WorkerAddress();
    l->message_address = WorkerAddress();
    l->worker.reset();  // may complete leftover requests; the agent's jobs are still alive
    // A message endpoint still wiring up to a stalled peer (CloseLink), or one UCX
    // created for a peer that stalled before it answered, would make
    // ucp_worker_destroy abort: leave such a worker, and the context, to the process.
    if (l->message_worker && !FlushWorker(l->message_worker.get(), kMessageFlushTimeoutS)) {
      spdlog::warn(
          "shardwire agent {}: lane {}'s message worker still waits for a stalled peer's wire-up after {} s; "
          "left allocated (UCX 1.13 aborts when such a worker is destroyed)",
          options_.name, l->index, kMessageFlushTimeoutS);
      (void)l->message_worker.release();
      message_context_leaked_ = true;
    }
    l->message_worker.reset();
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
