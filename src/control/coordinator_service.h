// Internal to the control layer: the gRPC services of the coordinator
// (shardwire.v1.Rendezvous, SourceRegistry, Jobs) over one CoordinatorState.
//
// Every handler, in this order: checks the bearer token (UNAUTHENTICATED, nothing
// changed; compared in constant time), then, for the rendezvous and job methods,
// the client's state binding (FAILED_PRECONDITION when the state the client joined
// is gone; docs/coordinator.md, "State ids"), validates the request against the limits of
// coordinator_codec.h (INVALID_ARGUMENT with a message), then calls exactly one
// state method per mutation and maps its Status with ToGrpcStatus.
//
// Get waits on the server for at most min(wait_s, 30 s, the call's deadline): it is
// woken by Puts and Adds through this service and re-reads the state's KvGeneration
// at least every 10 ms (so Puts through another coordinator over the same Redis are
// seen too); a cancelled call or a stopping server ends the wait at once.
//
// Threads: the heartbeats (SourceRegistry.Heartbeat, Jobs.HeartbeatMember), the
// calls a fleet makes every second, are asynchronous (completion-queue) methods
// served by HeartbeatLoop (heartbeat_loop.h) on one thread of its own, through
// ServeHeartbeat / ServeHeartbeatMember below, which hand the state call to
// CoordinatorState::*Async (in memory: answered at once; Redis: the heartbeats
// of one loop batch in one pipelined round). Every other method is a
// synchronous handler (they are rare, and Get blocks by design for up to 30 s).
//
// Thread-safety: handlers run concurrently on gRPC's threads; Stop() may be called
// from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "control/coordinator_state.h"
#include "shardwire/v1/jobs.grpc.pb.h"
#include "shardwire/v1/rendezvous.grpc.pb.h"
#include "shardwire/v1/sources.grpc.pb.h"

namespace shardwire::control {

/// What the three services share: the state, the token and the waiters of Get.
class CoordinatorCore {
 public:
  /// `token`: empty disables authentication. `backend`: "memory" or "redis" (Ping).
  CoordinatorCore(std::shared_ptr<CoordinatorState> state, std::string token, std::string backend);

  /// OK, or UNAUTHENTICATED when the call lacks "authorization: Bearer <token>".
  /// Works for synchronous and asynchronous handlers' contexts alike.
  grpc::Status Authorize(const grpc::ServerContextBase* context) const;
  /// OK, or FAILED_PRECONDITION when the call is bound to a state (metadata
  /// kStateIdMetadataKey, state_id.h) other than the one served now: that state
  /// was lost. A call without the entry is not bound. A mismatch with the cached
  /// id first re-reads it from the store (RefreshStateIdSoon). Thread-safe.
  grpc::Status CheckStateBinding(const grpc::ServerContextBase* context) const;
  /// Re-reads the state id from the store (CoordinatorState::RefreshStateId), at most
  /// once per kStateIdRefreshMs across all callers (a client of a lost state calling
  /// in a loop, a burst of Connects): the others keep the cached id. Errors ignored
  /// (the cached id stays). Thread-safe.
  void RefreshStateIdSoon() const;
  /// Least milliseconds between two reads of the state id by RefreshStateIdSoon.
  static constexpr std::int64_t kStateIdRefreshMs = 100;
  /// The state id a call is bound to (its kStateIdMetadataKey entry), empty for an unbound
  /// call; what the service passes as the bound state methods' `state_id`
  /// (coordinator_state.h), so the store checks it again inside the change itself.
  static std::string BoundStateId(const grpc::ServerContextBase* context);
  CoordinatorState& state() { return *state_; }
  /// The state's clock (CoordinatorState::NowMs): unix ms, what every time-dependent call passes.
  std::int64_t NowMs() { return state_->NowMs(); }
  const std::string& instance() const { return instance_; }
  const std::string& backend() const { return backend_; }

  /// The state's KvGeneration for waiting Gets, read from the store at most once per
  /// kGenerationPollMs across all of them (Redis: one GET per 10 ms however many Gets wait,
  /// instead of one per waiter per 10 ms); the others get the outcome of that read, at most
  /// kGenerationPollMs old, a failed one included (so waiters of an unreachable Redis do
  /// not queue behind one another's timeouts). A change is then seen at most
  /// 2 x kGenerationPollMs after it (local Put/Add wake waiters at once, NotifyKvChanged).
  /// Errors: the state's KvGeneration's. Thread-safe.
  Result<std::uint64_t> WaitingKvGeneration();
  static constexpr std::int64_t kGenerationPollMs = 10;

  /// Wakes waiting Gets after a local Put/Add.
  void NotifyKvChanged();
  /// Waits until a local change, `max_wait` passes or Stop(); returns true when a
  /// local change happened since `*seen` (and updates `*seen`).
  bool WaitForLocalChange(std::uint64_t* seen, std::chrono::steady_clock::time_point until);
  std::uint64_t local_changes();
  /// Ends every wait now and makes later waits return at once.
  void Stop();
  bool stopping() const { return stopping_.load(); }

 private:
  std::shared_ptr<CoordinatorState> state_;
  const std::string token_;
  const std::string expected_header_;  // "Bearer <token>", built once
  const std::string backend_;
  const std::string instance_;
  std::mutex mu_;
  std::condition_variable changed_;
  std::uint64_t local_changes_ = 0;
  std::atomic<bool> stopping_{false};
  mutable std::atomic<std::int64_t> last_state_id_refresh_ms_{0};  // steady clock, RefreshStateIdSoon
  // WaitingKvGeneration's last read: when (steady clock), and its outcome.
  std::mutex generation_mu_;
  std::optional<std::chrono::steady_clock::time_point> generation_read_at_;
  Result<std::uint64_t> generation_ = Internal("not read yet");
};

class RendezvousService final : public v1::Rendezvous::Service {
 public:
  explicit RendezvousService(CoordinatorCore* core) : core_(core) {}
  grpc::Status Put(grpc::ServerContext* ctx, const v1::PutRequest* req, v1::PutResponse* resp) override;
  grpc::Status Get(grpc::ServerContext* ctx, const v1::GetRequest* req, v1::GetResponse* resp) override;
  grpc::Status Add(grpc::ServerContext* ctx, const v1::AddRequest* req, v1::AddResponse* resp) override;
  grpc::Status Ping(grpc::ServerContext* ctx, const v1::PingRequest* req, v1::PingResponse* resp) override;

 private:
  CoordinatorCore* core_;
};

/// What a heartbeat gets back: the call's status, exactly once.
using HeartbeatDone = std::function<void(grpc::Status)>;

class SourceRegistryService final : public v1::SourceRegistry::WithAsyncMethod_Heartbeat<v1::SourceRegistry::Service> {
 public:
  explicit SourceRegistryService(CoordinatorCore* core) : core_(core) {}
  grpc::Status Register(grpc::ServerContext* ctx, const v1::RegisterSourceRequest* req,
                        v1::RegisterSourceResponse* resp) override;
  /// SourceRegistry.Heartbeat (run by HeartbeatLoop): token, then the source id,
  /// then CoordinatorState::HeartbeatSourceAsync; `resp` (which must live until `done`
  /// runs) gets what the heartbeat found, then `done` the status (at once when
  /// refused). Same thread rules as that state call.
  void ServeHeartbeat(const grpc::ServerContext& ctx, const v1::HeartbeatSourceRequest& req,
                      v1::HeartbeatSourceResponse* resp, HeartbeatDone done);
  grpc::Status List(grpc::ServerContext* ctx, const v1::ListSourcesRequest* req,
                    v1::ListSourcesResponse* resp) override;
  grpc::Status MarkStale(grpc::ServerContext* ctx, const v1::MarkSourceStaleRequest* req,
                         v1::MarkSourceStaleResponse* resp) override;
  grpc::Status Deregister(grpc::ServerContext* ctx, const v1::DeregisterSourceRequest* req,
                          v1::DeregisterSourceResponse* resp) override;

 private:
  CoordinatorCore* core_;
};

class JobsService final : public v1::Jobs::WithAsyncMethod_HeartbeatMember<v1::Jobs::Service> {
 public:
  explicit JobsService(CoordinatorCore* core) : core_(core) {}
  grpc::Status Join(grpc::ServerContext* ctx, const v1::JoinJobRequest* req, v1::JoinJobResponse* resp) override;
  /// Jobs.HeartbeatMember (run by HeartbeatLoop): token, job and member names,
  /// then CoordinatorState::HeartbeatMemberAsync; `done` as ServeHeartbeat.
  void ServeHeartbeatMember(const grpc::ServerContext& ctx, const v1::HeartbeatMemberRequest& req, HeartbeatDone done);
  grpc::Status Leave(grpc::ServerContext* ctx, const v1::LeaveJobRequest* req, v1::LeaveJobResponse* resp) override;
  grpc::Status Get(grpc::ServerContext* ctx, const v1::GetJobRequest* req, v1::GetJobResponse* resp) override;
  grpc::Status CommitVersion(grpc::ServerContext* ctx, const v1::CommitVersionRequest* req,
                             v1::CommitVersionResponse* resp) override;

 private:
  CoordinatorCore* core_;
};

/// Constant-time equality of two byte strings (time depends only on the lengths).
bool ConstantTimeEquals(std::string_view a, std::string_view b);

}  // namespace shardwire::control
