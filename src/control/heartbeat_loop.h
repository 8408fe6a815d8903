// HeartbeatLoop: the coordinator's two heartbeat methods
// (SourceRegistry.Heartbeat, Jobs.HeartbeatMember) served with gRPC's
// asynchronous (completion-queue) API by ONE thread of their own.
//
// Why one thread on its own completion queue: a fleet's steady load is
// heartbeats, and their latency is what bench/coordinator_bench compares with
// raw Redis. gRPC 1.51's callback API runs handlers on two "nexting" threads
// per process (CompletionQueue::CallbackAlternativeCQ, clamp(cores / 2, 2, 16)
// threads) that poll one shared epoll set; after every response they wake each
// other (an eventfd write, futexes: strace showed ~15 extra syscalls and a
// second thread's wake-up per heartbeat). Measured on these 2 cores, a no-op
// unary call from another process took 62-65 us p50 on a callback server and
// 43 us on an async server polled by one thread, 63-83 us with two threads and
// ~100 us with three polling the same queue (docs/benchmarks_history.md, coordinator
// section). So exactly one thread polls this queue, and it never hands a
// heartbeat to another thread: the request is read, checked and answered on it.
//
// Batching: after each event the thread takes every further event that is
// ready at once (up to kMaxBatch) before it lets the state send anything
// (CoordinatorState::BeginHeartbeatBatch / EndHeartbeatBatch): on Redis the
// heartbeats of a batch go out as one pipelined write and their replies are
// read together (redis_pipeline.h), so the one thread keeps up with a fleet
// while a lone heartbeat still costs one Redis round trip and no thread switch.
// The Redis rounds block this thread (each bounded by the Redis timeout); the
// other methods run on the synchronous server's threads and are not delayed.
//
// Every heartbeat, in this order: bearer token (UNAUTHENTICATED, nothing
// changed), request limits (INVALID_ARGUMENT), one state call, its Status
// mapped with ToGrpcStatus (see coordinator_service.h).
//
// Lifetime: construct with the completion queue the ServerBuilder made
// (ServerBuilder::AddCompletionQueue) before BuildAndStart; Start() after it;
// Shutdown() after grpc::Server::Shutdown() returned (gRPC requires the
// server's queues to be shut down after the server) and before the services
// and the state are destroyed.
// Thread-safety: Start and Shutdown from one thread (the server's owner). The
// state's `done` callbacks must run on the loop thread or before Shutdown()
// returns; the coordinator's state does both (the loop is the only caller
// that submits heartbeats, so it leads every round).
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <mutex>
#include <thread>

#include "control/coordinator_service.h"

namespace shardwire::control {

class HeartbeatLoop {
 public:
  /// Events taken into one batch at most (then the batch is sent).
  static constexpr int kMaxBatch = 256;

  HeartbeatLoop(CoordinatorCore* core, SourceRegistryService* sources, JobsService* jobs,
                std::unique_ptr<grpc::ServerCompletionQueue> cq);
  ~HeartbeatLoop();  // calls Shutdown()

  /// Asks gRPC for the first calls and starts the thread.
  void Start();
  /// Shuts the queue down, drains it and joins the thread. Idempotent.
  void Shutdown();

  // One call in flight; the loop owns it (internal to heartbeat_loop.cc).
  class Call;

 private:
  friend class SourceHeartbeatCall;
  friend class MemberHeartbeatCall;
  void Run();
  /// Asks gRPC for the next call of the kind of `c`, unless shutting down.
  void Arm(Call* c);

  CoordinatorCore* core_;
  SourceRegistryService* sources_;
  JobsService* jobs_;
  std::unique_ptr<grpc::ServerCompletionQueue> cq_;
  std::mutex mu_;               // orders asking for calls against cq_->Shutdown()
  bool shutting_down_ = false;  // under mu_
  bool started_ = false;
  std::thread thread_;
};

}  // namespace shardwire::control
