// CoordinatorServer (coordinator.h): a synchronous gRPC server running the three
// coordinator services over one CoordinatorState, plus the reaper thread.
#include <fmt/format.h>
#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <thread>
#include <utility>

#include "control/bearer_token.h"
#include "control/coordinator_codec.h"
#include "control/coordinator_metrics.h"
#include "control/coordinator_service.h"
#include "control/coordinator_state.h"
#include "control/coordinator_state_redis.h"
#include "control/grpc_runtime.h"
#include "control/heartbeat_loop.h"
#include "control/pem_file.h"
#include "core/regular_file.h"
#include "shardwire/coordinator.h"

namespace shardwire {

namespace {

// Splits "host:port" / "[v6]:port"; host keeps no brackets.
Status SplitHostPort(const std::string& address, std::string* host, int* port) {
  const auto colon = address.rfind(':');
  if (colon == std::string::npos || colon + 1 == address.size()) {
    return InvalidArgument(fmt::format("listen address '{}' is not host:port", address));
  }
  *host = address.substr(0, colon);
  if (host->size() >= 2 && host->front() == '[' && host->back() == ']') *host = host->substr(1, host->size() - 2);
  const std::string p = address.substr(colon + 1);
  if (p.find_first_not_of("0123456789") != std::string::npos || p.size() > 5 || std::stoi(p) > 65535) {
    return InvalidArgument(fmt::format("listen address '{}' has an invalid port '{}'", address, p));
  }
  *port = std::stoi(p);
  return Status::Ok();
}

Status ValidateOptions(const CoordinatorServerOptions& o) {
  SW_RETURN_IF_ERROR(control::CheckBearerToken(o.token, "CoordinatorServerOptions::token"));
  // Each time becomes int64 milliseconds (leases) or nanoseconds (the reaper's wait): beyond
  // kMaxCoordinatorTimeS it would overflow (a member_expire_after_s of 1e16 expired every
  // member at once; a reaper_interval_s of 1e10 ran the reaper without pause).
  const std::pair<const char*, double> times[] = {{"source_stale_after_s", o.source_stale_after_s},
                                                  {"source_delete_after_s", o.source_delete_after_s},
                                                  {"member_expire_after_s", o.member_expire_after_s},
                                                  {"reaper_interval_s", o.reaper_interval_s}};
  for (const auto& [name, v] : times) {
    if (!(v > 0 && v <= kMaxCoordinatorTimeS)) {
      return InvalidArgument(fmt::format("coordinator option {} is {} s; it must be > 0 and at most {:g} s", name, v,
                                         kMaxCoordinatorTimeS));
    }
  }
  if (!(o.source_mark_hold_s >= 0 && o.source_mark_hold_s <= kMaxCoordinatorTimeS)) {
    return InvalidArgument(
        fmt::format("coordinator option source_mark_hold_s is {} s; it must be >= 0 and at most {:g} s",
                    o.source_mark_hold_s, kMaxCoordinatorTimeS));
  }
  if (o.source_delete_after_s < o.source_stale_after_s) {
    return InvalidArgument(fmt::format("source delete_after ({} s) must be >= stale_after ({} s)",
                                       o.source_delete_after_s, o.source_stale_after_s));
  }
  if (o.tls_cert_file.empty() != o.tls_key_file.empty()) {
    return InvalidArgument("TLS needs both a certificate file and a key file");
  }
  return Status::Ok();
}

}  // namespace

// Longest time between two measurements of the state's clock (CoordinatorState::SyncClock).
constexpr std::chrono::seconds kClockSyncInterval{1};

struct CoordinatorServer::Impl {
  std::shared_ptr<control::CoordinatorState> state;
  std::unique_ptr<control::CoordinatorCore> core;
  std::unique_ptr<control::RendezvousService> rendezvous;
  std::unique_ptr<control::SourceRegistryService> sources;
  std::unique_ptr<control::JobsService> jobs;
  std::unique_ptr<grpc::Server> server;
  std::unique_ptr<control::HeartbeatLoop> heartbeats;  // after `server`: destroyed before it
  int port = 0;
  std::string dial_host;
  double reaper_interval_s = 1;

  std::thread reaper;
  std::mutex mu;
  std::condition_variable wake;
  bool stop = false;
  bool shut_down = false;
  // The process that started it. A forked child holds a copy whose threads do not exist there:
  // it must neither shut the server down (that closed the parent's listening socket: the
  // parent's clients were refused) nor destroy it (joining a thread that is not there).
  long started_in = static_cast<long>(::getpid());
  CollectorHandle sources_collector;  // last: unregistered before anything it reads goes

  void RunReaper() {
    std::unique_lock<std::mutex> lock(mu);
    using SteadyClock = std::chrono::steady_clock;
    const auto interval =
        std::chrono::duration_cast<SteadyClock::duration>(std::chrono::duration<double>(reaper_interval_s));
    // The state's clock is measured again at least every kClockSyncInterval, whatever the
    // reaper's interval (a Redis host's clock step is followed within it).
    const auto wake_every = std::min<SteadyClock::duration>(interval, kClockSyncInterval);
    auto next_pass = SteadyClock::now() + interval;
    while (!stop) {
      if (wake.wait_for(lock, std::min<SteadyClock::duration>(wake_every, next_pass - SteadyClock::now()),
                        [&] { return stop; }))
        break;
      lock.unlock();
      // Before a pass: the pass and every call until the next sync read the clock it measures.
      if (Status s = state->SyncClock(); !s.ok()) spdlog::warn("coordinator clock: {}", s.ToString());
      if (SteadyClock::now() >= next_pass) {
        next_pass = SteadyClock::now() + interval;
        // A Redis that lost the state gets a new id here, so clients bound to the old one
        // learn it at their next call (docs/coordinator.md, "State ids").
        if (Status s = state->RefreshStateId(); !s.ok()) spdlog::warn("coordinator state id: {}", s.ToString());
        auto stats = state->Reap(state->NowMs());
        if (!stats.ok()) {
          spdlog::warn("coordinator reaper: {}", stats.status().ToString());
        } else if (stats->sources_marked_stale + stats->sources_deleted + stats->members_expired > 0) {
          spdlog::debug("coordinator reaper: {} sources stale, {} deleted, {} members expired",
                        stats->sources_marked_stale, stats->sources_deleted, stats->members_expired);
        }
      }
      lock.lock();
    }
  }
};

Result<std::unique_ptr<CoordinatorServer>> CoordinatorServer::Start(CoordinatorServerOptions options) {
  SW_RETURN_IF_ERROR(ValidateOptions(options));
  SW_RETURN_IF_ERROR(control::CheckGrpcNotInheritedByFork("starting a coordinator server"));
  control::PrepareGrpcRuntime();
  std::string host;
  int port = 0;
  SW_RETURN_IF_ERROR(SplitHostPort(options.listen_address, &host, &port));

  std::shared_ptr<grpc::ServerCredentials> creds;
  if (!options.tls_cert_file.empty()) {
    SW_ASSIGN_OR_RETURN(std::string cert, control::ReadPemFile(options.tls_cert_file, "TLS certificate"));
    SW_ASSIGN_OR_RETURN(std::string key, control::ReadPemFile(options.tls_key_file, "TLS private key"));
    SW_RETURN_IF_ERROR(control::CheckPemKind(cert, options.tls_cert_file, "TLS certificate", "CERTIFICATE"));
    SW_RETURN_IF_ERROR(control::CheckPemKind(key, options.tls_key_file, "TLS private key", "PRIVATE KEY"));
    grpc::SslServerCredentialsOptions ssl;
    ssl.pem_key_cert_pairs.push_back({key, cert});
    creds = grpc::SslServerCredentials(ssl);
  } else {
    creds = grpc::InsecureServerCredentials();
  }

  control::LeasePolicy policy;
  policy.source_stale_after_s = options.source_stale_after_s;
  policy.source_delete_after_s = options.source_delete_after_s;
  policy.source_mark_hold_s = options.source_mark_hold_s;
  policy.member_expire_after_s = options.member_expire_after_s;

  auto impl = std::make_unique<Impl>();
  std::string backend = "memory";
  if (options.redis_url.empty()) {
    impl->state = control::MakeInMemoryCoordinatorState(policy);
  } else {
    control::RedisStateOptions redis_options;
    redis_options.reply_spin_us = options.redis_reply_spin_us;
    SW_ASSIGN_OR_RETURN(auto st, control::ConnectRedisCoordinatorState(options.redis_url, policy, redis_options));
    impl->state = std::move(st);
    backend = "redis";
  }
  impl->core = std::make_unique<control::CoordinatorCore>(impl->state, options.token, backend);
  impl->rendezvous = std::make_unique<control::RendezvousService>(impl->core.get());
  impl->sources = std::make_unique<control::SourceRegistryService>(impl->core.get());
  impl->jobs = std::make_unique<control::JobsService>(impl->core.get());
  impl->reaper_interval_s = options.reaper_interval_s;

  grpc::ServerBuilder builder;
  // gRPC sets SO_REUSEPORT by default, which would let a second coordinator bind
  // a port that is in use; turn it off so that is an error.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.SetMaxReceiveMessageSize(control::kMaxRequestBytes);
  builder.SetMaxSendMessageSize(control::kMaxResponseBytes);
  builder.AddListeningPort(options.listen_address, creds, &impl->port);
  builder.RegisterService(impl->rendezvous.get());
  builder.RegisterService(impl->sources.get());
  builder.RegisterService(impl->jobs.get());
  if (options.metrics != nullptr) {
    SW_ASSIGN_OR_RETURN(auto interceptors, control::MakeRequestMetricsInterceptors(*options.metrics));
    builder.experimental().SetInterceptorCreators(std::move(interceptors));
    SW_ASSIGN_OR_RETURN(impl->sources_collector, control::AddSourceStateCollector(*options.metrics, impl->state));
  }
  impl->heartbeats = std::make_unique<control::HeartbeatLoop>(impl->core.get(), impl->sources.get(), impl->jobs.get(),
                                                              builder.AddCompletionQueue());
  impl->server = builder.BuildAndStart();
  if (impl->server == nullptr || impl->port == 0) {
    if (impl->server != nullptr) impl->server->Shutdown();
    impl->heartbeats->Shutdown();
    return IoError(fmt::format(
        "coordinator cannot listen on {} (port in use, or the address is not local{})", options.listen_address,
        options.tls_cert_file.empty() ? ""
                                      : ", or the TLS certificate and key do not parse or do not belong together: "
                                        "gRPC's log above says which"));
  }
  impl->dial_host = host;
  if (host.empty() || host == "0.0.0.0") impl->dial_host = "127.0.0.1";
  if (host == "::") impl->dial_host = "::1";
  impl->heartbeats->Start();
  Impl* raw = impl.get();
  impl->reaper = std::thread([raw] { raw->RunReaper(); });
  spdlog::debug("coordinator listening on {}:{} ({} state{})", impl->dial_host, impl->port, backend,
                options.tls_cert_file.empty() ? "" : ", TLS");
  return std::unique_ptr<CoordinatorServer>(new CoordinatorServer(std::move(impl)));
}

CoordinatorServer::CoordinatorServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

CoordinatorServer::~CoordinatorServer() {
  if (impl_ != nullptr && static_cast<long>(::getpid()) != impl_->started_in) {
    (void)impl_.release();  // a forked child's copy: left alone (see Impl::started_in)
    return;
  }
  Shutdown(0.2);
}

int CoordinatorServer::port() const { return impl_->port; }

std::string CoordinatorServer::state_id() const { return impl_->state->StateId(); }

std::string CoordinatorServer::address() const {
  if (impl_->dial_host.find(':') != std::string::npos) return fmt::format("[{}]:{}", impl_->dial_host, impl_->port);
  return fmt::format("{}:{}", impl_->dial_host, impl_->port);
}

void CoordinatorServer::Shutdown(double grace_s) {
  if (impl_->shut_down || static_cast<long>(::getpid()) != impl_->started_in) return;
  impl_->shut_down = true;
  impl_->core->Stop();  // waiting Gets answer "not found" at once
  if (!(grace_s >= 0) || !std::isfinite(grace_s)) grace_s = 0;
  impl_->server->Shutdown(
      std::chrono::system_clock::now() +
      std::chrono::duration_cast<std::chrono::system_clock::duration>(std::chrono::duration<double>(grace_s)));
  impl_->server->Wait();
  impl_->heartbeats->Shutdown();  // after the server, as gRPC requires for its queues
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->stop = true;
  }
  impl_->wake.notify_all();
  if (impl_->reaper.joinable()) impl_->reaper.join();
}

}  // namespace shardwire
