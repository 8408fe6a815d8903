// Coordinator metrics (control/coordinator_metrics.h).
#include "control/coordinator_metrics.h"

#include <spdlog/spdlog.h>

#include "control/coordinator_service.h"

namespace shardwire::control {

std::string_view GrpcCodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK: return "OK";
    case grpc::StatusCode::CANCELLED: return "CANCELLED";
    case grpc::StatusCode::UNKNOWN: return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND: return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS: return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED: return "PERMISSION_DENIED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED: return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE: return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED: return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL: return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE: return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS: return "DATA_LOSS";
    case grpc::StatusCode::UNAUTHENTICATED: return "UNAUTHENTICATED";
    default: return "UNKNOWN";
  }
}

namespace {

// One per RPC: counts the call when its status is sent.
class RequestCounter final : public grpc::experimental::Interceptor {
 public:
  RequestCounter(CounterFamily* family, const char* method) : family_(family), method_(method ? method : "") {
    // "/shardwire.v1.Rendezvous/Put" -> "Rendezvous/Put".
    if (!method_.empty() && method_[0] == '/') method_.erase(0, 1);
    const auto slash = method_.find('/');
    const auto dot = method_.rfind('.', slash);
    if (slash != std::string::npos && dot != std::string::npos) method_.erase(0, dot + 1);
  }
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(grpc::experimental::InterceptionHookPoints::PRE_SEND_STATUS)) {
      family_->Labels({method_, std::string(GrpcCodeName(methods->GetSendStatus().error_code()))}).Increment();
    }
    methods->Proceed();
  }

 private:
  CounterFamily* family_;
  std::string method_;
};

class RequestCounterFactory final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit RequestCounterFactory(CounterFamily* family) : family_(family) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(grpc::experimental::ServerRpcInfo* info) override {
    return new RequestCounter(family_, info->method());
  }

 private:
  CounterFamily* family_;
};

}  // namespace

Result<std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>>
MakeRequestMetricsInterceptors(MetricsRegistry& registry) {
  SW_ASSIGN_OR_RETURN(CounterFamily * family,
                      registry.AddCounter("shardwire_coordinator_requests_total",
                                          "Coordinator RPCs answered, by method and gRPC status code.",
                                          {"method", "code"}));
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> out;
  out.push_back(std::make_unique<RequestCounterFactory>(family));
  return out;
}

Result<CollectorHandle> AddSourceStateCollector(MetricsRegistry& registry, std::shared_ptr<CoordinatorState> state) {
  return registry.AddGaugeCollector(
      "shardwire_coordinator_sources", "Registered weight sources by state (READY, STALE), read at scrape time.",
      {"state"}, [state]() -> std::vector<CollectedSample> {
        auto counts = state->CountSources(state->NowMs());
        if (!counts.ok()) {
          spdlog::warn("coordinator metrics: counting sources failed: {}", counts.status().ToString());
          return {};
        }
        return {{{std::string(SourceStateName(SourceState::kReady))}, static_cast<double>(counts->ready)},
                {{std::string(SourceStateName(SourceState::kStale))}, static_cast<double>(counts->stale)}};
      });
}

}  // namespace shardwire::control
