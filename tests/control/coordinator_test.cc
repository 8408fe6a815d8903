// The coordinator over real gRPC on loopback (in-process CoordinatorServer):
// KV semantics, the source registry and its leases, jobs, the bearer token, TLS
// with a certificate made by openssl, malformed requests sent with the raw
// generated stubs (bypassing the client's own checks), an unreachable address and
// a port in use. No timing assertions: lease changes are polled with a deadline.
#include <arpa/inet.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <thread>
#include <tuple>

#include "control/coordinator_codec.h"
#include "control/redis_fixture.h"
#include "control/state_id.h"
#include "control/test_util.h"
#include "shardwire/coordinator.h"
#include "shardwire/v1/jobs.grpc.pb.h"
#include "shardwire/v1/rendezvous.grpc.pb.h"
#include "shardwire/v1/sources.grpc.pb.h"

namespace shardwire {
namespace {

using testing_util::BytesOf;
using testing_util::Pattern;

std::unique_ptr<CoordinatorServer> StartServer(CoordinatorServerOptions o = {}) {
  auto s = CoordinatorServer::Start(std::move(o));
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  return s.ok() ? std::move(*s) : nullptr;
}

std::unique_ptr<CoordinatorClient> ConnectTo(const std::string& address, std::string token = "",
                                             std::string root_cert = "") {
  CoordinatorClientOptions o;
  o.address = address;
  o.token = std::move(token);
  o.tls_root_cert_file = std::move(root_cert);
  o.unavailable_timeout_s = 5;
  auto c = CoordinatorClient::Connect(o);
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  return c.ok() ? std::move(*c) : nullptr;
}

// A client of `address` that retries an unreachable coordinator for `unavailable_timeout_s`.
std::unique_ptr<CoordinatorClient> ConnectWithRetryBound(const std::string& address, double unavailable_timeout_s) {
  CoordinatorClientOptions o;
  o.address = address;
  o.unavailable_timeout_s = unavailable_timeout_s;
  auto c = CoordinatorClient::Connect(o);
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  return c.ok() ? std::move(*c) : nullptr;
}

// Polls `cond` every 20 ms until it holds or `timeout_s` passes.
bool PollUntil(const std::function<bool()>& cond, double timeout_s = 15) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(static_cast<int>(timeout_s * 1000));
  while (std::chrono::steady_clock::now() < end) {
    if (cond()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return cond();
}

int FreePort() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

SourceRecord Source(const std::string& identity, const std::string& instance, int rank, int world) {
  SourceRecord r;
  r.model_identity = identity;
  r.instance_id = instance;
  r.rank = rank;
  r.world_size = world;
  r.layout = "tp=" + std::to_string(world);
  r.layout_fingerprint = "abc123";
  r.metadata = Pattern(4096 + rank, static_cast<std::uint32_t>(rank + 7));
  r.attributes["region"] = "3";
  return r;
}

JobMember Member(const std::string& id, JobRole role) {
  JobMember m;
  m.member_id = id;
  m.role = role;
  m.group = "engine-1";
  m.layout = "tp=1";
  m.metadata = BytesOf("blob-" + id);
  return m;
}

// ---------------------------------------------------------------------------

TEST(Coordinator, KvPutGetAddAndCounters) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  auto c = ConnectTo(server->address());
  ASSERT_NE(c, nullptr);
  const auto big = Pattern(3 * 1024 * 1024 + 5, 42);  // beyond gRPC's default 4 MiB? no: 3 MiB, binary
  ASSERT_TRUE(c->Put("blob", big).ok());
  auto got = c->Get("blob", 1);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(*got, big);
  const std::string zeros("a\0\0b", 4);
  ASSERT_TRUE(PutString(*c, std::string("k\0ey", 4), zeros).ok());
  EXPECT_EQ(*GetString(*c, std::string("k\0ey", 4), 1), zeros);
  EXPECT_EQ(*c->Add("n", 5), 5);
  EXPECT_EQ(*c->Add("n", -8), -3);
  EXPECT_EQ(*GetString(*c, "n", 0), "-3");
  auto not_counter = c->Add("blob", 1);
  EXPECT_EQ(not_counter.status().code(), ErrorCode::kInvalidArgument);
  auto missing = c->Get("absent", 0.2);
  EXPECT_EQ(missing.status().code(), ErrorCode::kTimedOut);
  EXPECT_NE(missing.status().message().find("absent"), std::string::npos);
  EXPECT_EQ(c->Put("", BytesOf("x")).code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(c->Get("k", std::nan("")).status().code(), ErrorCode::kInvalidArgument);
}

TEST(Coordinator, BlockingGetIsWokenByAPutFromAnotherClient) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  auto waiter = ConnectTo(server->address());
  auto writer = ConnectTo(server->address());
  ASSERT_TRUE(waiter && writer);
  const auto value = Pattern(1000, 3);
  std::thread t([&] {
    // The waiter is (very likely) already waiting on the server; correctness does
    // not depend on it.
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    EXPECT_TRUE(writer->Put("late", value).ok());
  });
  auto got = waiter->Get("late", 60);
  t.join();
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(*got, value);
  // Barrier over the coordinator with two ranks on two clients.
  std::thread r1([&] { EXPECT_TRUE(Barrier(*writer, "b1", 1, 2, 30).ok()); });
  EXPECT_TRUE(Barrier(*waiter, "b1", 0, 2, 30).ok());
  r1.join();
}

TEST(Coordinator, SourcesRegisterHeartbeatListStaleDeregister) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  auto c = ConnectTo(server->address());
  ASSERT_NE(c, nullptr);
  auto a1 = c->RegisterSource(Source("model-x", "inst-b", 1, 2));
  auto a0 = c->RegisterSource(Source("model-x", "inst-b", 0, 2));
  auto y = c->RegisterSource(Source("model-y", "inst-a", 0, 1));
  ASSERT_TRUE(a1.ok() && a0.ok() && y.ok()) << a1.status().ToString();
  EXPECT_EQ(a0->source_id.rfind("src-", 0), 0u);
  EXPECT_GT(a0->registered_unix_ms, 0);
  EXPECT_EQ(a0->state, SourceState::kReady);
  auto list = c->ListSources("model-x", std::nullopt);
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 2u);
  EXPECT_EQ((*list)[0].source_id, a0->source_id);
  EXPECT_EQ((*list)[0].metadata, Pattern(4096, 7));  // byte for byte
  EXPECT_EQ((*list)[1].metadata, Pattern(4097, 8));
  EXPECT_EQ((*list)[0].attributes.at("region"), "3");
  EXPECT_EQ((*list)[0].layout, "tp=2");
  EXPECT_EQ((*list)[0].layout_fingerprint, "abc123");
  EXPECT_EQ(c->ListSources("", std::nullopt)->size(), 3u);

  auto unmarked = c->HeartbeatSource(a1->source_id);
  ASSERT_TRUE(unmarked.ok()) << unmarked.status().ToString();
  EXPECT_EQ(unmarked->state, SourceState::kReady);
  EXPECT_EQ(unmarked->stale_reason, "");
  ASSERT_TRUE(c->MarkSourceStale(a1->source_id, "read failed: peer gone", /*hold=*/true).ok());
  auto ready = c->ListSources("model-x", SourceState::kReady);
  ASSERT_EQ(ready->size(), 1u);
  EXPECT_EQ((*ready)[0].source_id, a0->source_id);
  auto stale = c->ListSources("model-x", SourceState::kStale);
  ASSERT_EQ(stale->size(), 1u);
  EXPECT_EQ((*stale)[0].stale_reason, "read failed: peer gone");
  // The server's default source_mark_hold_s (30 s) holds the loader's mark against heartbeats,
  // and the heartbeat's reply says so (through the server's asynchronous heartbeat path).
  auto held = c->HeartbeatSource(a1->source_id);
  ASSERT_TRUE(held.ok()) << held.status().ToString();
  EXPECT_EQ(held->state, SourceState::kStale);
  EXPECT_EQ(held->stale_reason, "read failed: peer gone");
  stale = c->ListSources("model-x", SourceState::kStale);
  ASSERT_EQ(stale->size(), 1u);
  EXPECT_EQ((*stale)[0].stale_reason, "read failed: peer gone");
  EXPECT_EQ(c->ListSources("model-x", SourceState::kReady)->size(), 1u);
  // A mark without hold lasts until the source's next heartbeat.
  ASSERT_TRUE(c->MarkSourceStale(a0->source_id, "stalled").ok());
  EXPECT_EQ(c->ListSources("model-x", SourceState::kReady)->size(), 0u);
  auto cleared = c->HeartbeatSource(a0->source_id);
  ASSERT_TRUE(cleared.ok()) << cleared.status().ToString();
  EXPECT_EQ(cleared->state, SourceState::kReady);
  EXPECT_EQ(cleared->stale_reason, "stalled");
  EXPECT_EQ(c->ListSources("model-x", SourceState::kReady)->size(), 1u);

  ASSERT_TRUE(c->DeregisterSource(a1->source_id).ok());
  EXPECT_EQ(c->DeregisterSource(a1->source_id).code(), ErrorCode::kNotFound);
  EXPECT_EQ(c->HeartbeatSource(a1->source_id).status().code(), ErrorCode::kNotFound);
  EXPECT_EQ(c->MarkSourceStale("src-0000000000000000", "x").code(), ErrorCode::kNotFound);
  EXPECT_EQ(c->ListSources("model-x", std::nullopt)->size(), 1u);

  SourceRecord bad = Source("m", "i", 2, 2);
  EXPECT_EQ(c->RegisterSource(bad).status().code(), ErrorCode::kInvalidArgument);

  // A proposed id goes through the client and the server and comes back; a repeat is the same
  // record; another process under it is kAlreadyExists; a malformed one kInvalidArgument (the
  // client checks, and so does the server, which a raw request reaches).
  SourceRecord proposed = Source("model-p", "inst-p", 0, 1);
  proposed.source_id = "src-0123456789abcdef";
  auto p1 = c->RegisterSource(proposed);
  ASSERT_TRUE(p1.ok()) << p1.status().ToString();
  EXPECT_EQ(p1->source_id, proposed.source_id);
  auto p2 = c->RegisterSource(proposed);
  ASSERT_TRUE(p2.ok()) << p2.status().ToString();
  EXPECT_EQ(c->ListSources("model-p", std::nullopt)->size(), 1u);
  SourceRecord clash = proposed;
  clash.metadata = {std::byte{1}};
  EXPECT_EQ(c->RegisterSource(clash).status().code(), ErrorCode::kAlreadyExists);
  for (const char* id : {"src-0123", "src-0123456789ABCDEF", "other-0123456789ab", "src-0123456789abcdeg"}) {
    SourceRecord malformed = proposed;
    malformed.source_id = id;
    EXPECT_EQ(c->RegisterSource(malformed).status().code(), ErrorCode::kInvalidArgument) << id;
  }
  // The server checks too: a raw request with a malformed id.
  auto channel = grpc::CreateChannel(server->address(), grpc::InsecureChannelCredentials());
  auto src = v1::SourceRegistry::NewStub(channel);
  grpc::ClientContext ctx;
  v1::RegisterSourceRequest req;
  req.mutable_source()->set_source_id("src-x:y");
  req.mutable_source()->set_model_identity("m");
  req.mutable_source()->set_instance_id("i");
  req.mutable_source()->set_world_size(1);
  v1::RegisterSourceResponse resp;
  const grpc::Status raw = src->Register(&ctx, req, &resp);
  EXPECT_EQ(raw.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << raw.error_message();
  EXPECT_NE(raw.error_message().find("src-x:y"), std::string::npos) << raw.error_message();
}

// A coordinator whose reaper runs every 50 ms, sources STALE after 0.3 s without a heartbeat
// and deleted after `delete_after_s`.
std::unique_ptr<CoordinatorServer> StartLeaseServer(double delete_after_s) {
  CoordinatorServerOptions o;
  o.source_stale_after_s = 0.3;
  o.source_delete_after_s = delete_after_s;
  o.reaper_interval_s = 0.05;
  return StartServer(o);
}

// The reaper marks a source STALE after missed heartbeats; a heartbeat is still answered
// (the state tests check it makes the record READY again, at explicit times). The delete time
// is far away here, so however slowly this process runs (TSan), the STALE record is still there.
TEST(Coordinator, LeaseTurnsSourcesStale) {
  auto server = StartLeaseServer(/*delete_after_s=*/600);
  ASSERT_NE(server, nullptr);
  auto c = ConnectTo(server->address());
  ASSERT_NE(c, nullptr);
  auto s = c->RegisterSource(Source("m", "i", 0, 1));
  ASSERT_TRUE(s.ok());
  auto state_of = [&]() -> std::optional<SourceState> {
    auto l = c->ListSources("m", std::nullopt);
    if (!l.ok() || l->empty()) return std::nullopt;
    return (*l)[0].state;
  };
  ASSERT_TRUE(PollUntil([&] { return state_of() == SourceState::kStale; })) << "never became STALE";
  auto l = c->ListSources("m", SourceState::kStale);
  ASSERT_EQ(l->size(), 1u);
  EXPECT_FALSE((*l)[0].stale_reason.empty());
  EXPECT_TRUE(c->ListSources("m", SourceState::kReady)->empty());
  EXPECT_TRUE(c->HeartbeatSource(s->source_id).ok());
}

// Without heartbeats a source is deleted: gone from lists, and heartbeats say NOT_FOUND.
TEST(Coordinator, LeaseDeletesSourcesWithoutHeartbeats) {
  auto server = StartLeaseServer(/*delete_after_s=*/1.0);
  ASSERT_NE(server, nullptr);
  auto c = ConnectTo(server->address());
  ASSERT_NE(c, nullptr);
  auto s = c->RegisterSource(Source("m", "i", 0, 1));
  ASSERT_TRUE(s.ok());
  ASSERT_TRUE(PollUntil([&] { return c->ListSources("m", std::nullopt)->empty(); })) << "never deleted";
  EXPECT_EQ(c->HeartbeatSource(s->source_id).status().code(), ErrorCode::kNotFound);
}

// Members expire only after 600 s here: however slowly this process runs (TSan), every
// member the test did not remove is still there. Expiry has its own test below.
TEST(Coordinator, JobsJoinLeaveEpochCommit) {
  CoordinatorServerOptions o;
  o.member_expire_after_s = 600;
  o.reaper_interval_s = 0.05;
  auto server = StartServer(o);
  ASSERT_NE(server, nullptr);
  auto c = ConnectTo(server->address());
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->GetJob("rl").status().code(), ErrorCode::kNotFound);
  auto v1 = c->JoinJob("rl", Member("trainer/0", JobRole::kPublisher));
  ASSERT_TRUE(v1.ok()) << v1.status().ToString();
  auto v2 = c->JoinJob("rl", Member("engine-1/0", JobRole::kSubscriber));
  ASSERT_TRUE(v2.ok());
  EXPECT_NE(v1->membership_epoch, v2->membership_epoch);
  ASSERT_EQ(v2->members.size(), 2u);
  EXPECT_EQ(v2->members[0].member_id, "engine-1/0");
  EXPECT_EQ(v2->members[0].role, JobRole::kSubscriber);
  EXPECT_EQ(v2->members[0].metadata, BytesOf("blob-engine-1/0"));
  EXPECT_EQ(c->JoinJob("rl", Member("engine-1/0", JobRole::kSubscriber)).status().code(), ErrorCode::kAlreadyExists);

  ASSERT_TRUE(c->CommitVersion("rl", "engine-1/0", 17).ok());
  EXPECT_TRUE(c->CommitVersion("rl", "engine-1/0", 17).ok());
  EXPECT_EQ(c->CommitVersion("rl", "engine-1/0", 16).code(), ErrorCode::kFailedPrecondition);
  auto v3 = c->GetJob("rl");
  ASSERT_TRUE(v3.ok());
  EXPECT_EQ(v3->members[0].committed_version, 17u);
  EXPECT_EQ(v3->membership_epoch, v2->membership_epoch);

  ASSERT_TRUE(c->LeaveJob("rl", "trainer/0").ok());
  EXPECT_EQ(c->LeaveJob("rl", "trainer/0").code(), ErrorCode::kNotFound);
  auto v4 = c->GetJob("rl");
  EXPECT_GT(v4->membership_epoch, v3->membership_epoch);
  ASSERT_EQ(v4->members.size(), 1u);
  EXPECT_EQ(v4->members[0].member_id, "engine-1/0");
  EXPECT_TRUE(c->HeartbeatMember("rl", "engine-1/0").ok());
  EXPECT_EQ(c->HeartbeatMember("rl", "trainer/0").code(), ErrorCode::kNotFound);
}

// A client context carrying the caller's state binding (a proxy's forwarded call).
std::unique_ptr<grpc::ClientContext> ForwardedContext(const grpc::ServerContext& in) {
  auto out = std::make_unique<grpc::ClientContext>();
  for (const auto& [key, value] : in.client_metadata()) {
    if (key == control::kStateIdMetadataKey) {
      out->AddMetadata(std::string(key.data(), key.size()), std::string(value.data(), value.size()));
    }
  }
  return out;
}

// Forwards Ping (what CoordinatorClient::Connect calls) to the real coordinator.
class PingProxy final : public v1::Rendezvous::Service {
 public:
  explicit PingProxy(const std::shared_ptr<grpc::Channel>& channel) : rendezvous_(v1::Rendezvous::NewStub(channel)) {}
  grpc::Status Ping(grpc::ServerContext* in, const v1::PingRequest* req, v1::PingResponse* resp) override {
    return rendezvous_->Ping(ForwardedContext(*in).get(), *req, resp);
  }

 private:
  std::unique_ptr<v1::Rendezvous::Stub> rendezvous_;
};

// A coordinator that applies a Join or a Leave and is gone before it replies, as seen through a
// proxy: each first Join and first Leave is forwarded to the real coordinator, and then answered
// UNAVAILABLE (the connection dropped). Get is forwarded as it is.
class ApplyThenDropProxy final : public v1::Jobs::Service {
 public:
  explicit ApplyThenDropProxy(const std::shared_ptr<grpc::Channel>& channel) : jobs_(v1::Jobs::NewStub(channel)) {}
  grpc::Status Join(grpc::ServerContext* in, const v1::JoinJobRequest* req, v1::JoinJobResponse* resp) override {
    grpc::Status st = jobs_->Join(ForwardedContext(*in).get(), *req, resp);
    return joins_++ == 0 ? grpc::Status(grpc::StatusCode::UNAVAILABLE, "connection dropped (test)") : st;
  }
  grpc::Status Leave(grpc::ServerContext* in, const v1::LeaveJobRequest* req, v1::LeaveJobResponse* resp) override {
    grpc::Status st = jobs_->Leave(ForwardedContext(*in).get(), *req, resp);
    return leaves_++ == 0 ? grpc::Status(grpc::StatusCode::UNAVAILABLE, "connection dropped (test)") : st;
  }
  grpc::Status Get(grpc::ServerContext* in, const v1::GetJobRequest* req, v1::GetJobResponse* resp) override {
    return jobs_->Get(ForwardedContext(*in).get(), *req, resp);
  }
  int joins() const { return joins_; }
  int leaves() const { return leaves_; }

 private:
  std::unique_ptr<v1::Jobs::Stub> jobs_;
  std::atomic<int> joins_{0};
  std::atomic<int> leaves_{0};
};

// A Join or Leave whose reply was lost after the coordinator applied it is sent again; the
// repeat's refusal (ALREADY_EXISTS for its own membership, NOT_FOUND for the member it removed)
// answered the caller, so a member that had joined failed to. Now the client resolves them.
TEST(Coordinator, AJoinOrLeaveAppliedBeforeItsReplyWasLostSucceeds) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  const auto channel = grpc::CreateChannel(server->address(), grpc::InsecureChannelCredentials());
  PingProxy ping(channel);
  ApplyThenDropProxy proxy(channel);
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&ping);
  builder.RegisterService(&proxy);
  auto proxied = builder.BuildAndStart();
  ASSERT_NE(proxied, nullptr);
  auto c = ConnectTo("127.0.0.1:" + std::to_string(port));
  ASSERT_NE(c, nullptr);
  const JobMember me = Member("engine-1/0", JobRole::kSubscriber);
  auto joined = c->JoinJob("rl", me);
  ASSERT_TRUE(joined.ok()) << joined.status().ToString();
  EXPECT_EQ(proxy.joins(), 2) << "the dropped attempt was not sent again";
  ASSERT_EQ(joined->members.size(), 1u);
  EXPECT_EQ(joined->members[0].member_id, "engine-1/0");
  EXPECT_EQ(joined->members[0].metadata, me.metadata);
  // Another process's member under the same id (other contents) is still refused.
  JobMember other = me;
  other.metadata = BytesOf("another process");
  EXPECT_EQ(c->JoinJob("rl", other).status().code(), ErrorCode::kAlreadyExists);
  const Status left = c->LeaveJob("rl", "engine-1/0");
  EXPECT_TRUE(left.ok()) << left.ToString();
  EXPECT_EQ(proxy.leaves(), 2);
  EXPECT_TRUE(c->GetJob("rl")->members.empty());
  EXPECT_EQ(c->LeaveJob("rl", "engine-1/0").code(), ErrorCode::kNotFound);  // not sent again: refused
  proxied->Shutdown();
}

// Without heartbeats a member expires, and the membership epoch moves.
TEST(Coordinator, JobMembersExpireWithoutHeartbeats) {
  CoordinatorServerOptions o;
  o.member_expire_after_s = 0.5;
  o.reaper_interval_s = 0.05;
  auto server = StartServer(o);
  ASSERT_NE(server, nullptr);
  auto c = ConnectTo(server->address());
  ASSERT_NE(c, nullptr);
  auto joined = c->JoinJob("rl", Member("engine-1/0", JobRole::kSubscriber));
  ASSERT_TRUE(joined.ok()) << joined.status().ToString();
  ASSERT_TRUE(PollUntil([&] {
    auto job = c->GetJob("rl");
    return job.ok() && job->members.empty();
  })) << "never expired";
  EXPECT_GT(c->GetJob("rl")->membership_epoch, joined->membership_epoch);
  EXPECT_EQ(c->HeartbeatMember("rl", "engine-1/0").code(), ErrorCode::kNotFound);
}

// CoordinatorClientOptions::interrupt ends Connect's wait for an unreachable coordinator (it
// retried for unavailable_timeout_s, 600 s here, whatever the caller wanted), with the hook's
// status; the hook is asked again and again during that wait, and a client given a hook that
// never fires still connects to a coordinator that is there.
TEST(Coordinator, ConnectToAnUnreachableAddressEndsWhenTheInterruptHookFires) {
  std::string address;
  {
    auto gone = StartServer();
    ASSERT_NE(gone, nullptr);
    address = gone->address();
  }  // nothing listens there any more
  CoordinatorClientOptions o;
  o.address = address;
  o.unavailable_timeout_s = 600;
  std::atomic<int> asked{0};
  o.interrupt = [&asked] { return ++asked >= 5 ? FailedPrecondition("stop asked by the test") : Status::Ok(); };
  auto c = CoordinatorClient::Connect(o);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), ErrorCode::kFailedPrecondition) << c.status().ToString();
  EXPECT_NE(c.status().message().find("stop asked by the test"), std::string::npos) << c.status().ToString();
  EXPECT_NE(c.status().message().find(address), std::string::npos) << c.status().ToString();
  EXPECT_EQ(asked.load(), 5);

  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  o.address = server->address();
  o.interrupt = [] { return Status::Ok(); };
  auto reached = CoordinatorClient::Connect(o);
  ASSERT_TRUE(reached.ok()) << reached.status().ToString();
  ASSERT_TRUE((*reached)->Put("k", std::vector<std::byte>{std::byte{1}}).ok());
}

TEST(Coordinator, TokenRefusedWithUnauthenticatedAndStateUnchanged) {
  CoordinatorServerOptions o;
  o.token = "s3cret-token";
  auto server = StartServer(o);
  ASSERT_NE(server, nullptr);
  {
    CoordinatorClientOptions co;
    co.address = server->address();
    co.unavailable_timeout_s = 2;
    ::unsetenv("SHARDWIRE_TOKEN");
    auto none = CoordinatorClient::Connect(co);
    EXPECT_EQ(none.status().code(), ErrorCode::kUnauthenticated) << none.status().ToString();
    EXPECT_NE(none.status().message().find("this client sends no token: set SHARDWIRE_TOKEN"), std::string::npos)
        << none.status().ToString();
    co.token = "s3cret-tokeX";
    auto wrong = CoordinatorClient::Connect(co);
    EXPECT_EQ(wrong.status().code(), ErrorCode::kUnauthenticated);
    EXPECT_EQ(wrong.status().message().find("sends no token"), std::string::npos) << wrong.status().ToString();
  }
  // Mutations with a wrong token, sent with the raw stubs, change nothing.
  auto channel = grpc::CreateChannel(server->address(), grpc::InsecureChannelCredentials());
  auto kv = v1::Rendezvous::NewStub(channel);
  auto src = v1::SourceRegistry::NewStub(channel);
  auto jobs = v1::Jobs::NewStub(channel);
  for (const char* header : {"", "Bearer wrong", "Bearer s3cret-token ", "s3cret-token"}) {
    auto ctx_for = [&](grpc::ClientContext& ctx) {
      if (*header != '\0') ctx.AddMetadata("authorization", header);
    };
    {
      grpc::ClientContext ctx;
      ctx_for(ctx);
      v1::PutRequest req;
      req.set_key("k");
      req.set_value("v");
      v1::PutResponse resp;
      EXPECT_EQ(kv->Put(&ctx, req, &resp).error_code(), grpc::StatusCode::UNAUTHENTICATED) << header;
    }
    {
      grpc::ClientContext ctx;
      ctx_for(ctx);
      v1::RegisterSourceRequest req;
      req.mutable_source()->set_model_identity("m");
      req.mutable_source()->set_instance_id("i");
      req.mutable_source()->set_world_size(1);
      v1::RegisterSourceResponse resp;
      EXPECT_EQ(src->Register(&ctx, req, &resp).error_code(), grpc::StatusCode::UNAUTHENTICATED) << header;
    }
    {
      grpc::ClientContext ctx;
      ctx_for(ctx);
      v1::JoinJobRequest req;
      req.set_job("j");
      req.mutable_member()->set_member_id("m");
      req.mutable_member()->set_role(v1::JOB_ROLE_PUBLISHER);
      req.mutable_member()->set_world_size(1);
      v1::JoinJobResponse resp;
      EXPECT_EQ(jobs->Join(&ctx, req, &resp).error_code(), grpc::StatusCode::UNAUTHENTICATED) << header;
    }
  }
  auto good = ConnectTo(server->address(), "s3cret-token");
  ASSERT_NE(good, nullptr);
  EXPECT_EQ(good->Get("k", 0).status().code(), ErrorCode::kTimedOut);
  EXPECT_TRUE(good->ListSources("", std::nullopt)->empty());
  EXPECT_EQ(good->GetJob("j").status().code(), ErrorCode::kNotFound);
  ASSERT_TRUE(good->Put("k", BytesOf("v")).ok());
  // SHARDWIRE_TOKEN is used when the options carry none.
  ::setenv("SHARDWIRE_TOKEN", "s3cret-token", 1);
  auto from_env = ConnectTo(server->address());
  ::unsetenv("SHARDWIRE_TOKEN");
  ASSERT_NE(from_env, nullptr);
  EXPECT_EQ(*GetString(*from_env, "k", 1), "v");
}

// The heartbeats are callback (reactor) handlers, in memory answered inline and on
// Redis through the pipelined connection: the same token check, validation and
// typed statuses as every other method, nothing changed by a refused call, and
// many concurrent heartbeats through gRPC each land.
void CheckCallbackHeartbeats(const std::string& redis_url) {
  CoordinatorServerOptions o;
  o.token = "tok";
  o.redis_url = redis_url;
  o.member_expire_after_s = 600;  // no member expires however slowly the test runs
  o.source_stale_after_s = 600;
  o.source_delete_after_s = 1200;
  auto server = StartServer(o);
  ASSERT_NE(server, nullptr);
  auto c = ConnectTo(server->address(), "tok");
  ASSERT_NE(c, nullptr);
  auto a = c->RegisterSource(Source("m", "inst-a", 0, 1));
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  ASSERT_TRUE(c->JoinJob("job", Member("s0", JobRole::kSubscriber)).ok());
  auto heartbeat_of = [&](const std::string& id) {
    auto listed = c->ListSources("m", std::nullopt);
    if (!listed.ok()) return std::int64_t{-2};
    for (const auto& r : *listed) {
      if (r.source_id == id) return r.last_heartbeat_unix_ms;
    }
    return std::int64_t{-1};
  };
  auto member_heartbeat = [&] {
    auto job = c->GetJob("job");
    return job.ok() && job->members.size() == 1 ? job->members[0].last_heartbeat_unix_ms : std::int64_t{-1};
  };
  const std::int64_t registered = heartbeat_of(a->source_id);
  const std::int64_t joined = member_heartbeat();
  std::this_thread::sleep_for(std::chrono::milliseconds(20));  // a later heartbeat has a later time

  auto channel = grpc::CreateChannel(server->address(), grpc::InsecureChannelCredentials());
  auto src = v1::SourceRegistry::NewStub(channel);
  auto jobs = v1::Jobs::NewStub(channel);
  auto beat = [&](const std::string& header, const std::string& id) {
    grpc::ClientContext ctx;
    if (!header.empty()) ctx.AddMetadata("authorization", header);
    v1::HeartbeatSourceRequest req;
    req.set_source_id(id);
    v1::HeartbeatSourceResponse resp;
    return src->Heartbeat(&ctx, req, &resp).error_code();
  };
  auto beat_member = [&](const std::string& header, const std::string& job, const std::string& member) {
    grpc::ClientContext ctx;
    if (!header.empty()) ctx.AddMetadata("authorization", header);
    v1::HeartbeatMemberRequest req;
    req.set_job(job);
    req.set_member_id(member);
    v1::HeartbeatMemberResponse resp;
    return jobs->HeartbeatMember(&ctx, req, &resp).error_code();
  };
  for (const char* header : {"", "Bearer wrong", "tok"}) {
    EXPECT_EQ(beat(header, a->source_id), grpc::StatusCode::UNAUTHENTICATED) << header;
    EXPECT_EQ(beat_member(header, "job", "s0"), grpc::StatusCode::UNAUTHENTICATED) << header;
  }
  EXPECT_EQ(heartbeat_of(a->source_id), registered) << "a refused heartbeat changed the source";
  EXPECT_EQ(member_heartbeat(), joined) << "a refused heartbeat changed the member";
  EXPECT_EQ(beat("Bearer tok", ""), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(beat("Bearer tok", std::string(65, 'x')), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(beat_member("Bearer tok", "", "s0"), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(beat("Bearer tok", "src-0000000000000000"), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(beat_member("Bearer tok", "job", "nobody"), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(heartbeat_of(a->source_id), registered);
  EXPECT_EQ(beat("Bearer tok", a->source_id), grpc::StatusCode::OK);
  EXPECT_EQ(beat_member("Bearer tok", "job", "s0"), grpc::StatusCode::OK);
  EXPECT_GT(heartbeat_of(a->source_id), registered);
  EXPECT_GT(member_heartbeat(), joined);

  // 8 clients x 40 heartbeats at once over 16 sources: every call OK, every source beaten after the barrier.
  std::vector<std::string> ids;
  for (int i = 0; i < 16; ++i)
    ids.push_back(c->RegisterSource(Source("many", "inst-" + std::to_string(i), 0, 1))->source_id);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  auto registered_many = c->ListSources("many", std::nullopt);
  ASSERT_TRUE(registered_many.ok() && !registered_many->empty());
  std::int64_t before = 0;
  for (const auto& r : *registered_many) before = std::max(before, r.registered_unix_ms);
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      auto ct = ConnectTo(server->address(), "tok");
      if (ct == nullptr) {
        ++failures;
        return;
      }
      for (int k = 0; k < 40; ++k) {
        if (!ct->HeartbeatSource(ids[(t * 40 + k) % ids.size()]).ok()) ++failures;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  auto many = c->ListSources("many", std::nullopt);
  ASSERT_TRUE(many.ok()) << many.status().ToString();
  ASSERT_EQ(many->size(), ids.size());
  for (const auto& r : *many) EXPECT_GT(r.last_heartbeat_unix_ms, before) << r.source_id << " was never beaten";
}

TEST(Coordinator, CallbackHeartbeatsInMemory) { CheckCallbackHeartbeats(""); }

TEST(Coordinator, CallbackHeartbeatsOnRedis) {
  if (!testing_util::RedisServer::Available()) GTEST_SKIP() << testing_util::RedisServer::SkipReason();
  std::string error;
  auto redis = testing_util::RedisServer::Start(&error);
  ASSERT_NE(redis, nullptr) << error;
  CheckCallbackHeartbeats(redis->url());
}

// A Redis that loses the coordinator's data (FLUSHALL here; a restart without
// persistence in production) while a client waits in Get: the reaper gives the
// state a new id and the waiting Get, and every later rendezvous or job call of
// that client, fails with kFailedPrecondition at once instead of waiting out its
// timeout for a key that is gone. The registry stays usable; a new client joins the
// new state. Without the binding the Get would end kTimedOut after 20 s.
// A coordinator on its own redis-server with the given reaper interval, and one client of it.
struct RedisBackedCoordinator {
  std::unique_ptr<testing_util::RedisServer> redis;
  std::unique_ptr<CoordinatorServer> server;
  std::unique_ptr<CoordinatorClient> client;
};
RedisBackedCoordinator StartOnRedis(double reaper_interval_s) {
  RedisBackedCoordinator r;
  std::string error;
  r.redis = testing_util::RedisServer::Start(&error);
  EXPECT_NE(r.redis, nullptr) << error;
  if (r.redis == nullptr) return r;
  CoordinatorServerOptions so;
  so.redis_url = r.redis->url();
  so.reaper_interval_s = reaper_interval_s;
  r.server = StartServer(so);
  if (r.server != nullptr) r.client = ConnectTo(r.server->address());
  return r;
}

// Redis GET calls so far (INFO commandstats), or -1 when the line is missing.
long RedisGetCalls(const testing_util::RedisServer& redis) {
  const std::string info = redis.Command({"INFO", "commandstats"});
  const std::string field = "cmdstat_get:calls=";
  const auto at = info.find(field);
  if (at == std::string::npos) return -1;
  return std::stol(info.substr(at + field.size()));
}

// Gets waiting on a Redis-backed coordinator share one read of the KV generation per 10 ms:
// 16 waiters for 1 s cost about 100 GETs of it (plus one GET of the key each), not 16 x 100;
// a Put through another coordinator of the same Redis still wakes them all with its value.
TEST(Coordinator, WaitingGetsShareOneGenerationReadOnRedis) {
  if (!testing_util::RedisServer::Available()) GTEST_SKIP() << testing_util::RedisServer::SkipReason();
  RedisBackedCoordinator rc = StartOnRedis(1.0);
  ASSERT_NE(rc.client, nullptr);
  constexpr int kWaiters = 16;
  const long before = RedisGetCalls(*rc.redis);
  ASSERT_GE(before, 0);
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> waiters;
  std::atomic<int> timed_out{0};
  for (int i = 0; i < kWaiters; ++i) {
    waiters.emplace_back([&] {
      if (rc.client->Get("never-put", 1.0).status().code() == ErrorCode::kTimedOut) ++timed_out;
    });
  }
  for (auto& t : waiters) t.join();
  const double waited_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  const long calls = RedisGetCalls(*rc.redis) - before;
  EXPECT_EQ(timed_out.load(), kWaiters);
  // At most one generation read per 10 ms of the wait, one key read per waiter, and slack for
  // the client's retries; one read per waiter per 10 ms would be ~16 x 100.
  EXPECT_LE(calls, static_cast<long>(waited_ms / 10 * 1.5) + 3 * kWaiters) << "over " << waited_ms << " ms";

  // A Put through a second coordinator of the same Redis (no local notification here) wakes
  // every waiter of the first with the value.
  CoordinatorServerOptions so;
  so.redis_url = rc.redis->url();
  auto other = StartServer(so);
  ASSERT_NE(other, nullptr);
  auto writer = ConnectTo(other->address());
  ASSERT_NE(writer, nullptr);
  std::vector<std::string> got(kWaiters);
  waiters.clear();
  for (int i = 0; i < kWaiters; ++i) {
    waiters.emplace_back([&, i] {
      auto v = GetString(*rc.client, "put-elsewhere", 20);
      got[i] = v.ok() ? *v : v.status().ToString();
    });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  ASSERT_TRUE(writer->Put("put-elsewhere", BytesOf("value")).ok());
  for (auto& t : waiters) t.join();
  for (const std::string& g : got) EXPECT_EQ(g, "value");
}

TEST(Coordinator, AStateLostUnderAWaitingGetIsFailedPreconditionNotATimeout) {
  if (!testing_util::RedisServer::Available()) GTEST_SKIP() << testing_util::RedisServer::SkipReason();
  RedisBackedCoordinator rc = StartOnRedis(0.1);
  ASSERT_NE(rc.client, nullptr);
  auto& redis = rc.redis;
  auto& server = rc.server;
  auto& c = rc.client;
  const std::string joined = c->state_id();
  ASSERT_EQ(joined.size(), 32u);
  ASSERT_TRUE(c->Put("there", BytesOf("1")).ok());
  ASSERT_TRUE(c->JoinJob("job", Member("engine-0/rank-0", JobRole::kSubscriber)).ok());

  Result<std::vector<std::byte>> waited = Internal("not run");
  std::atomic<bool> done{false};
  std::thread waiter([&] {
    waited = c->Get("never-put", 20);
    done = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_FALSE(done.load()) << "the Get returned before the state was lost";
  ASSERT_EQ(redis->Command({"FLUSHALL"}), "OK");
  waiter.join();
  EXPECT_EQ(waited.status().code(), ErrorCode::kFailedPrecondition) << waited.status().ToString();
  EXPECT_NE(waited.status().message().find(joined), std::string::npos) << waited.status().message();

  EXPECT_EQ(c->Get("there", 0).status().code(), ErrorCode::kFailedPrecondition);
  EXPECT_EQ(c->Put("there", BytesOf("2")).code(), ErrorCode::kFailedPrecondition);
  EXPECT_EQ(c->CommitVersion("job", "engine-0/rank-0", 1).code(), ErrorCode::kFailedPrecondition);
  EXPECT_EQ(c->HeartbeatMember("job", "engine-0/rank-0").code(), ErrorCode::kFailedPrecondition);
  // The refused Put changed nothing: the key is still absent for a client of the new state.
  auto fresh = ConnectTo(server->address());
  ASSERT_NE(fresh, nullptr);
  EXPECT_NE(fresh->state_id(), joined);
  EXPECT_EQ(fresh->Get("there", 0).status().code(), ErrorCode::kTimedOut);
  ASSERT_TRUE(fresh->Put("there", BytesOf("3")).ok());
  auto got = GetString(*fresh, "there", 1);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(*got, "3");
  // Registry calls are not bound: the old client registers a source in the new state.
  auto reg = c->RegisterSource(Source("m", "inst", 0, 1));
  ASSERT_TRUE(reg.ok()) << reg.status().ToString();
  EXPECT_TRUE(c->HeartbeatSource(reg->source_id).ok());
  EXPECT_EQ(fresh->ListSources("m", std::nullopt)->size(), 1u);
}

// Two coordinators on one Redis, no reaper pass (interval 1 h): after Redis lost its data, A
// learns the new state id from a refused call; B still had the old one cached and handed it to
// a new client at Connect, whose every bound call the scripts then refused ("restart the job")
// although its job had just started. Ping and a binding mismatch now read the id from Redis.
TEST(Coordinator, CoordinatorsOnOneRedisHandANewClientTheNewStateId) {
  if (!testing_util::RedisServer::Available()) GTEST_SKIP() << testing_util::RedisServer::SkipReason();
  RedisBackedCoordinator rc = StartOnRedis(3600);
  ASSERT_NE(rc.client, nullptr);
  CoordinatorServerOptions so;
  so.redis_url = rc.redis->url();
  so.reaper_interval_s = 3600;
  auto second = StartServer(so);
  ASSERT_NE(second, nullptr);
  const std::string old_id = rc.client->state_id();
  ASSERT_TRUE(rc.client->Add("c", 1).ok());
  ASSERT_EQ(rc.redis->Command({"FLUSHALL"}), "OK");
  EXPECT_EQ(rc.client->Add("c", 1).status().code(), ErrorCode::kFailedPrecondition);  // A learns the new id
  auto via_a = ConnectTo(rc.server->address());
  auto via_b = ConnectTo(second->address());
  ASSERT_NE(via_a, nullptr);
  ASSERT_NE(via_b, nullptr);
  EXPECT_NE(via_a->state_id(), old_id);
  EXPECT_EQ(via_b->state_id(), via_a->state_id()) << "B handed out the lost state's id";
  auto added = via_b->Add("c", 1);
  ASSERT_TRUE(added.ok()) << added.status().ToString();
  EXPECT_EQ(*added, 1);
  EXPECT_EQ(via_a->Add("c", 1).value(), 2);
}

// The same loss with no reaper pass to notice it (interval 1 h): the client's next bound calls
// are refused by the Redis scripts themselves, not served from the empty state (which would
// hand out counter values again and let a rank see keys of nobody's job), and the first
// refusal makes the coordinator read the new state id, so a new client joins the new state.
TEST(Coordinator, ABoundCallIsRefusedAtOnceAfterRedisLostItsDataWithoutAReaperPass) {
  if (!testing_util::RedisServer::Available()) GTEST_SKIP() << testing_util::RedisServer::SkipReason();
  RedisBackedCoordinator rc = StartOnRedis(3600);
  ASSERT_NE(rc.client, nullptr);
  auto& redis = rc.redis;
  auto& server = rc.server;
  auto& c = rc.client;
  const std::string joined = c->state_id();
  auto first = c->Add("rank-counter", 1);
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  ASSERT_EQ(*first, 1);
  ASSERT_TRUE(c->JoinJob("job", Member("engine-0/rank-0", JobRole::kSubscriber)).ok());

  ASSERT_EQ(redis->Command({"FLUSHALL"}), "OK");
  // A Get shorter than a reaper pass found nothing and ended as "key not set" (kTimedOut): the
  // coordinator's cached id was still the lost one. Its end now checks the id in Redis.
  const auto lost_get = c->Get("never-put", 0.3);
  EXPECT_EQ(lost_get.status().code(), ErrorCode::kFailedPrecondition) << lost_get.status().ToString();
  EXPECT_NE(lost_get.status().message().find(joined), std::string::npos) << lost_get.status().message();
  auto again = c->Add("rank-counter", 1);
  EXPECT_EQ(again.status().code(), ErrorCode::kFailedPrecondition)
      << (again.ok() ? "served from the empty state: rank " + std::to_string(*again) + " handed out again"
                     : again.status().ToString());
  EXPECT_NE(again.status().message().find(joined), std::string::npos) << again.status().message();
  EXPECT_EQ(c->Put("key", BytesOf("v")).code(), ErrorCode::kFailedPrecondition);
  EXPECT_EQ(c->JoinJob("job", Member("engine-0/rank-1", JobRole::kSubscriber)).status().code(),
            ErrorCode::kFailedPrecondition);
  EXPECT_EQ(c->CommitVersion("job", "engine-0/rank-0", 1).code(), ErrorCode::kFailedPrecondition);
  EXPECT_EQ(redis->Command({"EXISTS", "shardwire:v1:kv:rank-counter"}), "0");
  EXPECT_EQ(redis->Command({"EXISTS", "shardwire:v1:kv:key"}), "0");
  EXPECT_EQ(redis->Command({"EXISTS", "shardwire:v1:jobs"}), "0");

  auto fresh = ConnectTo(server->address());
  ASSERT_NE(fresh, nullptr);
  EXPECT_NE(fresh->state_id(), joined) << "the refusal re-read the state id; no reaper pass ran";
  EXPECT_EQ(fresh->state_id(), redis->Command({"GET", "shardwire:v1:state_id"}));
  auto restarted = fresh->Add("rank-counter", 1);
  ASSERT_TRUE(restarted.ok()) << restarted.status().ToString();
  EXPECT_EQ(*restarted, 1);
}

// A call that carries a state id the coordinator does not serve (sent with the raw
// stub) is refused with FAILED_PRECONDITION and changes nothing; Ping reports the id.
TEST(Coordinator, ACallBoundToAnotherStateIsRefusedAndChangesNothing) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  auto channel = grpc::CreateChannel(server->address(), grpc::InsecureChannelCredentials());
  auto stub = v1::Rendezvous::NewStub(channel);
  v1::PingResponse ping;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub->Ping(&ctx, v1::PingRequest(), &ping).ok());
  }
  ASSERT_EQ(ping.state_id().size(), 32u);
  v1::PutRequest put;
  put.set_key("k");
  put.set_value("v");
  v1::PutResponse put_resp;
  {
    grpc::ClientContext ctx;
    ctx.AddMetadata("shardwire-state-id", std::string(32, '0'));
    grpc::Status st = stub->Put(&ctx, put, &put_resp);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << st.error_message();
    EXPECT_NE(st.error_message().find(ping.state_id()), std::string::npos) << st.error_message();
  }
  auto c = ConnectTo(server->address());
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->state_id(), ping.state_id());
  EXPECT_EQ(c->Get("k", 0).status().code(), ErrorCode::kTimedOut) << "the refused Put stored its value";
  {
    grpc::ClientContext ctx;
    ctx.AddMetadata("shardwire-state-id", ping.state_id());
    EXPECT_TRUE(stub->Put(&ctx, put, &put_resp).ok());
  }
  auto got = GetString(*c, "k", 1);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(*got, "v");
}

// A server whose Ping answers a malformed state id (another program on the port, or a
// corrupted answer): Connect refuses it with kCorruptData naming the address, instead of
// sending that text back as metadata on every later call.
class MalformedStateIdPing final : public v1::Rendezvous::Service {
  grpc::Status Ping(grpc::ServerContext*, const v1::PingRequest*, v1::PingResponse* resp) override {
    resp->set_state_id("not a state id\x01");
    return grpc::Status::OK;
  }
};

TEST(Coordinator, AMalformedStateIdFromTheServerIsCorruptData) {
  MalformedStateIdPing service;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  auto server = builder.BuildAndStart();
  ASSERT_NE(server, nullptr);
  ASSERT_GT(port, 0);
  CoordinatorClientOptions o;
  o.address = "127.0.0.1:" + std::to_string(port);
  o.unavailable_timeout_s = 5;
  auto c = CoordinatorClient::Connect(o);
  EXPECT_EQ(c.status().code(), ErrorCode::kCorruptData) << c.status().ToString();
  EXPECT_NE(c.status().message().find(o.address), std::string::npos) << c.status().message();
  server->Shutdown();
}

TEST(Coordinator, TlsWithACertificateMadeByOpenssl) {
  const auto dir = std::filesystem::temp_directory_path() / ("shardwire-tls-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string cert = (dir / "cert.pem").string();
  const std::string key = (dir / "key.pem").string();
  const std::string cmd =
      "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost "
      "-addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout " +
      key + " -out " + cert + " >/dev/null 2>&1";
  if (std::system(cmd.c_str()) != 0) GTEST_SKIP() << "openssl could not make a certificate";
  CoordinatorServerOptions o;
  o.tls_cert_file = cert;
  o.tls_key_file = key;
  o.token = "t";
  auto server = StartServer(o);
  ASSERT_NE(server, nullptr);
  auto c = ConnectTo(server->address(), "t", cert);
  ASSERT_NE(c, nullptr);
  const auto v = Pattern(100000, 9);
  ASSERT_TRUE(c->Put("tls", v).ok());
  EXPECT_EQ(*c->Get("tls", 1), v);
  // A plaintext client cannot talk to a TLS coordinator.
  CoordinatorClientOptions plain;
  plain.address = server->address();
  plain.token = "t";
  plain.unavailable_timeout_s = 1;
  auto p = CoordinatorClient::Connect(plain);
  EXPECT_FALSE(p.ok());
  EXPECT_NE(p.status().message().find("if the coordinator serves TLS, name its CA certificate: "
                                      "SHARDWIRE_TLS_ROOT_CERT"),
            std::string::npos)
      << p.status().ToString();
  // The CLI's commands reach it through the environment: SHARDWIRE_TLS_ROOT_CERT names the CA.
  ASSERT_EQ(::setenv(kTlsRootCertEnvironmentVariable, cert.c_str(), 1), 0);
  auto from_env = CoordinatorClient::Connect(plain);
  ASSERT_TRUE(from_env.ok()) << from_env.status().ToString();
  EXPECT_EQ(*(*from_env)->Get("tls", 1), v);
  // The variable applies to every client of the process: one of a plaintext coordinator is
  // told why its handshake failed.
  CoordinatorServerOptions plaintext;
  auto plain_server = StartServer(plaintext);
  ASSERT_NE(plain_server, nullptr);
  CoordinatorClientOptions to_plain;
  to_plain.address = plain_server->address();
  to_plain.unavailable_timeout_s = 1;
  const Status handshake = CoordinatorClient::Connect(to_plain).status();
  ::unsetenv(kTlsRootCertEnvironmentVariable);
  EXPECT_EQ(handshake.code(), ErrorCode::kUnavailable) << handshake.ToString();
  EXPECT_NE(handshake.message().find("SHARDWIRE_TLS_ROOT_CERT is set, so this client speaks TLS"), std::string::npos)
      << handshake.ToString();
  // Bad TLS file options are refused up front.
  CoordinatorServerOptions bad = o;
  bad.tls_key_file = (dir / "missing.pem").string();
  EXPECT_EQ(CoordinatorServer::Start(bad).status().code(), ErrorCode::kInvalidArgument);
  CoordinatorClientOptions bad_client;
  bad_client.address = server->address();
  bad_client.tls_root_cert_file = (dir / "missing.pem").string();
  EXPECT_EQ(CoordinatorClient::Connect(bad_client).status().code(), ErrorCode::kInvalidArgument);
  // A root certificate file that is no regular file, or holds no certificate, is named at once
  // (the key given for the CA was a handshake failure; /dev/zero was read without end).
  for (const std::string& wrong_ca : {std::string("/dev/zero"), key}) {
    bad_client.tls_root_cert_file = wrong_ca;
    const Status st = CoordinatorClient::Connect(bad_client).status();
    EXPECT_EQ(st.code(), ErrorCode::kInvalidArgument) << st.ToString();
    EXPECT_NE(st.message().find(wrong_ca), std::string::npos) << st.ToString();
  }
  // A file that is not PEM of its kind is named, not reported as a port in use; the key file
  // given as the certificate and the other way round alike.
  const std::string garbage = (dir / "garbage.pem").string();
  std::ofstream(garbage) << "not a certificate\n";
  for (const auto& [cert_file, key_file, named] :
       {std::tuple{garbage, key, garbage}, std::tuple{cert, garbage, garbage}, std::tuple{key, key, key},
        std::tuple{cert, cert, cert}}) {
    CoordinatorServerOptions wrong = o;
    wrong.tls_cert_file = cert_file;
    wrong.tls_key_file = key_file;
    const Status st = CoordinatorServer::Start(wrong).status();
    EXPECT_EQ(st.code(), ErrorCode::kInvalidArgument) << st.ToString();
    EXPECT_NE(st.message().find(named), std::string::npos) << st.ToString();
  }
  std::filesystem::remove_all(dir);
}

// gRPC aborts the process on a metadata value with a control character: a token with one (a
// token file with Windows line endings, an exported variable with a newline inside) is a typed
// error at Connect / Start instead, and SHARDWIRE_TOKEN's surrounding whitespace is removed.
TEST(Coordinator, TokensWithControlCharactersAreInvalidArgumentNotAnAbort) {
  CoordinatorServerOptions bad_server;
  bad_server.token = "ab\ncd";
  const Status refused = CoordinatorServer::Start(bad_server).status();
  EXPECT_EQ(refused.code(), ErrorCode::kInvalidArgument) << refused.ToString();
  EXPECT_EQ(refused.message().find("ab"), std::string::npos) << "the token itself is not printed";
  CoordinatorServerOptions o;
  o.token = "t0k";
  auto server = StartServer(o);
  ASSERT_NE(server, nullptr);
  CoordinatorClientOptions co;
  co.address = server->address();
  co.unavailable_timeout_s = 2;
  for (const char* token : {"t0k\r", "t\x01k", "t k", "t0k\x7f"}) {
    co.token = token;
    const Status st = CoordinatorClient::Connect(co).status();
    EXPECT_EQ(st.code(), ErrorCode::kInvalidArgument) << st.ToString();
  }
  co.token.clear();
  ::setenv("SHARDWIRE_TOKEN", "t0k\r\n", 1);  // trimmed: the right token
  auto trimmed = CoordinatorClient::Connect(co);
  EXPECT_TRUE(trimmed.ok()) << trimmed.status().ToString();
  ::setenv("SHARDWIRE_TOKEN", "t0\rk", 1);  // inside: refused, naming the variable
  const Status inner = CoordinatorClient::Connect(co).status();
  EXPECT_EQ(inner.code(), ErrorCode::kInvalidArgument) << inner.ToString();
  EXPECT_NE(inner.message().find("SHARDWIRE_TOKEN"), std::string::npos) << inner.ToString();
  ::unsetenv("SHARDWIRE_TOKEN");
}

// Every malformed request is sent with the raw stubs and must come back as
// INVALID_ARGUMENT (or RESOURCE_EXHAUSTED for a message beyond the server's
// maximum size), with the state unchanged.
TEST(Coordinator, MalformedAndOversizedRequestsAreInvalidArgument) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  grpc::ChannelArguments args;
  args.SetMaxSendMessageSize(-1);
  auto channel = grpc::CreateCustomChannel(server->address(), grpc::InsecureChannelCredentials(), args);
  auto kv = v1::Rendezvous::NewStub(channel);
  auto src = v1::SourceRegistry::NewStub(channel);
  auto jobs = v1::Jobs::NewStub(channel);
  auto expect_invalid = [](const grpc::Status& s, const char* what) {
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << what << ": " << s.error_message();
    EXPECT_FALSE(s.error_message().empty()) << what;
  };
  {
    grpc::ClientContext ctx;
    v1::PutRequest req;
    v1::PutResponse resp;
    expect_invalid(kv->Put(&ctx, req, &resp), "empty key");
  }
  {
    grpc::ClientContext ctx;
    v1::PutRequest req;
    req.set_key(std::string(kMaxRendezvousKeyBytes + 1, 'k'));
    v1::PutResponse resp;
    expect_invalid(kv->Put(&ctx, req, &resp), "long key");
  }
  for (double w : {std::nan(""), -1.0, std::numeric_limits<double>::infinity()}) {
    grpc::ClientContext ctx;
    v1::GetRequest req;
    req.set_key("k");
    req.set_wait_s(w);
    v1::GetResponse resp;
    expect_invalid(kv->Get(&ctx, req, &resp), "bad wait");
  }
  auto good_source = [] {
    v1::Source s;
    s.set_model_identity("m");
    s.set_instance_id("i");
    s.set_rank(0);
    s.set_world_size(1);
    return s;
  };
  std::vector<std::pair<const char*, std::function<void(v1::Source*)>>> bad_sources = {
      {"no identity", [](v1::Source* s) { s->clear_model_identity(); }},
      {"long identity", [](v1::Source* s) { s->set_model_identity(std::string(257, 'm')); }},
      {"no instance", [](v1::Source* s) { s->clear_instance_id(); }},
      {"world 0", [](v1::Source* s) { s->set_world_size(0); }},
      {"rank = world", [](v1::Source* s) { s->set_rank(1); }},
      {"rank < 0", [](v1::Source* s) { s->set_rank(-1); }},
      {"long layout", [](v1::Source* s) { s->set_layout(std::string(4097, 'l')); }},
      {"big metadata", [](v1::Source* s) { s->set_metadata(std::string(1024 * 1024 + 1, 'x')); }},
      {"65 attributes",
       [](v1::Source* s) {
         for (int i = 0; i < 65; ++i) {
           auto* a = s->add_attributes();
           a->set_key("k" + std::to_string(i));
         }
       }},
      {"duplicate attribute",
       [](v1::Source* s) {
         s->add_attributes()->set_key("k");
         s->add_attributes()->set_key("k");
       }},
      {"empty attribute key", [](v1::Source* s) { s->add_attributes()->set_value("v"); }},
      {"long attribute value",
       [](v1::Source* s) {
         auto* a = s->add_attributes();
         a->set_key("k");
         a->set_value(std::string(4097, 'v'));
       }},
  };
  for (auto& [what, mutate] : bad_sources) {
    grpc::ClientContext ctx;
    v1::RegisterSourceRequest req;
    *req.mutable_source() = good_source();
    mutate(req.mutable_source());
    v1::RegisterSourceResponse resp;
    expect_invalid(src->Register(&ctx, req, &resp), what);
  }
  {
    grpc::ClientContext ctx;
    v1::RegisterSourceRequest req;  // no source at all
    v1::RegisterSourceResponse resp;
    expect_invalid(src->Register(&ctx, req, &resp), "missing source");
  }
  {
    grpc::ClientContext ctx;
    v1::HeartbeatSourceRequest req;
    req.set_source_id(std::string(65, 's'));
    v1::HeartbeatSourceResponse resp;
    expect_invalid(src->Heartbeat(&ctx, req, &resp), "long source id");
  }
  {
    grpc::ClientContext ctx;
    v1::ListSourcesRequest req;
    req.set_state(static_cast<v1::SourceState>(7));
    v1::ListSourcesResponse resp;
    expect_invalid(src->List(&ctx, req, &resp), "unknown state filter");
  }
  {
    grpc::ClientContext ctx;
    v1::MarkSourceStaleRequest req;
    req.set_source_id("src-1");
    req.set_reason(std::string(4097, 'r'));
    v1::MarkSourceStaleResponse resp;
    expect_invalid(src->MarkStale(&ctx, req, &resp), "long reason");
  }
  for (int role : {0, 3}) {
    grpc::ClientContext ctx;
    v1::JoinJobRequest req;
    req.set_job("j");
    req.mutable_member()->set_member_id("m");
    req.mutable_member()->set_role(static_cast<v1::JobRole>(role));
    req.mutable_member()->set_world_size(1);
    v1::JoinJobResponse resp;
    expect_invalid(jobs->Join(&ctx, req, &resp), "bad role");
  }
  {
    grpc::ClientContext ctx;
    v1::JoinJobRequest req;  // no job name, no member
    v1::JoinJobResponse resp;
    expect_invalid(jobs->Join(&ctx, req, &resp), "empty join");
  }
  {
    grpc::ClientContext ctx;
    v1::CommitVersionRequest req;
    req.set_job(std::string(300, 'j'));
    req.set_member_id("m");
    v1::CommitVersionResponse resp;
    expect_invalid(jobs->CommitVersion(&ctx, req, &resp), "long job");
  }
  {
    // Beyond the server's maximum message size: refused by gRPC before the handler.
    grpc::ClientContext ctx;
    v1::PutRequest req;
    req.set_key("huge");
    req.set_value(std::string(kMaxRendezvousValueBytes + 128 * 1024, 'x'));
    v1::PutResponse resp;
    EXPECT_EQ(kv->Put(&ctx, req, &resp).error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  }
  // Nothing was stored.
  auto c = ConnectTo(server->address());
  ASSERT_NE(c, nullptr);
  EXPECT_TRUE(c->ListSources("", std::nullopt)->empty());
  EXPECT_EQ(c->GetJob("j").status().code(), ErrorCode::kNotFound);
  EXPECT_EQ(c->Get("huge", 0).status().code(), ErrorCode::kTimedOut);
  // The server still serves.
  EXPECT_TRUE(c->Put("after", BytesOf("ok")).ok());
}

TEST(Coordinator, UnreachableAddressIsUnavailableWithinTheBound) {
  const int port = FreePort();  // nothing listens there
  CoordinatorClientOptions o;
  o.address = "127.0.0.1:" + std::to_string(port);
  o.unavailable_timeout_s = 1;
  const auto start = std::chrono::steady_clock::now();
  auto c = CoordinatorClient::Connect(o);
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), ErrorCode::kUnavailable) << c.status().ToString();
  EXPECT_NE(c.status().message().find(o.address), std::string::npos) << c.status().message();
  // A bound, not a speed measurement: the limit plus generous slack for a loaded machine.
  EXPECT_LT(took, o.unavailable_timeout_s + 20);
  EXPECT_EQ(CoordinatorClient::Connect(CoordinatorClientOptions{}).status().code(), ErrorCode::kInvalidArgument);
  // A port past 65535 (gRPC took it modulo 2^16: 99999 reached port 34463) or not a number.
  for (const char* bad : {"127.0.0.1:99999", "127.0.0.1:0", "localhost:http", "127.0.0.1:"}) {
    CoordinatorClientOptions bo;
    bo.address = bad;
    const auto refused = CoordinatorClient::Connect(bo);
    EXPECT_EQ(refused.status().code(), ErrorCode::kInvalidArgument) << bad << ": " << refused.status().ToString();
    EXPECT_NE(refused.status().message().find("is not a number in 1..65535"), std::string::npos) << bad;
  }
  // No port at all: refused at once (it dialled port 0 and retried for unavailable_timeout_s).
  CoordinatorClientOptions no_port;
  no_port.address = "127.0.0.1";
  const auto refused = CoordinatorClient::Connect(no_port);
  EXPECT_EQ(refused.status().code(), ErrorCode::kInvalidArgument) << refused.status().ToString();
  EXPECT_NE(refused.status().message().find("'127.0.0.1' has no port (HOST:PORT)"), std::string::npos)
      << refused.status().message();
}

// The lease calls take a bound of their own: with the coordinator gone and a client
// whose unavailable_timeout_s is 60 s, a heartbeat or deregistration bounded to 0.5 s
// gives up within that bound (plus slack for a loaded machine), naming the address,
// instead of after 60 s. A bound that is not > 0 is kInvalidArgument.
TEST(Coordinator, LeaseCallsGiveUpWithinTheirOwnBound) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  const std::string address = server->address();
  auto c = ConnectWithRetryBound(address, 60);
  ASSERT_NE(c, nullptr);
  auto reg = c->RegisterSource(Source("m", "inst", 0, 1));
  ASSERT_TRUE(reg.ok()) << reg.status().ToString();
  EXPECT_TRUE(c->HeartbeatSource(reg->source_id, 5).ok());
  EXPECT_EQ(c->HeartbeatSource(reg->source_id, 0).status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(c->DeregisterSource(reg->source_id, std::nan("")).code(), ErrorCode::kInvalidArgument);
  server->Shutdown(0);
  for (int call = 0; call < 2; ++call) {
    const auto start = std::chrono::steady_clock::now();
    Status s = call == 0 ? c->HeartbeatSource(reg->source_id, 0.5).status() : c->DeregisterSource(reg->source_id, 0.5);
    const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    EXPECT_TRUE(s.code() == ErrorCode::kUnavailable || s.code() == ErrorCode::kTimedOut) << s.ToString();
    EXPECT_NE(s.message().find(address), std::string::npos) << s.message();
    // A bound, not a speed measurement: far below the client's 60 s, with slack for a loaded machine.
    EXPECT_LT(took, 30) << (call == 0 ? "HeartbeatSource" : "DeregisterSource") << " ignored its bound";
  }
}

TEST(Coordinator, PortInUseIsIoErrorNamingTheAddress) {
  auto first = StartServer();
  ASSERT_NE(first, nullptr);
  CoordinatorServerOptions o;
  o.listen_address = "127.0.0.1:" + std::to_string(first->port());
  auto second = CoordinatorServer::Start(o);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), ErrorCode::kIoError);
  EXPECT_NE(second.status().message().find(o.listen_address), std::string::npos);
  // The first one still serves.
  auto c = ConnectTo(first->address());
  ASSERT_NE(c, nullptr);
  EXPECT_TRUE(c->Put("x", BytesOf("y")).ok());
  CoordinatorServerOptions bad;
  bad.listen_address = "no-port";
  EXPECT_EQ(CoordinatorServer::Start(bad).status().code(), ErrorCode::kInvalidArgument);
  bad.listen_address = "127.0.0.1:0";
  bad.source_stale_after_s = -1;
  EXPECT_EQ(CoordinatorServer::Start(bad).status().code(), ErrorCode::kInvalidArgument);
  bad.source_stale_after_s = 10;
  bad.redis_url = "redis://127.0.0.1:1";  // placeholder or real Redis state: either way not OK
  EXPECT_FALSE(CoordinatorServer::Start(bad).ok());
}

// A time option beyond kMaxCoordinatorTimeS would overflow the int64 milliseconds or
// nanoseconds it becomes (found by review: member_expire_after_s = 1e16 expired
// every member at once, reaper_interval_s = 1e10 ran the reaper without pause): Start and
// Connect refuse it with kInvalidArgument naming the option. The cap itself is accepted.
TEST(Coordinator, TimesBeyondTheCapAreInvalidArgumentNamingTheOption) {
  struct Case {
    const char* name;
    double CoordinatorServerOptions::*field;
  };
  const Case cases[] = {{"source_stale_after_s", &CoordinatorServerOptions::source_stale_after_s},
                        {"source_delete_after_s", &CoordinatorServerOptions::source_delete_after_s},
                        {"member_expire_after_s", &CoordinatorServerOptions::member_expire_after_s},
                        {"reaper_interval_s", &CoordinatorServerOptions::reaper_interval_s}};
  const Case hold{"source_mark_hold_s", &CoordinatorServerOptions::source_mark_hold_s};  // may be 0
  for (const Case& c : cases) {
    for (double v : {1e16, 1e10, std::numeric_limits<double>::infinity(), std::nan("")}) {
      CoordinatorServerOptions o;
      o.*c.field = v;
      auto server = CoordinatorServer::Start(o);
      ASSERT_FALSE(server.ok()) << c.name << " = " << v;
      EXPECT_EQ(server.status().code(), ErrorCode::kInvalidArgument) << server.status().ToString();
      EXPECT_NE(server.status().message().find(c.name), std::string::npos) << server.status().ToString();
    }
  }
  for (double v : {-1.0, 1e10, std::nan("")}) {
    CoordinatorServerOptions o;
    o.*hold.field = v;
    auto server = CoordinatorServer::Start(o);
    ASSERT_FALSE(server.ok()) << hold.name << " = " << v;
    EXPECT_EQ(server.status().code(), ErrorCode::kInvalidArgument) << server.status().ToString();
    EXPECT_NE(server.status().message().find(hold.name), std::string::npos) << server.status().ToString();
  }
  CoordinatorServerOptions no_hold;
  no_hold.source_mark_hold_s = 0;
  EXPECT_TRUE(CoordinatorServer::Start(no_hold).ok());
  CoordinatorServerOptions at_cap;
  at_cap.source_mark_hold_s = kMaxCoordinatorTimeS;
  at_cap.source_stale_after_s = kMaxCoordinatorTimeS;
  at_cap.source_delete_after_s = kMaxCoordinatorTimeS;
  at_cap.member_expire_after_s = kMaxCoordinatorTimeS;
  at_cap.reaper_interval_s = kMaxCoordinatorTimeS;
  auto server = CoordinatorServer::Start(at_cap);
  ASSERT_TRUE(server.ok()) << server.status().ToString();

  CoordinatorClientOptions co;
  co.address = (*server)->address();
  co.call_timeout_s = 1e10;
  auto client = CoordinatorClient::Connect(co);
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), ErrorCode::kInvalidArgument) << client.status().ToString();
  EXPECT_NE(client.status().message().find("call_timeout_s"), std::string::npos) << client.status().ToString();
  co.call_timeout_s = 10;
  co.unavailable_timeout_s = 1e10;
  client = CoordinatorClient::Connect(co);
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), ErrorCode::kInvalidArgument) << client.status().ToString();
  EXPECT_NE(client.status().message().find("unavailable_timeout_s"), std::string::npos) << client.status().ToString();
  // At the cap both work, and members of a server whose times are at the cap do not expire.
  co.call_timeout_s = kMaxCoordinatorTimeS;
  co.unavailable_timeout_s = kMaxCoordinatorTimeS;
  client = CoordinatorClient::Connect(co);
  ASSERT_TRUE(client.ok()) << client.status().ToString();
  auto joined = (*client)->JoinJob("j", Member("m0", JobRole::kSubscriber));
  ASSERT_TRUE(joined.ok()) << joined.status().ToString();
  auto job = (*client)->GetJob("j");
  ASSERT_TRUE(job.ok()) << job.status().ToString();
  EXPECT_EQ(job->members.size(), 1u);
}

TEST(Coordinator, ShutdownEndsWaitingGetsAndLaterCallsAreUnavailable) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  auto c = ConnectWithRetryBound(server->address(), 1);
  ASSERT_NE(c, nullptr);
  Status waited = Internal("not run");
  double waited_s = 0;
  std::thread t([&] {
    const auto start = std::chrono::steady_clock::now();
    waited = c->Get("never", 30).status();
    waited_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  server->Shutdown(0.5);
  t.join();
  // Ended by the shutdown (the unreachable coordinator, after the client's 1 s retry bound),
  // not by the Get's own 30 s: kTimedOut naming the key, or a wait of 30 s, would mean the
  // shutdown left it waiting. (A bound against a hang, not a speed figure.)
  EXPECT_EQ(waited.code(), ErrorCode::kUnavailable) << waited.ToString();
  EXPECT_LT(waited_s, 25.0) << waited.ToString();
  EXPECT_EQ(c->Put("k", BytesOf("v")).code(), ErrorCode::kUnavailable);
}

}  // namespace
}  // namespace shardwire
