#include "control/grpc_runtime.h"

#include <absl/synchronization/mutex.h>
#include <fmt/format.h>
#include <grpc/grpc.h>
#include <unistd.h>

#include <atomic>
#include <mutex>

namespace shardwire::control {

namespace {
// The process that last started gRPC through Shardwire (0: none). Process-wide, as gRPC is.
std::atomic<long> grpc_started_in{0};
}  // namespace

void PrepareGrpcRuntime() {
  static std::once_flag once;
  std::call_once(once, [] { absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore); });
  grpc_started_in.store(static_cast<long>(::getpid()));
}

Status UsedAcrossFork(std::string_view what, long created_in) {
  return FailedPrecondition(fmt::format(
      "{} in process {}, which was forked from process {} while gRPC ran there: gRPC does not survive a fork "
      "without exec (a call would wait without end). Create coordinator clients only in processes that did not "
      "inherit them (before the parent connects, or in the child only), or start workers with spawn "
      "(multiprocessing 'spawn'; vLLM: VLLM_WORKER_MULTIPROC_METHOD=spawn)",
      what, ::getpid(), created_in));
}

Status CheckGrpcNotInheritedByFork(std::string_view what) {
  const long started = grpc_started_in.load();
  if (started == 0 || started == static_cast<long>(::getpid())) return Status::Ok();
  if (grpc_is_initialized() == 0) return Status::Ok();  // the parent had shut it down
  return UsedAcrossFork(what, started);
}

}  // namespace shardwire::control
