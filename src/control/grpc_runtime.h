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
//
// gRPC and fork(): gRPC's threads (timers, executors) do not exist in a child forked without exec,
// and its pollers and locks are left as the parent's threads had them: a call there waited in
// epoll without end, deadlines included (a vLLM engine forks its workers by default). The check
// below turns that into an error at once. It knows which process started gRPC through Shardwire
// from the pid PrepareGrpcRuntime records.
#pragma once

#include <string_view>

#include "shardwire/status.h"

namespace shardwire::control {

/// Applies the settings above once per process and records this process as the one that
/// started gRPC. Called by CoordinatorServer::Start and CoordinatorClient::Connect before they
/// create any gRPC object (after CheckGrpcNotInheritedByFork).
void PrepareGrpcRuntime();

/// OK when gRPC may be used in this process: never started, started by this process, or shut
/// down (no channel or server left) before this process was forked. kFailedPrecondition, naming
/// `what` and both processes, when gRPC was running in the parent this process was forked from.
/// Thread-safe.
Status CheckGrpcNotInheritedByFork(std::string_view what);

/// kFailedPrecondition naming `what` and both processes (the message the check above and a
/// client used in a forked child give), for an object made in process `created_in`.
Status UsedAcrossFork(std::string_view what, long created_in);

}  // namespace shardwire::control
