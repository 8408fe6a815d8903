#include "control/coordinator_service.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <random>

#include "control/coordinator_codec.h"
#include "control/grpc_status.h"
#include "control/rendezvous_internal.h"
#include "control/state_id.h"

namespace shardwire::control {

using Clock = std::chrono::steady_clock;

bool ConstantTimeEquals(std::string_view a, std::string_view b) {
  // Every byte of `a` is compared (against b, or against itself when b is
  // shorter), so the time depends on the lengths only, never on where they differ.
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const unsigned char x = static_cast<unsigned char>(a[i]);
    const unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : static_cast<unsigned char>(~x);
    diff = static_cast<unsigned char>(diff | (x ^ y));
  }
  return diff == 0;
}

namespace {

std::string RandomInstance() {
  std::random_device rd;
  const std::uint64_t v = (static_cast<std::uint64_t>(rd()) << 32) ^ rd();
  return fmt::format("{:016x}", v);
}

grpc::Status Invalid(const Status& s) { return ToGrpcStatus(s); }

#define SW_GRPC_RETURN_IF_ERROR(expr)       \
  do {                                      \
    ::shardwire::Status sw_s_ = (expr);     \
    if (!sw_s_.ok()) return Invalid(sw_s_); \
  } while (0)

#define SW_AUTHORIZE(ctx)                          \
  do {                                             \
    grpc::Status sw_auth_ = core_->Authorize(ctx); \
    if (!sw_auth_.ok()) return sw_auth_;           \
  } while (0)

// For the methods whose meaning depends on earlier calls (rendezvous keys and
// counters, job membership): the token, then the client's state binding.
#define SW_AUTHORIZE_BOUND(ctx)                             \
  do {                                                      \
    SW_AUTHORIZE(ctx);                                      \
    grpc::Status sw_bound_ = core_->CheckStateBinding(ctx); \
    if (!sw_bound_.ok()) return sw_bound_;                  \
  } while (0)

}  // namespace

// ---------------------------------------------------------------------------
// CoordinatorCore

CoordinatorCore::CoordinatorCore(std::shared_ptr<CoordinatorState> state, std::string token, std::string backend)
    : state_(std::move(state)),
      token_(std::move(token)),
      expected_header_("Bearer " + token_),
      backend_(std::move(backend)),
      instance_(RandomInstance()) {}

grpc::Status CoordinatorCore::Authorize(const grpc::ServerContextBase* context) const {
  if (token_.empty()) return grpc::Status::OK;
  const auto& md = context->client_metadata();
  auto it = md.find("authorization");
  if (it == md.end()) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "missing bearer token (metadata 'authorization: Bearer <token>')");
  }
  const std::string_view got(it->second.data(), it->second.size());
  if (!ConstantTimeEquals(got, expected_header_)) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "wrong bearer token");
  }
  return grpc::Status::OK;
}

grpc::Status CoordinatorCore::CheckStateBinding(const grpc::ServerContextBase* context) const {
  const std::string bound = BoundStateId(context);
  if (bound.empty()) return grpc::Status::OK;  // an unbound call (or an older client)
  if (bound == state_->StateId()) return grpc::Status::OK;
  // The cached id may be stale: another coordinator on the same Redis may have noticed a loss
  // (and stored the new id) before this one's reaper did. Read it again before refusing.
  RefreshStateIdSoon();
  const std::string serving = state_->StateId();
  if (bound == serving) return grpc::Status::OK;
  return ToGrpcStatus(StateGone(bound, serving));
}

void CoordinatorCore::RefreshStateIdSoon() const {
  const std::int64_t now_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
          .count();
  std::int64_t last = last_state_id_refresh_ms_.load();
  if (now_ms - last < kStateIdRefreshMs) return;
  if (!last_state_id_refresh_ms_.compare_exchange_strong(last, now_ms)) return;  // another caller reads it
  (void)state_->RefreshStateId();
}

std::string CoordinatorCore::BoundStateId(const grpc::ServerContextBase* context) {
  const auto& md = context->client_metadata();
  auto it = md.find(kStateIdMetadataKey);
  if (it == md.end()) return {};
  return std::string(it->second.data(), it->second.size());
}

Result<std::uint64_t> CoordinatorCore::WaitingKvGeneration() {
  std::lock_guard<std::mutex> lock(generation_mu_);
  const Clock::time_point now = Clock::now();
  if (!generation_read_at_.has_value() || now - *generation_read_at_ >= std::chrono::milliseconds(kGenerationPollMs)) {
    generation_ = state_->KvGeneration();
    generation_read_at_ = Clock::now();  // after the read: a slow read is not read again at once
  }
  return generation_;
}

void CoordinatorCore::NotifyKvChanged() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++local_changes_;
  }
  changed_.notify_all();
}

std::uint64_t CoordinatorCore::local_changes() {
  std::lock_guard<std::mutex> lock(mu_);
  return local_changes_;
}

bool CoordinatorCore::WaitForLocalChange(std::uint64_t* seen, Clock::time_point until) {
  std::unique_lock<std::mutex> lock(mu_);
  changed_.wait_until(lock, until, [&] { return local_changes_ != *seen || stopping_.load(); });
  const bool changed = local_changes_ != *seen;
  *seen = local_changes_;
  return changed;
}

void CoordinatorCore::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_.store(true);
  }
  changed_.notify_all();
}

// ---------------------------------------------------------------------------
// Rendezvous

grpc::Status RendezvousService::Put(grpc::ServerContext* ctx, const v1::PutRequest* req, v1::PutResponse*) {
  SW_AUTHORIZE_BOUND(ctx);
  SW_GRPC_RETURN_IF_ERROR(control::ValidateKey(req->key()));
  SW_GRPC_RETURN_IF_ERROR(control::ValidateValueSize(req->value().size(), req->key()));
  const auto* b = reinterpret_cast<const std::byte*>(req->value().data());
  Status s = core_->state().Put(req->key(), std::span<const std::byte>(b, req->value().size()),
                                CoordinatorCore::BoundStateId(ctx));
  if (s.ok()) core_->NotifyKvChanged();
  return ToGrpcStatus(s);
}

grpc::Status RendezvousService::Get(grpc::ServerContext* ctx, const v1::GetRequest* req, v1::GetResponse* resp) {
  SW_AUTHORIZE_BOUND(ctx);
  SW_GRPC_RETURN_IF_ERROR(control::ValidateKey(req->key()));
  SW_GRPC_RETURN_IF_ERROR(ValidateWait(req->wait_s()));
  // Wait at most min(wait_s, kMaxServerWaitS) and end 20 ms before the call's
  // deadline, so the answer "not found" arrives before the client gives up.
  auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                     std::chrono::duration<double>(std::min(req->wait_s(), kMaxServerWaitS)));
  const auto call_deadline = ctx->deadline();
  const auto sys_now = std::chrono::system_clock::now();
  if (call_deadline < sys_now + std::chrono::hours(24 * 365)) {
    const auto left =
        std::chrono::duration_cast<Clock::duration>(call_deadline - sys_now) - std::chrono::milliseconds(20);
    deadline = std::min(deadline, Clock::now() + std::max(left, Clock::duration::zero()));
  }
  CoordinatorState& st = core_->state();
  std::uint64_t seen_local = core_->local_changes();
  std::optional<std::uint64_t> generation;
  for (;;) {
    auto gen = core_->WaitingKvGeneration();
    if (!gen.ok()) return ToGrpcStatus(gen.status());
    if (!generation.has_value() || *gen != *generation) {
      generation = *gen;
      auto value = st.Get(req->key());
      if (!value.ok()) return ToGrpcStatus(value.status());
      if (value->has_value()) {
        resp->set_found(true);
        resp->set_value(ToString(**value));
        return grpc::Status::OK;
      }
    }
    if (Clock::now() >= deadline || ctx->IsCancelled() || core_->stopping()) {
      // Nothing found: from the state the caller joined, or because that state is gone (a
      // flushed Redis between two reaper passes still has the old id cached here).
      if (Status joined = st.CheckStateId(CoordinatorCore::BoundStateId(ctx)); !joined.ok()) {
        return ToGrpcStatus(joined);
      }
      resp->set_found(false);
      return grpc::Status::OK;
    }
    // The state may be lost while this Get waits (a flushed Redis, seen by the reaper).
    if (grpc::Status bound = core_->CheckStateBinding(ctx); !bound.ok()) return bound;
    if (core_->WaitForLocalChange(&seen_local, std::min(deadline, Clock::now() + std::chrono::milliseconds(10)))) {
      generation.reset();  // a local Put/Add: re-read regardless of the generation
    }
  }
}

grpc::Status RendezvousService::Add(grpc::ServerContext* ctx, const v1::AddRequest* req, v1::AddResponse* resp) {
  SW_AUTHORIZE_BOUND(ctx);
  SW_GRPC_RETURN_IF_ERROR(control::ValidateKey(req->key()));
  if (req->request_id().size() > kMaxAddRequestIdBytes) {
    return grpc::Status(
        grpc::StatusCode::INVALID_ARGUMENT,
        fmt::format("Add: request_id of {} bytes (at most {})", req->request_id().size(), kMaxAddRequestIdBytes));
  }
  auto v = core_->state().Add(req->key(), req->delta(), req->request_id(), CoordinatorCore::BoundStateId(ctx));
  if (!v.ok()) return ToGrpcStatus(v.status());
  core_->NotifyKvChanged();
  resp->set_value(*v);
  return grpc::Status::OK;
}

grpc::Status RendezvousService::Ping(grpc::ServerContext* ctx, const v1::PingRequest*, v1::PingResponse* resp) {
  SW_AUTHORIZE(ctx);
  resp->set_server_instance(core_->instance());
  resp->set_state_backend(core_->backend());
  // Read from the store, not the cache: a client binds to what Ping says (a cached id could be
  // a lost state's that another coordinator on the same Redis already replaced).
  core_->RefreshStateIdSoon();
  resp->set_state_id(core_->state().StateId());
  resp->set_server_unix_ms(core_->NowMs());
  return grpc::Status::OK;
}

// ---------------------------------------------------------------------------
// Sources

grpc::Status SourceRegistryService::Register(grpc::ServerContext* ctx, const v1::RegisterSourceRequest* req,
                                             v1::RegisterSourceResponse* resp) {
  SW_AUTHORIZE(ctx);
  if (!req->has_source()) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "Register without a source");
  SW_GRPC_RETURN_IF_ERROR(ValidateSource(req->source()));
  if (!req->source().source_id().empty()) SW_GRPC_RETURN_IF_ERROR(ValidateProposedSourceId(req->source().source_id()));
  auto record = FromProto(req->source());
  if (!record.ok()) return Invalid(InvalidArgument(record.status().message()));
  auto stored = core_->state().RegisterSource(std::move(*record), core_->NowMs());
  if (!stored.ok()) return ToGrpcStatus(stored.status());
  ToProto(*stored, resp->mutable_source());
  return grpc::Status::OK;
}

void SourceRegistryService::ServeHeartbeat(const grpc::ServerContext& ctx, const v1::HeartbeatSourceRequest& req,
                                           v1::HeartbeatSourceResponse* resp, HeartbeatDone done) {
  if (grpc::Status auth = core_->Authorize(&ctx); !auth.ok()) return done(auth);
  if (Status valid = ValidateSourceId(req.source_id()); !valid.ok()) return done(ToGrpcStatus(valid));
  core_->state().HeartbeatSourceAsync(req.source_id(), core_->NowMs(),
                                      [resp, done = std::move(done)](Result<SourceHeartbeat> found) {
                                        if (!found.ok()) return done(ToGrpcStatus(found.status()));
                                        ToProto(*found, resp);
                                        done(grpc::Status::OK);
                                      });
}

grpc::Status SourceRegistryService::List(grpc::ServerContext* ctx, const v1::ListSourcesRequest* req,
                                         v1::ListSourcesResponse* resp) {
  SW_AUTHORIZE(ctx);
  SW_GRPC_RETURN_IF_ERROR(ValidateName(req->model_identity(), "model_identity filter", /*allow_empty=*/true));
  auto filter = FromProto(req->state());
  if (!filter.ok()) return ToGrpcStatus(filter.status());
  auto list = core_->state().ListSources(req->model_identity(), *filter, core_->NowMs());
  if (!list.ok()) return ToGrpcStatus(list.status());
  if (list->size() > kMaxListedSources) {
    return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                        fmt::format("{} sources match; a list holds at most {} (filter by model identity)",
                                    list->size(), kMaxListedSources));
  }
  for (const auto& r : *list) ToProto(r, resp->add_sources());
  return grpc::Status::OK;
}

grpc::Status SourceRegistryService::MarkStale(grpc::ServerContext* ctx, const v1::MarkSourceStaleRequest* req,
                                              v1::MarkSourceStaleResponse*) {
  SW_AUTHORIZE(ctx);
  SW_GRPC_RETURN_IF_ERROR(ValidateSourceId(req->source_id()));
  SW_GRPC_RETURN_IF_ERROR(ValidateReason(req->reason()));
  return ToGrpcStatus(core_->state().MarkSourceStale(req->source_id(), req->reason(), core_->NowMs(), req->hold()));
}

grpc::Status SourceRegistryService::Deregister(grpc::ServerContext* ctx, const v1::DeregisterSourceRequest* req,
                                               v1::DeregisterSourceResponse*) {
  SW_AUTHORIZE(ctx);
  SW_GRPC_RETURN_IF_ERROR(ValidateSourceId(req->source_id()));
  return ToGrpcStatus(core_->state().DeregisterSource(req->source_id()));
}

// ---------------------------------------------------------------------------
// Jobs

grpc::Status JobsService::Join(grpc::ServerContext* ctx, const v1::JoinJobRequest* req, v1::JoinJobResponse* resp) {
  SW_AUTHORIZE_BOUND(ctx);
  SW_GRPC_RETURN_IF_ERROR(ValidateName(req->job(), "job"));
  if (!req->has_member()) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "Join without a member");
  SW_GRPC_RETURN_IF_ERROR(ValidateMember(req->member()));
  auto member = FromProto(req->member());
  if (!member.ok()) return Invalid(InvalidArgument(member.status().message()));
  auto view =
      core_->state().JoinJob(req->job(), std::move(*member), core_->NowMs(), CoordinatorCore::BoundStateId(ctx));
  if (!view.ok()) return ToGrpcStatus(view.status());
  ToProto(*view, resp->mutable_job());
  return grpc::Status::OK;
}

void JobsService::ServeHeartbeatMember(const grpc::ServerContext& ctx, const v1::HeartbeatMemberRequest& req,
                                       HeartbeatDone done) {
  if (grpc::Status auth = core_->Authorize(&ctx); !auth.ok()) return done(auth);
  if (grpc::Status bound = core_->CheckStateBinding(&ctx); !bound.ok()) return done(bound);
  Status valid = ValidateName(req.job(), "job");
  if (valid.ok()) valid = ValidateName(req.member_id(), "member_id");
  if (!valid.ok()) return done(ToGrpcStatus(valid));
  core_->state().HeartbeatMemberAsync(
      req.job(), req.member_id(), core_->NowMs(), [done = std::move(done)](Status s) { done(ToGrpcStatus(s)); },
      CoordinatorCore::BoundStateId(&ctx));
}

grpc::Status JobsService::Leave(grpc::ServerContext* ctx, const v1::LeaveJobRequest* req, v1::LeaveJobResponse*) {
  SW_AUTHORIZE_BOUND(ctx);
  SW_GRPC_RETURN_IF_ERROR(ValidateName(req->job(), "job"));
  SW_GRPC_RETURN_IF_ERROR(ValidateName(req->member_id(), "member_id"));
  return ToGrpcStatus(
      core_->state().LeaveJob(req->job(), req->member_id(), core_->NowMs(), CoordinatorCore::BoundStateId(ctx)));
}

grpc::Status JobsService::Get(grpc::ServerContext* ctx, const v1::GetJobRequest* req, v1::GetJobResponse* resp) {
  SW_AUTHORIZE_BOUND(ctx);
  SW_GRPC_RETURN_IF_ERROR(ValidateName(req->job(), "job"));
  auto view = core_->state().GetJob(req->job(), core_->NowMs(), CoordinatorCore::BoundStateId(ctx));
  if (!view.ok()) return ToGrpcStatus(view.status());
  ToProto(*view, resp->mutable_job());
  return grpc::Status::OK;
}

grpc::Status JobsService::CommitVersion(grpc::ServerContext* ctx, const v1::CommitVersionRequest* req,
                                        v1::CommitVersionResponse*) {
  SW_AUTHORIZE_BOUND(ctx);
  SW_GRPC_RETURN_IF_ERROR(ValidateName(req->job(), "job"));
  SW_GRPC_RETURN_IF_ERROR(ValidateName(req->member_id(), "member_id"));
  return ToGrpcStatus(core_->state().CommitVersion(req->job(), req->member_id(), req->version(), core_->NowMs(),
                                                   CoordinatorCore::BoundStateId(ctx)));
}

}  // namespace shardwire::control
