// libFuzzer target for the coordinator's request handling (src/control/coordinator_service.h):
// the handlers of shardwire.v1.Rendezvous, SourceRegistry and Jobs over the in-memory state,
// called directly (no network, no token) with requests decoded from the input. One input is a
// sequence of requests on one fresh state, so later requests meet what earlier ones stored.
//
// Input: repeated records [method: 1 byte][length: 2 bytes, little endian][request: length bytes];
// the method byte modulo 14 picks the RPC, the request bytes are parsed as its protobuf request
// (bytes that do not parse are skipped: gRPC refuses them before any handler runs). Get's
// wait_s is set to 0 before the call (its bounded wait is tested in tests/control).
//
// Properties checked on every input:
//   * no crash, no sanitizer report, no hang (libFuzzer's timeout);
//   * every status is OK or a code the .proto files document for a request
//     (INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION, RESOURCE_EXHAUSTED, OUT_OF_RANGE,
//     ALREADY_EXISTS), with a message when it is not OK; never INTERNAL, UNKNOWN or DATA_LOSS;
//   * a Put that succeeded is read back by Get (found, same value);
//   * an Add that succeeded is read back by an Add of 0 (same counter);
//   * a registered source is listed under its model identity; after a successful Deregister
//     its heartbeat is NOT_FOUND;
//   * a refused Register, Put or Add leaves List / Get as they were.
//
// With -DSHARDWIRE_FUZZ_SEED_MAIN the same file builds a seed-corpus writer instead: valid
// sequences (put/get/add, register/heartbeat/list/mark stale/deregister, join/heartbeat/commit/
// get/leave) in the record format above.
// Fuzz links: shardwire_control shardwire_core
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include <grpcpp/server_context.h>

#include "control/coordinator_service.h"
#include "control/coordinator_state.h"
#include "fuzz_check.h"

namespace {

using shardwire::fuzz::Check;
namespace v1 = shardwire::v1;
using grpc::StatusCode;

constexpr const char* kName = "coordinator_request_fuzzer";

void CheckStatus(const grpc::Status& st) {
  const StatusCode c = st.error_code();
  const bool documented = c == StatusCode::OK || c == StatusCode::INVALID_ARGUMENT || c == StatusCode::NOT_FOUND ||
                          c == StatusCode::FAILED_PRECONDITION || c == StatusCode::RESOURCE_EXHAUSTED ||
                          c == StatusCode::OUT_OF_RANGE || c == StatusCode::ALREADY_EXISTS;
  if (!documented) {
    std::fprintf(stderr, "%s: undocumented status %d: %s\n", kName, static_cast<int>(c), st.error_message().c_str());
    std::abort();
  }
  Check(st.ok() || !st.error_message().empty(), kName, "a refusal has a message");
}

struct Coordinator {
  shardwire::control::CoordinatorCore core{shardwire::control::MakeInMemoryCoordinatorState({}), "", "memory"};
  shardwire::control::RendezvousService rendezvous{&core};
  shardwire::control::SourceRegistryService sources{&core};
  shardwire::control::JobsService jobs{&core};

  // Get with no wait; the status must be documented.
  v1::GetResponse Get(const std::string& key) {
    grpc::ServerContext ctx;
    v1::GetRequest req;
    req.set_key(key);
    v1::GetResponse resp;
    CheckStatus(rendezvous.Get(&ctx, &req, &resp));
    return resp;
  }
  std::size_t Listed(const std::string& model_identity) {
    grpc::ServerContext ctx;
    v1::ListSourcesRequest req;
    req.set_model_identity(model_identity);
    v1::ListSourcesResponse resp;
    CheckStatus(sources.List(&ctx, &req, &resp));
    return static_cast<std::size_t>(resp.sources_size());
  }
  grpc::Status Heartbeat(const std::string& source_id) {
    grpc::ServerContext ctx;
    v1::HeartbeatSourceRequest req;
    req.set_source_id(source_id);
    v1::HeartbeatSourceResponse resp;
    grpc::Status out(StatusCode::UNKNOWN, "no answer");
    int answers = 0;
    sources.ServeHeartbeat(ctx, req, &resp, [&](grpc::Status st) {
      out = std::move(st);
      ++answers;
    });
    Check(answers == 1, kName, "an in-memory heartbeat is answered exactly once, at once");
    if (out.ok()) {
      Check(resp.state() == v1::SOURCE_STATE_READY || resp.state() == v1::SOURCE_STATE_STALE, kName,
            "an answered heartbeat says READY or STALE");
      Check(resp.state() != v1::SOURCE_STATE_STALE || !resp.stale_reason().empty(), kName,
            "a heartbeat that leaves a source STALE names the loader's reason");
    }
    return out;
  }
};

template <typename Request>
bool Parse(Request& req, const std::uint8_t* data, std::size_t size) {
  return req.ParseFromArray(data, static_cast<int>(size));
}

void RunOne(Coordinator& c, int method, const std::uint8_t* data, std::size_t size) {
  grpc::ServerContext ctx;
  switch (method) {
    case 0: {  // Rendezvous.Put
      v1::PutRequest req;
      if (!Parse(req, data, size)) return;
      const auto before = c.Get(req.key());
      v1::PutResponse resp;
      const grpc::Status st = c.rendezvous.Put(&ctx, &req, &resp);
      CheckStatus(st);
      const auto after = c.Get(req.key());
      if (st.ok()) {
        Check(after.found() && after.value() == req.value(), kName, "a Put is read back by Get");
      } else {
        Check(after.found() == before.found() && after.value() == before.value(), kName,
              "a refused Put changes nothing");
      }
      return;
    }
    case 1: {  // Rendezvous.Get
      v1::GetRequest req;
      if (!Parse(req, data, size)) return;
      req.set_wait_s(0);
      v1::GetResponse resp;
      CheckStatus(c.rendezvous.Get(&ctx, &req, &resp));
      return;
    }
    case 2: {  // Rendezvous.Add
      v1::AddRequest req;
      if (!Parse(req, data, size)) return;
      const auto before = c.Get(req.key());
      v1::AddResponse resp;
      const grpc::Status st = c.rendezvous.Add(&ctx, &req, &resp);
      CheckStatus(st);
      if (st.ok()) {
        grpc::ServerContext ctx0;
        v1::AddRequest zero;
        zero.set_key(req.key());
        v1::AddResponse read;
        const grpc::Status st0 = c.rendezvous.Add(&ctx0, &zero, &read);
        Check(st0.ok() && read.value() == resp.value(), kName, "an Add is read back by an Add of 0");
      } else {
        const auto after = c.Get(req.key());
        Check(after.found() == before.found() && after.value() == before.value(), kName,
              "a refused Add changes nothing");
      }
      return;
    }
    case 3: {  // Rendezvous.Ping
      v1::PingRequest req;
      v1::PingResponse resp;
      const grpc::Status st = c.rendezvous.Ping(&ctx, &req, &resp);
      Check(st.ok(), kName, "Ping answers");
      return;
    }
    case 4: {  // SourceRegistry.Register
      v1::RegisterSourceRequest req;
      if (!Parse(req, data, size)) return;
      const std::size_t before = c.Listed(req.source().model_identity());
      v1::RegisterSourceResponse resp;
      const grpc::Status st = c.sources.Register(&ctx, &req, &resp);
      CheckStatus(st);
      const std::size_t after = c.Listed(req.source().model_identity());
      if (st.ok()) {
        Check(!resp.source().source_id().empty(), kName, "a registered source has an id");
        Check(after >= 1, kName, "a registered source is listed under its model identity");
      } else {
        Check(after == before, kName, "a refused Register changes nothing");
      }
      return;
    }
    case 5: {  // SourceRegistry.Heartbeat
      v1::HeartbeatSourceRequest req;
      if (!Parse(req, data, size)) return;
      CheckStatus(c.Heartbeat(req.source_id()));
      return;
    }
    case 6: {  // SourceRegistry.List
      v1::ListSourcesRequest req;
      if (!Parse(req, data, size)) return;
      v1::ListSourcesResponse resp;
      CheckStatus(c.sources.List(&ctx, &req, &resp));
      return;
    }
    case 7: {  // SourceRegistry.MarkStale
      v1::MarkSourceStaleRequest req;
      if (!Parse(req, data, size)) return;
      v1::MarkSourceStaleResponse resp;
      CheckStatus(c.sources.MarkStale(&ctx, &req, &resp));
      return;
    }
    case 8: {  // SourceRegistry.Deregister
      v1::DeregisterSourceRequest req;
      if (!Parse(req, data, size)) return;
      v1::DeregisterSourceResponse resp;
      const grpc::Status st = c.sources.Deregister(&ctx, &req, &resp);
      CheckStatus(st);
      if (st.ok()) {
        Check(c.Heartbeat(req.source_id()).error_code() == StatusCode::NOT_FOUND, kName,
              "a deregistered source's heartbeat is NOT_FOUND");
      }
      return;
    }
    case 9: {  // Jobs.Join
      v1::JoinJobRequest req;
      if (!Parse(req, data, size)) return;
      v1::JoinJobResponse resp;
      CheckStatus(c.jobs.Join(&ctx, &req, &resp));
      return;
    }
    case 10: {  // Jobs.HeartbeatMember
      v1::HeartbeatMemberRequest req;
      if (!Parse(req, data, size)) return;
      int answers = 0;
      c.jobs.ServeHeartbeatMember(ctx, req, [&](grpc::Status st) {
        CheckStatus(st);
        ++answers;
      });
      Check(answers == 1, kName, "an in-memory member heartbeat is answered exactly once, at once");
      return;
    }
    case 11: {  // Jobs.Leave
      v1::LeaveJobRequest req;
      if (!Parse(req, data, size)) return;
      v1::LeaveJobResponse resp;
      CheckStatus(c.jobs.Leave(&ctx, &req, &resp));
      return;
    }
    case 12: {  // Jobs.Get
      v1::GetJobRequest req;
      if (!Parse(req, data, size)) return;
      v1::GetJobResponse resp;
      CheckStatus(c.jobs.Get(&ctx, &req, &resp));
      return;
    }
    default: {  // Jobs.CommitVersion
      v1::CommitVersionRequest req;
      if (!Parse(req, data, size)) return;
      v1::CommitVersionResponse resp;
      CheckStatus(c.jobs.CommitVersion(&ctx, &req, &resp));
      return;
    }
  }
}

}  // namespace

#ifndef SHARDWIRE_FUZZ_SEED_MAIN
extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Coordinator c;
  std::size_t at = 0;
  while (at + 3 <= size) {
    const int method = data[at] % 14;
    const std::size_t length = static_cast<std::size_t>(data[at + 1]) | (static_cast<std::size_t>(data[at + 2]) << 8);
    at += 3;
    const std::size_t n = std::min(length, size - at);
    RunOne(c, method, data + at, n);
    at += n;
  }
  return 0;
}
#else
namespace {

// Appends one record: method byte, 2-byte little-endian length, the serialised request.
void Record(std::string& out, int method, const google::protobuf::MessageLite& req) {
  const std::string bytes = req.SerializeAsString();
  out.push_back(static_cast<char>(method));
  out.push_back(static_cast<char>(bytes.size() & 0xFF));
  out.push_back(static_cast<char>((bytes.size() >> 8) & 0xFF));
  out += bytes;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
    return 2;
  }
  std::vector<std::string> seeds(3);
  {  // Rendezvous
    v1::PutRequest put;
    put.set_key("job/engine/0");
    put.set_value("metadata");
    Record(seeds[0], 0, put);
    v1::GetRequest get;
    get.set_key("job/engine/0");
    Record(seeds[0], 1, get);
    v1::AddRequest add;
    add.set_key("job/claims");
    add.set_delta(3);
    add.set_request_id("r1");
    Record(seeds[0], 2, add);
    Record(seeds[0], 2, add);
    Record(seeds[0], 3, v1::PingRequest());
  }
  {  // SourceRegistry
    v1::RegisterSourceRequest reg;
    v1::Source* src = reg.mutable_source();
    src->set_model_identity("llama@rev");
    src->set_instance_id("instance-a");
    src->set_rank(0);
    src->set_world_size(2);
    src->set_layout("tp=2");
    src->set_layout_fingerprint("fp");
    src->set_metadata("blob");
    Record(seeds[1], 4, reg);
    v1::ListSourcesRequest list;
    list.set_model_identity("llama@rev");
    Record(seeds[1], 6, list);
    v1::HeartbeatSourceRequest hb;
    hb.set_source_id("instance-a/0");
    Record(seeds[1], 5, hb);
    v1::MarkSourceStaleRequest stale;
    stale.set_source_id("instance-a/0");
    stale.set_reason("loader saw a digest mismatch");
    stale.set_hold(true);
    Record(seeds[1], 7, stale);
    v1::DeregisterSourceRequest dereg;
    dereg.set_source_id("instance-a/0");
    Record(seeds[1], 8, dereg);
  }
  {  // Jobs
    v1::JoinJobRequest join;
    join.set_job("rl");
    join.mutable_member()->set_member_id("engine-0");
    Record(seeds[2], 9, join);
    v1::HeartbeatMemberRequest hb;
    hb.set_job("rl");
    hb.set_member_id("engine-0");
    Record(seeds[2], 10, hb);
    v1::CommitVersionRequest commit;
    commit.set_job("rl");
    commit.set_member_id("engine-0");
    commit.set_version(7);
    Record(seeds[2], 13, commit);
    v1::GetJobRequest get;
    get.set_job("rl");
    Record(seeds[2], 12, get);
    v1::LeaveJobRequest leave;
    leave.set_job("rl");
    leave.set_member_id("engine-0");
    Record(seeds[2], 11, leave);
  }
  for (std::size_t i = 0; i < seeds.size(); ++i) {
    const std::string path = std::string(argv[1]) + "/seed-" + std::to_string(i);
    FILE* f = std::fopen(path.c_str(), "wb");
    if (f == nullptr || std::fwrite(seeds[i].data(), 1, seeds[i].size(), f) != seeds[i].size()) return 1;
    std::fclose(f);
  }
  return 0;
}
#endif
