#include "control/heartbeat_loop.h"

#include <chrono>

#include "control/grpc_status.h"

namespace shardwire::control {

// A call object lives from asking gRPC for a call until its Finish tag comes back:
// Proceed(ok) first gets the request (or ok = false: the server shuts down, no
// call), then, after Finish, the end of the call.
class HeartbeatLoop::Call {
 public:
  explicit Call(HeartbeatLoop* loop) : loop_(loop) {}
  virtual ~Call() = default;
  /// A new object of the same kind, to wait for the next call.
  virtual Call* Another() const = 0;
  /// Asks gRPC for one call of this kind, delivered to `cq` with this object as tag.
  virtual void Request(grpc::ServerCompletionQueue* cq) = 0;
  /// Handles the request; ends with Finish().
  virtual void Serve() = 0;

  void Proceed(bool ok) {
    if (finishing_ || !ok) {
      delete this;  // the call ended (or there was none: shutting down)
      return;
    }
    loop_->Arm(Another());
    // A heartbeat whose caller gave up already (its deadline passed while it waited in the
    // queue, e.g. behind a batch stuck on an unreachable Redis) is answered without touching
    // the state: a backlog drains at once instead of paying a Redis round trip per call.
    if (ctx_.deadline() < std::chrono::system_clock::now()) {
      Finish(grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "the call's deadline passed before it was served"));
      return;
    }
    Serve();
  }

 protected:
  void Finish(const grpc::Status& status) {
    finishing_ = true;
    Respond(status);
  }
  virtual void Respond(const grpc::Status& status) = 0;

  HeartbeatLoop* loop_;
  grpc::ServerContext ctx_;

 private:
  bool finishing_ = false;
};

class SourceHeartbeatCall final : public HeartbeatLoop::Call {
 public:
  using Call::Call;
  Call* Another() const override { return new SourceHeartbeatCall(loop_); }
  void Request(grpc::ServerCompletionQueue* cq) override {
    loop_->sources_->RequestHeartbeat(&ctx_, &req_, &writer_, cq, cq, this);
  }
  void Serve() override {
    loop_->sources_->ServeHeartbeat(ctx_, req_, &resp_, [this](grpc::Status s) { Finish(s); });
  }

 private:
  void Respond(const grpc::Status& status) override { writer_.Finish(resp_, status, this); }
  v1::HeartbeatSourceRequest req_;
  v1::HeartbeatSourceResponse resp_;
  grpc::ServerAsyncResponseWriter<v1::HeartbeatSourceResponse> writer_{&ctx_};
};

class MemberHeartbeatCall final : public HeartbeatLoop::Call {
 public:
  using Call::Call;
  Call* Another() const override { return new MemberHeartbeatCall(loop_); }
  void Request(grpc::ServerCompletionQueue* cq) override {
    loop_->jobs_->RequestHeartbeatMember(&ctx_, &req_, &writer_, cq, cq, this);
  }
  void Serve() override {
    loop_->jobs_->ServeHeartbeatMember(ctx_, req_, [this](grpc::Status s) { Finish(s); });
  }

 private:
  void Respond(const grpc::Status& status) override { writer_.Finish(resp_, status, this); }
  v1::HeartbeatMemberRequest req_;
  v1::HeartbeatMemberResponse resp_;
  grpc::ServerAsyncResponseWriter<v1::HeartbeatMemberResponse> writer_{&ctx_};
};

HeartbeatLoop::HeartbeatLoop(CoordinatorCore* core, SourceRegistryService* sources, JobsService* jobs,
                             std::unique_ptr<grpc::ServerCompletionQueue> cq)
    : core_(core), sources_(sources), jobs_(jobs), cq_(std::move(cq)) {}

HeartbeatLoop::~HeartbeatLoop() { Shutdown(); }

void HeartbeatLoop::Arm(Call* c) {
  std::lock_guard lock(mu_);
  if (shutting_down_) {
    delete c;
    return;
  }
  c->Request(cq_.get());
}

void HeartbeatLoop::Start() {
  started_ = true;
  Arm(new SourceHeartbeatCall(this));
  Arm(new MemberHeartbeatCall(this));
  thread_ = std::thread([this] { Run(); });
}

void HeartbeatLoop::Run() {
  void* tag = nullptr;
  bool ok = false;
  CoordinatorState& state = core_->state();
  while (cq_->Next(&tag, &ok)) {
    state.BeginHeartbeatBatch();
    static_cast<Call*>(tag)->Proceed(ok);
    for (int n = 1; n < kMaxBatch; ++n) {
      // Only what is ready now: a lone heartbeat is never delayed.
      if (cq_->AsyncNext(&tag, &ok, gpr_time_0(GPR_CLOCK_MONOTONIC)) != grpc::CompletionQueue::GOT_EVENT) break;
      static_cast<Call*>(tag)->Proceed(ok);
    }
    state.EndHeartbeatBatch();
  }
}

void HeartbeatLoop::Shutdown() {
  {
    std::lock_guard lock(mu_);
    if (shutting_down_) return;
    shutting_down_ = true;
    cq_->Shutdown();
  }
  if (started_ && thread_.joinable()) {
    thread_.join();
  } else {
    void* tag = nullptr;
    bool ok = false;
    while (cq_->Next(&tag, &ok)) static_cast<Call*>(tag)->Proceed(false);
  }
}

}  // namespace shardwire::control
