// Internal to the control layer: what a coordinator reports into a MetricsRegistry
// (CoordinatorServerOptions::metrics; names in docs/metrics.md).
//
// - shardwire_coordinator_requests_total{method,code}: every RPC the server answered, counted
//   by a gRPC server interceptor when the status is sent (method "Rendezvous/Put", code the
//   gRPC status name, e.g. "OK", "NOT_FOUND"). Covers the synchronous handlers and the
//   asynchronous heartbeats alike.
// - shardwire_coordinator_sources{state}: sources by state (READY / STALE), counted by the
//   state (CoordinatorState::CountSources: no record leaves it) when the registry renders.
#pragma once

#include <grpcpp/grpcpp.h>
#include <grpcpp/support/server_interceptor.h>

#include <memory>
#include <string>
#include <vector>

#include "control/coordinator_state.h"
#include "shardwire/metrics.h"

namespace shardwire::control {

/// The interceptor factories to install with ServerBuilder::experimental().SetInterceptorCreators.
/// Errors: registering the family (a name clash in `registry`).
Result<std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>>
MakeRequestMetricsInterceptors(MetricsRegistry& registry);

/// Registers the sources-by-state collector over `state` (kept alive by the collector until the
/// handle is destroyed). Errors: a name clash in `registry` (kAlreadyExists: one coordinator
/// per registry).
Result<CollectorHandle> AddSourceStateCollector(MetricsRegistry& registry, std::shared_ptr<CoordinatorState> state);

/// The gRPC status code's canonical name ("OK", "NOT_FOUND", ...).
std::string_view GrpcCodeName(grpc::StatusCode code);

}  // namespace shardwire::control
