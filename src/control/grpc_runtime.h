// Process-wide settings the coordinator's gRPC server and clients need to run
// at speed with Debian's gRPC 1.51 / Abseil 20220623.
//
// gRPC 1.51 builds its locks (gpr_mu, grpc_core::Mutex) on absl::Mutex. Debian's
// Abseil is built without NDEBUG, so absl::Mutex runs its deadlock detector on
// every Lock(): it records lock-order edges in a global graph
// (absl::synchronization_internal::GraphCycles). perf of the coordinator under
// 10,000 heartbeats/s put 76% of the gRPC callback threads' CPU in
// GraphCycles::GetId. Release builds of Abseil default to
// absl::OnDeadlockCycle::kIgnore; PrepareGrpcRuntime() sets that mode
// (absl::SetMutexDeadlockDetectionMode, absl/synchronization/mutex.h), which only
// turns off the diagnostic, never any locking.
//
// Thread-safety: safe to call from any thread, any number of times (the first
// call does the work; later calls do nothing). The setting is process-wide.
#pragma once

namespace shardwire::control {

/// Applies the settings above once per process. Called by CoordinatorServer::Start
/// and CoordinatorClient::Connect before they create any gRPC object.
void PrepareGrpcRuntime();

}  // namespace shardwire::control
