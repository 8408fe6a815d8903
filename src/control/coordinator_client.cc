// CoordinatorClient (coordinator.h).
//
// Retries, in two layers:
//   - inside one attempt, gRPC's own retry policy (service config below) retries
//     UNAVAILABLE up to 5 times with 50 ms .. 1 s exponential backoff (not for JoinJob,
//     LeaveJob, DeregisterSource: their repeats are resolved by the call itself);
//   - around attempts, Call() keeps retrying UNAVAILABLE with bounded exponential
//     backoff (50 ms doubling to 1 s) until unavailable_timeout_s has passed since
//     the first attempt, then returns kUnavailable naming the address; calls
//     safe to repeat are also sent again after an attempt's deadline passed
//     (CoordinatorClientOptions::call_timeout_s says when). gRPC's
//     policy alone cannot do this: it caps attempts at 5 and has no total-time
//     bound. The channel itself reconnects (reconnect backoff 100 ms .. 1 s), which
//     is how a client survives a coordinator restart.
// State binding: the rendezvous and job calls carry the state id the client saw at
// Connect (metadata "shardwire-state-id"); a coordinator serving another state
// (the one joined was lost) refuses them with FAILED_PRECONDITION, so a job fails
// at its next call instead of waiting for keys that no longer exist.
// Every attempt carries a deadline: call_timeout_s, plus the server-side wait for
// Get, plus time for the payload at a slow 4 MB/s (Put: its value; Get: the
// largest value, 16 s), so a 64 MiB value does not miss its deadline on a loaded
// machine while a dead coordinator is still noticed. RegisterSource, HeartbeatSource
// and DeregisterSource also take a bound for the whole call (retries and attempt
// deadlines both cut to it), so a source's heartbeat thread and shutdown stay
// bounded by the source's own options, not by unavailable_timeout_s.
#include <fmt/format.h>
#include <google/protobuf/util/message_differencer.h>
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <iterator>
#include <limits>
#include <mutex>
#include <string_view>
#include <thread>

#include "control/bearer_token.h"
#include "control/coordinator_codec.h"
#include "control/grpc_runtime.h"
#include "control/grpc_status.h"
#include "control/pem_file.h"
#include "control/rendezvous_internal.h"
#include "control/state_id.h"
#include "shardwire/coordinator.h"
#include "shardwire/v1/jobs.grpc.pb.h"
#include "shardwire/v1/rendezvous.grpc.pb.h"
#include "shardwire/v1/sources.grpc.pb.h"

namespace shardwire {

namespace {

using Clock = std::chrono::steady_clock;

/// Longest server-side wait a client asks for in one Get RPC (seconds).
constexpr double kGetSliceS = 5;
/// Slowest transfer rate (bytes/s) an attempt's deadline allows for the payload it sends
/// on a loaded machine: a 64 MiB rendezvous value Put gets 16 s on top of call_timeout_s.
/// (A Get cannot know its value's size; its attempts get call_timeout_s: see Get.)
constexpr double kSlowestPayloadBytesPerS = 4e6;

// Join, Leave and Deregister get no gRPC retry policy (a method's own entry wins over its
// service's): an UNAVAILABLE after the coordinator applied one of them must reach Call, which
// then knows a later kAlreadyExists or kNotFound may answer its own earlier attempt.
constexpr char kServiceConfig[] = R"({
  "methodConfig": [{
    "name": [{"service": "shardwire.v1.Rendezvous"}, {"service": "shardwire.v1.SourceRegistry"},
             {"service": "shardwire.v1.Jobs"}],
    "retryPolicy": {
      "maxAttempts": 5,
      "initialBackoff": "0.05s",
      "maxBackoff": "1s",
      "backoffMultiplier": 2,
      "retryableStatusCodes": ["UNAVAILABLE"]
    }
  }, {
    "name": [{"service": "shardwire.v1.Jobs", "method": "Join"}, {"service": "shardwire.v1.Jobs", "method": "Leave"},
             {"service": "shardwire.v1.SourceRegistry", "method": "Deregister"}]
  }]
})";

// The name resolvers of gRPC C++ 1.51 (doc/naming.md): an address starting with one is a target
// URI, not HOST:PORT.
constexpr std::string_view kGrpcSchemes[] = {"dns:", "unix:", "unix-abstract:", "ipv4:", "ipv6:", "vsock:"};

// A per-call bound: > 0 (+inf: none beyond the client's options); NaN, 0 and negatives
// are refused.
Status ValidateCallBound(double timeout_s, std::string_view method) {
  if (timeout_s > 0) return Status::Ok();
  return InvalidArgument(fmt::format("{}: timeout_s must be > 0 s (or +inf), got {}", method, timeout_s));
}

Clock::duration Seconds(double s) {
  return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s));
}

// Whether a call's meaning depends on the state the client joined (rendezvous
// keys and counters, job membership): such calls carry the state id, and the
// coordinator refuses them with FAILED_PRECONDITION once that state is gone.
enum class Binding { kUnbound, kJoinedState };

// How Impl::Call runs one call. (At namespace scope: clang 14 refuses a nested struct's
// default member initializers in a default argument of the enclosing class.)
struct CallOptions {
  double extra_s = 0;  // seconds added to each attempt's deadline (server-side waits, payload)
  Binding binding = Binding::kUnbound;
  // Seconds the whole call may take, retries included (+inf: bounded by
  // unavailable_timeout_s and the attempt deadline alone).
  double bound_s = std::numeric_limits<double>::infinity();
  // The call may be sent again after an attempt whose deadline passed (DEADLINE_EXCEEDED),
  // although the coordinator may have applied it: true for calls whose repetition changes
  // nothing (Put, Get, Add with its request id, heartbeats, reads, a version commit), false
  // for Register/Deregister/Join/Leave (a second registration, or NOT_FOUND for a
  // deregistration that did happen).
  bool resend_after_deadline = false;
  // A coordinator that never answered (two attempts in a row, the second sent even past the
  // bound) is kUnavailable rather than kTimedOut: for Get, whose kTimedOut means "the key did
  // not appear in time", so that a caller polling a key (Python's get(key, inf), membership
  // and metadata waits) stops on a silent coordinator instead of taking it for a missing key.
  bool silence_is_unavailable = false;
  // Set true when an attempt failed in a way that may have reached the coordinator (an
  // UNAVAILABLE from a dropped connection, a passed deadline) and the call was sent again:
  // a later refusal may then answer this call's own earlier attempt (JoinJob, LeaveJob).
  bool* sent_again = nullptr;
  // Asked between attempts, at least every kInterruptPollSeconds of a pause (Connect's Ping:
  // CoordinatorClientOptions::interrupt); a non-OK status ends the call with it.
  const std::function<Status()>* interrupt = nullptr;
};

// How often CallOptions::interrupt is asked while a call waits to retry, seconds.
constexpr double kInterruptPollSeconds = 0.1;

}  // namespace

struct CoordinatorClient::Impl {
  CoordinatorClientOptions options;
  // The process that connected: gRPC does not survive a fork, so a call from a child is refused.
  long connected_in = static_cast<long>(::getpid());
  // Request ids: 128 random bits per client (as a state id is made) + a counter, as hex.
  std::mutex id_mu;
  std::string id_prefix;
  std::uint64_t id_counter = 0;
  std::string NextRequestId() {
    std::lock_guard<std::mutex> lock(id_mu);
    if (id_prefix.empty()) id_prefix = control::NewStateId();
    return fmt::format("{}-{:x}", id_prefix, ++id_counter);
  }
  std::string auth_header;  // "Bearer <token>" or empty
  // The state this client joined (PingResponse.state_id at Connect; empty from a
  // coordinator that predates state ids). Set once before the client is shared.
  std::string state_id;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::Rendezvous::Stub> rendezvous;
  std::unique_ptr<v1::SourceRegistry::Stub> sources;
  std::unique_ptr<v1::Jobs::Stub> jobs;

  // Runs `rpc(context)` with retries of UNAVAILABLE as described above.
  template <typename Rpc>
  Status Call(std::string_view method, Rpc&& rpc, CallOptions call = {}) {
    if (static_cast<long>(::getpid()) != connected_in) {
      return control::UsedAcrossFork(
          fmt::format("coordinator {} through a client of {} connected before the fork", method, options.address),
          connected_in);
    }
    const auto start = Clock::now();
    const bool bounded = std::isfinite(call.bound_s);
    const double retry_s = bounded ? std::min(options.unavailable_timeout_s, call.bound_s)  //
                                   : options.unavailable_timeout_s;
    const auto give_up = start + Seconds(retry_s);
    auto backoff = std::chrono::milliseconds(50);
    bool resent_after_deadline = false;
    for (;;) {
      grpc::ClientContext ctx;
      // A resend after a passed deadline gets twice the deadline: a coordinator that was itself
      // stopped past the first deadline may, once running again, judge a request that waited for
      // it against the time it last ran and answer DEADLINE_EXCEEDED at once (gRPC C++ 1.51:
      // with equal deadlines, in 4 of 13 test runs beside a full build, the resend expired the
      // moment the coordinator resumed).
      double attempt_s = (options.call_timeout_s + call.extra_s) * (resent_after_deadline ? 2 : 1);
      if (bounded) {
        const double spent_s = std::chrono::duration<double>(Clock::now() - start).count();
        const double clipped_s = std::min(attempt_s, std::max(0.0, call.bound_s - spent_s));
        // The one resend of a call whose silence is kUnavailable is a real attempt, however little
        // of the bound is left (a client resumed just before its bound must not get a resend of
        // milliseconds, which the coordinator cannot answer: it ends a Get's wait 20 ms early).
        attempt_s = resent_after_deadline && call.silence_is_unavailable
                        ? std::max(options.call_timeout_s + call.extra_s, clipped_s)
                        : clipped_s;
      }
      ctx.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::duration_cast<std::chrono::system_clock::duration>(
                           std::chrono::duration<double>(attempt_s)));
      if (!auth_header.empty()) ctx.AddMetadata("authorization", auth_header);
      if (call.binding == Binding::kJoinedState && !state_id.empty()) {
        ctx.AddMetadata(control::kStateIdMetadataKey, state_id);
      }
      grpc::Status st = rpc(ctx);
      const auto now = Clock::now();
      if (st.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED && call.resend_after_deadline) {
        // No answer within the attempt's deadline: a coordinator that is stopped or
        // overloaded, or this process was not running while the deadline passed (SIGSTOP,
        // a debugger, a paused VM, a CPU-starved container) and the answer may be waiting.
        // Sent again, with a fresh deadline, while unavailable_timeout_s (or the call's
        // bound) allows, and once in any case, so that a caller that was itself stopped
        // longer than unavailable_timeout_s gets one real attempt after it resumes.
        const bool bound_left = !bounded || std::chrono::duration<double>(now - start).count() < call.bound_s;
        // A call whose silence is kUnavailable gets its one resend even past its bound: the
        // first deadline may have passed while this process was not running (SIGSTOP, a paused
        // VM), which is no sign of a silent coordinator; only a resend unanswered too is.
        const bool one_real_attempt = call.silence_is_unavailable && !resent_after_deadline;
        if ((bound_left || one_real_attempt) && (now < give_up || !resent_after_deadline)) {
          resent_after_deadline = true;
          if (call.sent_again != nullptr) *call.sent_again = true;
          continue;
        }
        std::string message = fmt::format(
            "coordinator {} at {} did not answer within an attempt's deadline ({:.1f} s; "
            "gave up after {:.1f} s): {}",
            method, options.address, attempt_s, std::chrono::duration<double>(now - start).count(), st.error_message());
        return call.silence_is_unavailable ? Unavailable(std::move(message)) : TimedOut(std::move(message));
      }
      if (st.error_code() != grpc::StatusCode::UNAVAILABLE) return control::FromGrpcStatus(st, method, options.address);
      if (now >= give_up) {
        return Unavailable(fmt::format("coordinator at {} is unavailable ({} gave up after {:.1f} s): {}",
                                       options.address, method, std::chrono::duration<double>(now - start).count(),
                                       st.error_message()));
      }
      // Let the channel reconnect (its own backoff), but never past give_up; with an
      // interrupt hook, in slices of kInterruptPollSeconds with the hook asked after each.
      const auto pause = std::min<Clock::duration>(backoff, give_up - now);
      const auto pause_end = std::min(give_up, now + pause);
      for (;;) {
        if (call.interrupt != nullptr && *call.interrupt) {
          if (Status stop = (*call.interrupt)(); !stop.ok()) {
            return stop.WithContext(fmt::format("coordinator {} at {}", method, options.address));
          }
        }
        const auto slice_start = Clock::now();
        if (slice_start >= pause_end) break;
        const auto slice_end =
            call.interrupt != nullptr ? std::min(pause_end, slice_start + Seconds(kInterruptPollSeconds)) : pause_end;
        channel->WaitForConnected(
            std::chrono::system_clock::now() +
            std::chrono::duration_cast<std::chrono::system_clock::duration>(slice_end - slice_start));
        std::this_thread::sleep_until(slice_end);  // WaitForConnected returns early once connected
        if (call.interrupt == nullptr) break;
      }
      backoff = std::min(backoff * 2, std::chrono::milliseconds(1000));
      if (call.sent_again != nullptr) *call.sent_again = true;
    }
  }
};

Result<std::unique_ptr<CoordinatorClient>> CoordinatorClient::Connect(CoordinatorClientOptions options) {
  if (options.address.empty()) return InvalidArgument("coordinator address is empty");
  // HOST:PORT (gRPC target URIs with a scheme pass as they are): gRPC would take a port past
  // 65535 modulo 2^16 and reach another service.
  const bool uri = std::any_of(std::begin(kGrpcSchemes), std::end(kGrpcSchemes),
                               [&](std::string_view scheme) { return options.address.rfind(scheme, 0) == 0; });
  if (!uri && options.address.find(':') == std::string::npos) {
    // gRPC would dial port 0 (or 443) and retry for unavailable_timeout_s before failing.
    return InvalidArgument(fmt::format("coordinator address '{}' has no port (HOST:PORT)", options.address));
  }
  if (!uri) {
    const std::string port = options.address.substr(options.address.rfind(':') + 1);
    if (port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos ||
        std::stoi(port) < 1 || std::stoi(port) > 65535) {
      return InvalidArgument(
          fmt::format("coordinator address '{}': the port '{}' is not a number in 1..65535", options.address, port));
    }
  }
  SW_RETURN_IF_ERROR(
      control::CheckGrpcNotInheritedByFork(fmt::format("connecting a coordinator client to {}", options.address)));
  control::PrepareGrpcRuntime();
  // Both become nanosecond deadlines (call_timeout_s doubled on a resend): beyond
  // kMaxCoordinatorTimeS they would overflow.
  if (!(options.call_timeout_s > 0 && options.call_timeout_s <= kMaxCoordinatorTimeS)) {
    return InvalidArgument(
        fmt::format("coordinator client option call_timeout_s is {} s; it must be > 0 and at most {:g} s",
                    options.call_timeout_s, kMaxCoordinatorTimeS));
  }
  if (!(options.unavailable_timeout_s >= 0 && options.unavailable_timeout_s <= kMaxCoordinatorTimeS)) {
    return InvalidArgument(
        fmt::format("coordinator client option unavailable_timeout_s is {} s; it must be >= 0 and at most {:g} s",
                    options.unavailable_timeout_s, kMaxCoordinatorTimeS));
  }
  auto impl = std::make_unique<Impl>();
  std::string token = options.token;
  if (token.empty()) {
    token = control::TokenFromEnvironment();
    SW_RETURN_IF_ERROR(control::CheckBearerToken(token, "SHARDWIRE_TOKEN"));
  } else {
    SW_RETURN_IF_ERROR(
        control::CheckBearerToken(token, "the token option (CoordinatorClientOptions::token, Python token=)"));
  }
  if (!token.empty()) impl->auth_header = "Bearer " + token;

  std::shared_ptr<grpc::ChannelCredentials> creds;
  std::string root_cert_file = options.tls_root_cert_file;
  if (root_cert_file.empty()) {
    if (const char* env = std::getenv(kTlsRootCertEnvironmentVariable); env != nullptr) root_cert_file = env;
  }
  if (!root_cert_file.empty()) {
    SW_ASSIGN_OR_RETURN(std::string pem, control::ReadPemFile(root_cert_file, "TLS root certificate"));
    SW_RETURN_IF_ERROR(control::CheckPemKind(pem, root_cert_file, "TLS root certificate", "CERTIFICATE"));
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = std::move(pem);
    creds = grpc::SslCredentials(ssl);
  } else {
    creds = grpc::InsecureChannelCredentials();
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(control::kMaxResponseBytes);
  args.SetMaxSendMessageSize(control::kMaxRequestBytes);
  args.SetServiceConfigJSON(kServiceConfig);
  args.SetInt(GRPC_ARG_ENABLE_RETRIES, 1);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  // Each client gets its own connection (not shared with other clients of the
  // same process), so one client's broken connection never stalls another.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  impl->channel = grpc::CreateCustomChannel(options.address, creds, args);
  impl->rendezvous = v1::Rendezvous::NewStub(impl->channel);
  impl->sources = v1::SourceRegistry::NewStub(impl->channel);
  impl->jobs = v1::Jobs::NewStub(impl->channel);
  // Connect's alone: never kept (a later call from another thread must not run the hook).
  const std::function<Status()> connect_interrupt = std::move(options.interrupt);
  options.interrupt = nullptr;
  impl->options = std::move(options);

  v1::PingRequest req;
  v1::PingResponse resp;
  Impl* raw = impl.get();
  if (Status pinged = raw->Call(
          "Ping", [&](grpc::ClientContext& ctx) { return raw->rendezvous->Ping(&ctx, req, &resp); },
          CallOptions{.interrupt = &connect_interrupt});
      !pinged.ok()) {
    // What the user can change, when the symptom points at it: gRPC says only "Socket closed"
    // to a plaintext client of a TLS coordinator, and "missing bearer token" to a client with none.
    if (pinged.code() == ErrorCode::kUnavailable && root_cert_file.empty() &&
        pinged.message().find("Socket closed") != std::string::npos) {
      return Unavailable(
          fmt::format("{} (this client speaks plaintext; if the coordinator serves TLS, name its CA "
                      "certificate: {} or the tls_root_cert_file option)",
                      pinged.message(), kTlsRootCertEnvironmentVariable));
    }
    if (pinged.code() == ErrorCode::kUnavailable && !root_cert_file.empty() &&
        raw->options.tls_root_cert_file.empty() && pinged.message().find("andshake") != std::string::npos) {
      return Unavailable(
          fmt::format("{} ({} is set, so this client speaks TLS; a plaintext coordinator (an "
                      "in-process one, `serve` without --tls-cert) refuses it: unset the variable)",
                      pinged.message(), kTlsRootCertEnvironmentVariable));
    }
    if (pinged.code() == ErrorCode::kUnauthenticated && raw->auth_header.empty()) {
      return Unauthenticated(
          fmt::format("{} (this client sends no token: set SHARDWIRE_TOKEN or the token option)", pinged.message()));
    }
    return pinged;
  }
  if (!resp.state_id().empty() && !control::IsStateId(resp.state_id())) {
    // It is sent back as metadata on every bound call: never send what the server mangled.
    return CorruptData(fmt::format("coordinator at {} answered Ping with a malformed state id ({} bytes, not 32 "
                                   "lowercase hex digits)",
                                   raw->options.address, resp.state_id().size()));
  }
  raw->state_id = resp.state_id();
  return std::unique_ptr<CoordinatorClient>(new CoordinatorClient(std::move(impl)));
}

CoordinatorClient::CoordinatorClient(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CoordinatorClient::~CoordinatorClient() {
  if (impl_ != nullptr && static_cast<long>(::getpid()) != impl_->connected_in) {
    // A copy inherited by a forked child: destroying its channel waits on gRPC threads that
    // exist only in the parent (the child hung at exit). Left to the process's end instead.
    (void)impl_->rendezvous.release();
    (void)impl_->sources.release();
    (void)impl_->jobs.release();
    (void)new std::shared_ptr<grpc::Channel>(std::move(impl_->channel));
  }
}

const std::string& CoordinatorClient::address() const { return impl_->options.address; }

const std::string& CoordinatorClient::state_id() const { return impl_->state_id; }

// ---------------------------------------------------------------------------
// Rendezvous

Status CoordinatorClient::Put(const std::string& key, std::span<const std::byte> value) {
  SW_RETURN_IF_ERROR(control::ValidateKey(key));
  SW_RETURN_IF_ERROR(control::ValidateValueSize(value.size(), key));
  v1::PutRequest req;
  req.set_key(key);
  req.set_value(control::ToString(value));
  v1::PutResponse resp;
  return impl_->Call(
      "Put", [&](grpc::ClientContext& ctx) { return impl_->rendezvous->Put(&ctx, req, &resp); },
      {.extra_s = static_cast<double>(value.size()) / kSlowestPayloadBytesPerS,
       .binding = Binding::kJoinedState,
       .resend_after_deadline = true});
}

Result<std::vector<std::byte>> CoordinatorClient::Get(const std::string& key, double timeout_s) {
  SW_RETURN_IF_ERROR(control::ValidateKey(key));
  SW_RETURN_IF_ERROR(control::ValidateTimeout(timeout_s, fmt::format("Get '{}'", key)));
  const auto deadline = control::DeadlineAfter(timeout_s);
  v1::GetRequest req;
  req.set_key(key);
  for (;;) {
    const double slice = std::min(control::SecondsLeft(deadline), kGetSliceS);
    req.set_wait_s(slice);
    v1::GetResponse resp;
    // Bounded: a coordinator that accepts the call but never answers (stopped, wedged) fails
    // this slice with kUnavailable within slice + max(call_timeout_s, unavailable_timeout_s)
    // plus one more attempt of call_timeout_s + slice (the resend is always a full attempt, so
    // a pause of this process is not taken for silence), as a restart within
    // unavailable_timeout_s is still ridden out. Unbounded, each slice took
    // three attempts of call_timeout_s + 22 s (81 s; a Python Ctrl-C waited that long).
    SW_RETURN_IF_ERROR(
        impl_->Call("Get", [&](grpc::ClientContext& ctx) { return impl_->rendezvous->Get(&ctx, req, &resp); },
                    {.extra_s = slice,
                     .binding = Binding::kJoinedState,
                     .bound_s = slice + std::max(impl_->options.call_timeout_s, impl_->options.unavailable_timeout_s),
                     .resend_after_deadline = true,
                     .silence_is_unavailable = true}));
    if (resp.found()) return control::ToBytes(resp.value());
    if (control::SecondsLeft(deadline) <= 0) return control::GetTimedOut(key, timeout_s);
  }
}

Result<std::int64_t> CoordinatorClient::Add(const std::string& key, std::int64_t delta) {
  SW_RETURN_IF_ERROR(control::ValidateKey(key));
  v1::AddRequest req;
  req.set_key(key);
  req.set_delta(delta);
  // One id per logical Add, resent with every retry: the coordinator applies it at most once.
  req.set_request_id(impl_->NextRequestId());
  v1::AddResponse resp;
  SW_RETURN_IF_ERROR(
      impl_->Call("Add", [&](grpc::ClientContext& ctx) { return impl_->rendezvous->Add(&ctx, req, &resp); },
                  {.binding = Binding::kJoinedState, .resend_after_deadline = true}));
  return resp.value();
}

// ---------------------------------------------------------------------------
// Sources

Result<SourceRecord> CoordinatorClient::RegisterSource(const SourceRecord& record, double timeout_s) {
  SW_RETURN_IF_ERROR(ValidateCallBound(timeout_s, "RegisterSource"));
  v1::RegisterSourceRequest req;
  control::ToProto(record, req.mutable_source());
  if (record.source_id.empty()) {
    // Proposed here (64 random bits) when the caller did not: the registration is then
    // idempotent, so an attempt whose reply was lost (a passed deadline, a connection that
    // dropped after the coordinator stored it) is sent again without leaving an orphan record.
    req.mutable_source()->set_source_id("src-" + control::NewStateId().substr(0, 16));
  }
  SW_RETURN_IF_ERROR(control::ValidateProposedSourceId(req.source().source_id()));
  req.mutable_source()->clear_state();
  req.mutable_source()->clear_stale_reason();
  req.mutable_source()->clear_registered_unix_ms();
  req.mutable_source()->clear_last_heartbeat_unix_ms();
  SW_RETURN_IF_ERROR(control::ValidateSource(req.source()));
  v1::RegisterSourceResponse resp;
  SW_RETURN_IF_ERROR(impl_->Call(
      "RegisterSource", [&](grpc::ClientContext& ctx) { return impl_->sources->Register(&ctx, req, &resp); },
      // Under a proposed id a repeat is idempotent, so an attempt whose reply was lost is sent again.
      {.bound_s = timeout_s, .resend_after_deadline = true}));
  return control::FromProto(resp.source());
}

Result<SourceHeartbeat> CoordinatorClient::HeartbeatSource(const std::string& source_id, double timeout_s) {
  SW_RETURN_IF_ERROR(control::ValidateSourceId(source_id));
  SW_RETURN_IF_ERROR(ValidateCallBound(timeout_s, "HeartbeatSource"));
  v1::HeartbeatSourceRequest req;
  req.set_source_id(source_id);
  v1::HeartbeatSourceResponse resp;
  SW_RETURN_IF_ERROR(impl_->Call("HeartbeatSource",
                                 [&](grpc::ClientContext& ctx) { return impl_->sources->Heartbeat(&ctx, req, &resp); },
                                 {.bound_s = timeout_s, .resend_after_deadline = true}));
  return control::FromProto(resp);
}

Result<std::vector<SourceRecord>> CoordinatorClient::ListSources(const std::string& model_identity,
                                                                 std::optional<SourceState> state) {
  SW_RETURN_IF_ERROR(control::ValidateName(model_identity, "model_identity filter", /*allow_empty=*/true));
  v1::ListSourcesRequest req;
  req.set_model_identity(model_identity);
  req.set_state(control::ToProto(state));
  v1::ListSourcesResponse resp;
  SW_RETURN_IF_ERROR(
      impl_->Call("ListSources", [&](grpc::ClientContext& ctx) { return impl_->sources->List(&ctx, req, &resp); },
                  {.resend_after_deadline = true}));
  std::vector<SourceRecord> out;
  out.reserve(resp.sources_size());
  for (const auto& s : resp.sources()) {
    SW_ASSIGN_OR_RETURN(SourceRecord r, control::FromProto(s));
    out.push_back(std::move(r));
  }
  return out;
}

Status CoordinatorClient::MarkSourceStale(const std::string& source_id, const std::string& reason, bool hold) {
  SW_RETURN_IF_ERROR(control::ValidateSourceId(source_id));
  SW_RETURN_IF_ERROR(control::ValidateReason(reason));
  v1::MarkSourceStaleRequest req;
  req.set_source_id(source_id);
  req.set_reason(reason);
  req.set_hold(hold);
  v1::MarkSourceStaleResponse resp;
  return impl_->Call("MarkSourceStale",
                     [&](grpc::ClientContext& ctx) { return impl_->sources->MarkStale(&ctx, req, &resp); },
                     {.resend_after_deadline = true});
}

Status CoordinatorClient::DeregisterSource(const std::string& source_id, double timeout_s) {
  SW_RETURN_IF_ERROR(control::ValidateSourceId(source_id));
  SW_RETURN_IF_ERROR(ValidateCallBound(timeout_s, "DeregisterSource"));
  v1::DeregisterSourceRequest req;
  req.set_source_id(source_id);
  v1::DeregisterSourceResponse resp;
  bool sent_again = false;
  Status gone = impl_->Call("DeregisterSource",
                            [&](grpc::ClientContext& ctx) { return impl_->sources->Deregister(&ctx, req, &resp); },
                            {.bound_s = timeout_s, .sent_again = &sent_again});
  // An earlier attempt of this call may have removed the record before its reply was lost.
  if (gone.code() == ErrorCode::kNotFound && sent_again) return Status::Ok();
  return gone;
}

// ---------------------------------------------------------------------------
// Jobs

Result<JobView> CoordinatorClient::JoinJob(const std::string& job, const JobMember& member) {
  SW_RETURN_IF_ERROR(control::ValidateName(job, "job"));
  v1::JoinJobRequest req;
  req.set_job(job);
  control::ToProto(member, req.mutable_member());
  req.mutable_member()->clear_committed_version();
  req.mutable_member()->clear_joined_unix_ms();
  req.mutable_member()->clear_last_heartbeat_unix_ms();
  SW_RETURN_IF_ERROR(control::ValidateMember(req.member()));
  v1::JoinJobResponse resp;
  bool sent_again = false;
  Status joined = impl_->Call("JoinJob", [&](grpc::ClientContext& ctx) { return impl_->jobs->Join(&ctx, req, &resp); },
                              {.binding = Binding::kJoinedState, .sent_again = &sent_again});
  if (joined.code() == ErrorCode::kAlreadyExists && sent_again) {
    // An earlier attempt of this call may have joined before its reply was lost: the live
    // member is this join when it holds exactly what was sent.
    auto view = GetJob(job);
    if (view.ok()) {
      for (const JobMember& m : view->members) {
        if (m.member_id != member.member_id) continue;
        v1::JobMember stored;
        control::ToProto(m, &stored);
        stored.clear_committed_version();
        stored.clear_joined_unix_ms();
        stored.clear_last_heartbeat_unix_ms();
        if (google::protobuf::util::MessageDifferencer::Equals(stored, req.member())) return *view;
      }
    }
  }
  SW_RETURN_IF_ERROR(joined);
  return control::FromProto(resp.job());
}

Status CoordinatorClient::HeartbeatMember(const std::string& job, const std::string& member_id) {
  SW_RETURN_IF_ERROR(control::ValidateName(job, "job"));
  SW_RETURN_IF_ERROR(control::ValidateName(member_id, "member_id"));
  v1::HeartbeatMemberRequest req;
  req.set_job(job);
  req.set_member_id(member_id);
  v1::HeartbeatMemberResponse resp;
  return impl_->Call(
      "HeartbeatMember", [&](grpc::ClientContext& ctx) { return impl_->jobs->HeartbeatMember(&ctx, req, &resp); },
      {.binding = Binding::kJoinedState, .resend_after_deadline = true});
}

Status CoordinatorClient::LeaveJob(const std::string& job, const std::string& member_id) {
  SW_RETURN_IF_ERROR(control::ValidateName(job, "job"));
  SW_RETURN_IF_ERROR(control::ValidateName(member_id, "member_id"));
  v1::LeaveJobRequest req;
  req.set_job(job);
  req.set_member_id(member_id);
  v1::LeaveJobResponse resp;
  bool sent_again = false;
  Status left = impl_->Call("LeaveJob", [&](grpc::ClientContext& ctx) { return impl_->jobs->Leave(&ctx, req, &resp); },
                            {.binding = Binding::kJoinedState, .sent_again = &sent_again});
  // An earlier attempt of this call may have removed the member before its reply was lost.
  if (left.code() == ErrorCode::kNotFound && sent_again) return Status::Ok();
  return left;
}

Result<JobView> CoordinatorClient::GetJob(const std::string& job) {
  SW_RETURN_IF_ERROR(control::ValidateName(job, "job"));
  v1::GetJobRequest req;
  req.set_job(job);
  v1::GetJobResponse resp;
  SW_RETURN_IF_ERROR(
      impl_->Call("GetJob", [&](grpc::ClientContext& ctx) { return impl_->jobs->Get(&ctx, req, &resp); },
                  {.binding = Binding::kJoinedState, .resend_after_deadline = true}));
  return control::FromProto(resp.job());
}

Status CoordinatorClient::CommitVersion(const std::string& job, const std::string& member_id, std::uint64_t version) {
  SW_RETURN_IF_ERROR(control::ValidateName(job, "job"));
  SW_RETURN_IF_ERROR(control::ValidateName(member_id, "member_id"));
  v1::CommitVersionRequest req;
  req.set_job(job);
  req.set_member_id(member_id);
  req.set_version(version);
  v1::CommitVersionResponse resp;
  return impl_->Call(
      "CommitVersion", [&](grpc::ClientContext& ctx) { return impl_->jobs->CommitVersion(&ctx, req, &resp); },
      {.binding = Binding::kJoinedState, .resend_after_deadline = true});
}

}  // namespace shardwire
