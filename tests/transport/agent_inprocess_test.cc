// Two Agents in one process, progressed from one thread. Each test drives both
// agents explicitly (PumpUntil), because a target whose memory is
// caller-registered only receives bytes while it progresses.
#include <gtest/gtest.h>

#include <cstdio>
#include <limits>
#include <memory>
#include <string>

#include "shardwire/agent.h"
#include "transport/metadata_blob.h"
#include "transport/transport_test_util.h"

namespace shardwire {
namespace {

using testing::Bytes;
using testing::Str;

using testing::FillPattern;
using testing::FirstMismatch;
using testing::FirstNotEqual;
using testing::PumpUntil;

constexpr std::byte kUntouched{0xEE};

enum class Mem { kArena, kRegistered };

std::string MemName(Mem m) { return m == Mem::kArena ? "arena" : "registered"; }

// An agent plus one region of `length` bytes of the given kind.
struct Side {
  std::unique_ptr<Agent> agent;
  std::vector<std::byte> owned;  // backing store for Mem::kRegistered
  RegionId region = 0;

  std::span<std::byte> bytes() const { return agent->RegionBytes(region); }
};

Side MakeSide(const std::string& name, Mem mem, std::size_t length,
              PeerFailureDetection detection = PeerFailureDetection::kAuto, const std::string& backend = "ucx") {
  Side s;
  auto a = Agent::Create({.name = name, .backend = backend, .ucx = {.failure_detection = detection}});
  EXPECT_TRUE(a.ok()) << a.status().ToString();
  if (!a.ok()) return s;
  s.agent = std::move(a).value();
  Result<RegionId> r = InvalidArgument("unset");
  if (mem == Mem::kArena) {
    r = s.agent->AllocateArena(length);
  } else {
    s.owned.resize(length);
    r = s.agent->RegisterMemory(s.owned.data(), length);
  }
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  if (r.ok()) s.region = *r;
  return s;
}

// Imports each side's metadata into the other.
void Connect(Side& a, Side& b) {
  auto ma = a.agent->ExportMetadata();
  auto mb = b.agent->ExportMetadata();
  ASSERT_TRUE(ma.ok() && mb.ok());
  auto na = b.agent->ImportMetadata(*ma);
  ASSERT_TRUE(na.ok()) << na.status().ToString();
  EXPECT_EQ(*na, a.agent->name());
  auto nb = a.agent->ImportMetadata(*mb);
  ASSERT_TRUE(nb.ok()) << nb.status().ToString();
  EXPECT_EQ(*nb, b.agent->name());
}

// Posts `h` on `init` and progresses both until complete; returns the status.
Status RunToCompletion(Agent& init, Agent& other, TransferHandle h) {
  SW_RETURN_IF_ERROR(init.Post(h));
  Status result = TimedOut("transfer did not complete in the test's 20 s");
  PumpUntil(init, other, [&] {
    auto t = init.Test(h);
    if (!t.ok()) {
      result = t.status();
      return true;
    }
    if (*t) result = Status::Ok();
    return *t;
  });
  return result;
}

constexpr std::size_t kRegion = 1 << 20;

// Descriptors with distinct, unaligned offsets on both sides; the rest of the
// target region must stay untouched.
std::vector<TransferDescriptor> Descs(RegionId local, RegionId remote) {
  return {
      {local, 0, remote, 100, 4096},
      {local, 8192, remote, 300000, 65537},
      {local, 500001, remote, 500001, 200000},
      {local, kRegion - 7, remote, kRegion - 7, 7},
  };
}

// Verifies `target` holds, at each descriptor's remote range, the pattern of
// the matching source range, and kUntouched elsewhere.
void VerifyWrite(std::span<const std::byte> target, const std::vector<TransferDescriptor>& descs, std::uint64_t seed) {
  std::vector<bool> covered(target.size(), false);
  for (std::size_t i = 0; i < descs.size(); ++i) {
    const auto& d = descs[i];
    auto mm = FirstMismatch(target.subspan(d.remote_offset, d.length), seed, d.local_offset);
    EXPECT_FALSE(mm.has_value()) << "descriptor " << i << " differs at byte " << *mm;
    for (std::uint64_t k = 0; k < d.length; ++k) covered[d.remote_offset + k] = true;
  }
  for (std::size_t k = 0; k < target.size(); ++k) {
    if (!covered[k] && target[k] != kUntouched) {
      ADD_FAILURE() << "byte " << k << " outside every descriptor was modified";
      return;
    }
  }
}


// The backend-independent tests run on both backends (AgentOptions::backend).
const std::vector<std::string> kBackends = {"ucx", "inproc"};

struct BackendMem {
  std::string backend;
  Mem mem;
};

void PrintTo(const BackendMem& p, std::ostream* os) { *os << p.backend << "_" << MemName(p.mem); }

std::vector<BackendMem> AllBackendMems() {
  std::vector<BackendMem> out;
  for (const auto& b : kBackends)
    for (Mem m : {Mem::kArena, Mem::kRegistered}) out.push_back({b, m});
  return out;
}

class InProcess : public ::testing::TestWithParam<BackendMem> {};

TEST_P(InProcess, WriteIsByteExact) {
  Side a = MakeSide("writer", GetParam().mem, kRegion, PeerFailureDetection::kAuto, GetParam().backend);
  Side b = MakeSide("target", GetParam().mem, kRegion, PeerFailureDetection::kAuto, GetParam().backend);
  ASSERT_TRUE(a.agent && b.agent);
  Connect(a, b);
  FillPattern(a.bytes(), 11);
  std::fill(b.bytes().begin(), b.bytes().end(), kUntouched);
  const auto descs = Descs(a.region, b.region);
  auto h = a.agent->PrepareTransfer(TransferOp::kWrite, "target", descs, std::nullopt);
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  ASSERT_TRUE(RunToCompletion(*a.agent, *b.agent, *h).ok());
  VerifyWrite(b.bytes(), descs, 11);
  EXPECT_TRUE(a.agent->Release(*h).ok());
}

TEST_P(InProcess, ReadIsByteExact) {
  Side a = MakeSide("reader", GetParam().mem, kRegion, PeerFailureDetection::kAuto, GetParam().backend);
  Side b = MakeSide("source", GetParam().mem, kRegion, PeerFailureDetection::kAuto, GetParam().backend);
  ASSERT_TRUE(a.agent && b.agent);
  Connect(a, b);
  FillPattern(b.bytes(), 23);
  std::fill(a.bytes().begin(), a.bytes().end(), kUntouched);
  const auto descs = Descs(a.region, b.region);
  auto h = a.agent->PrepareTransfer(TransferOp::kRead, "source", descs, std::nullopt);
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  Status s = RunToCompletion(*a.agent, *b.agent, *h);
  ASSERT_TRUE(s.ok()) << s.ToString();
  for (std::size_t i = 0; i < descs.size(); ++i) {
    const auto& d = descs[i];
    auto mm = FirstMismatch(a.bytes().subspan(d.local_offset, d.length), 23, d.remote_offset);
    EXPECT_FALSE(mm.has_value()) << "descriptor " << i << " differs at byte " << *mm;
  }
}

TEST_P(InProcess, SamePreparedTransferPostsManyTimes) {
  Side a = MakeSide("writer", GetParam().mem, kRegion, PeerFailureDetection::kAuto, GetParam().backend);
  Side b = MakeSide("target", GetParam().mem, kRegion, PeerFailureDetection::kAuto, GetParam().backend);
  ASSERT_TRUE(a.agent && b.agent);
  Connect(a, b);
  std::fill(b.bytes().begin(), b.bytes().end(), kUntouched);
  const auto descs = Descs(a.region, b.region);
  auto h = a.agent->PrepareTransfer(TransferOp::kWrite, "target", descs, Bytes("step"));
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  for (std::uint64_t step = 1; step <= 5; ++step) {
    FillPattern(a.bytes(), 100 + step);
    Status s = RunToCompletion(*a.agent, *b.agent, *h);
    ASSERT_TRUE(s.ok()) << "step " << step << ": " << s.ToString();
    ASSERT_TRUE(PumpUntil(*a.agent, *b.agent, [&] { return !b.agent->TakeNotifications().empty(); }))
        << "no notification for step " << step;
    VerifyWrite(b.bytes(), descs, 100 + step);
  }
  // In-flight refusals (double Post, Release) are tested with a stopped target
  // process in agent_multiprocess_test.cc, where "in flight" is deterministic.
  EXPECT_TRUE(a.agent->Release(*h).ok());
  EXPECT_EQ(a.agent->Release(*h).code(), ErrorCode::kNotFound);
}

TEST_P(InProcess, NotificationArrivesOnlyAfterData) {
  Side a = MakeSide("writer", GetParam().mem, kRegion, PeerFailureDetection::kAuto, GetParam().backend);
  Side b = MakeSide("target", GetParam().mem, kRegion, PeerFailureDetection::kAuto, GetParam().backend);
  ASSERT_TRUE(a.agent && b.agent);
  Connect(a, b);
  FillPattern(a.bytes(), 7);
  std::fill(b.bytes().begin(), b.bytes().end(), kUntouched);
  const std::vector<TransferDescriptor> descs = {{a.region, 0, b.region, 0, kRegion}};
  auto h = a.agent->PrepareTransfer(TransferOp::kWrite, "target", descs, Bytes("weights v1 ready"));
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  ASSERT_TRUE(a.agent->Post(*h).ok());
  std::vector<Notification> got;
  // Whenever the target first sees the notification, all bytes must be there.
  ASSERT_TRUE(PumpUntil(*a.agent, *b.agent, [&] {
    (void)a.agent->Test(*h);
    got = b.agent->TakeNotifications();
    return !got.empty();
  }));
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].peer, "writer");
  EXPECT_EQ(Str(got[0].payload), "weights v1 ready");
  auto mm = FirstMismatch(b.bytes(), 7);
  EXPECT_FALSE(mm.has_value()) << "byte " << *mm << " not yet written when the notification arrived";
  ASSERT_TRUE(PumpUntil(*a.agent, *b.agent, [&] { auto t = a.agent->Test(*h); return t.ok() && *t; }));
}

INSTANTIATE_TEST_SUITE_P(Memory, InProcess, ::testing::ValuesIn(AllBackendMems()),
                         [](const auto& p) { return p.param.backend + "_" + MemName(p.param.mem); });


// The target's owner never calls its agent: the target's lane threads serve
// emulated RMA (caller-registered memory, TCP) and one-sided puts need nobody.
// Also records which transports and write path the initiator chose.
struct ProbeParams {
  Mem mem;  // the target's (and the initiator's) memory kind
  PeerFailureDetection detection;
  TransferOp op;
};

void PrintTo(const ProbeParams& p, std::ostream* os) {
  *os << (p.op == TransferOp::kWrite ? "write " : "read ") << MemName(p.mem)
      << (p.detection == PeerFailureDetection::kAuto ? " auto" : " ucx-peer");
}

class TargetNeverCalls : public ::testing::TestWithParam<ProbeParams> {};

TEST_P(TargetNeverCalls, TransferCompletesWithInitiatorWaitOnly) {
  const ProbeParams p = GetParam();
  Side a = MakeSide("initiator", p.mem, kRegion, p.detection);
  Side b = MakeSide("target", p.mem, kRegion, p.detection);
  ASSERT_TRUE(a.agent && b.agent);
  Connect(a, b);
  Side& src = p.op == TransferOp::kWrite ? a : b;
  Side& dst = p.op == TransferOp::kWrite ? b : a;
  FillPattern(src.bytes(), 99);
  std::fill(dst.bytes().begin(), dst.bytes().end(), kUntouched);
  auto h = a.agent->PrepareTransfer(p.op, "target", {{a.region, 0, b.region, 0, kRegion}}, std::nullopt);
  ASSERT_TRUE(h.ok());
  ASSERT_TRUE(a.agent->Post(*h).ok());
  Status s = a.agent->Wait(*h, 30);  // b's owner (this thread) makes no call on b
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_FALSE(FirstMismatch(dst.bytes(), 99).has_value());
  auto info = a.agent->DescribePeer("target");
  ASSERT_TRUE(info.ok());
  std::string tls;
  for (const auto& t : info->transports) tls += t + " ";
  std::printf("[ probe    ] %-24s transports [ %s] write path %s, UCX error handling %s\n",
              ::testing::PrintToString(p).c_str(), tls.c_str(), std::string(WritePathName(info->write_path)).c_str(),
              info->ucx_error_handling ? "PEER" : "NONE + liveness");
  EXPECT_EQ(info->same_host, true);
  EXPECT_EQ(info->ucx_error_handling, p.detection == PeerFailureDetection::kUcxPeer);
  EXPECT_EQ(a.agent->Release(*h).code(), ErrorCode::kOk);
}

std::vector<ProbeParams> AllProbes() {
  std::vector<ProbeParams> out;
  for (Mem m : {Mem::kArena, Mem::kRegistered})
    for (auto d : {PeerFailureDetection::kAuto, PeerFailureDetection::kUcxPeer})
      for (auto op : {TransferOp::kWrite, TransferOp::kRead}) out.push_back({m, d, op});
  return out;
}

INSTANTIATE_TEST_SUITE_P(Matrix, TargetNeverCalls, ::testing::ValuesIn(AllProbes()), [](const auto& i) {
  return std::string(i.param.op == TransferOp::kWrite ? "write_" : "read_") + MemName(i.param.mem) +
         (i.param.detection == PeerFailureDetection::kAuto ? "_auto" : "_ucxpeer");
});

TEST(Agent, CreateRejectsBadOptions) {
  EXPECT_EQ(Agent::Create({.name = ""}).status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(Agent::Create({.name = "x", .connect_timeout_s = -1}).status().code(), ErrorCode::kInvalidArgument);
  // Infinite: the flushing close would wait without end (and overflow its deadline).
  EXPECT_EQ(Agent::Create({.name = "x", .connect_timeout_s = std::numeric_limits<double>::infinity()}).status().code(),
            ErrorCode::kInvalidArgument);
}

// Agent tests that hold on every backend (AgentOptions::backend).
class AgentBackends : public ::testing::TestWithParam<std::string> {};

Side MakeOn(const std::string& backend, const std::string& name, Mem mem, std::size_t length) {
  return MakeSide(name, mem, length, PeerFailureDetection::kAuto, backend);
}

TEST_P(AgentBackends, RegistrationErrorsAndDeregister) {
  Side a = MakeOn(GetParam(), "a", Mem::kArena, 4096);
  ASSERT_TRUE(a.agent);
  EXPECT_EQ(a.agent->RegisterMemory(nullptr, 10).status().code(), ErrorCode::kInvalidArgument);
  std::vector<std::byte> buf(16);
  EXPECT_EQ(a.agent->RegisterMemory(buf.data(), 0).status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(a.agent->AllocateArena(0).status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(a.agent->RegionBytes(a.region).size(), 4096u);
  EXPECT_TRUE(a.agent->RegionBytes(999).empty());
  EXPECT_TRUE(a.agent->Deregister(a.region).ok());
  EXPECT_EQ(a.agent->Deregister(a.region).code(), ErrorCode::kNotFound);
  EXPECT_TRUE(a.agent->RegionBytes(a.region).empty());
}

TEST(Agent, MetadataListsEveryRegion) {
  Side a = MakeSide("exporter", Mem::kArena, 4096);
  ASSERT_TRUE(a.agent);
  std::vector<std::byte> buf(8192);
  auto r2 = a.agent->RegisterMemory(buf.data(), buf.size());
  ASSERT_TRUE(r2.ok());
  auto blob = a.agent->ExportMetadata();
  ASSERT_TRUE(blob.ok());
  auto m = transport::DecodeAgentMetadata(*blob);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_EQ(m->name, "exporter");
  ASSERT_EQ(m->regions.size(), 2u);
  EXPECT_EQ(m->regions[0].id, a.region);
  EXPECT_EQ(m->regions[0].length, 4096u);
  EXPECT_EQ(m->regions[1].id, *r2);
  EXPECT_EQ(m->regions[1].base, reinterpret_cast<std::uint64_t>(buf.data()));
  EXPECT_EQ(m->regions[1].length, 8192u);
  ASSERT_EQ(m->sections.size(), 1u);
  EXPECT_EQ(m->sections[0].backend, "ucx");
  EXPECT_FALSE(m->sections[0].connection.empty());
  ASSERT_EQ(m->sections[0].region_keys.size(), 2u);
  EXPECT_FALSE(m->sections[0].region_keys[0].empty());
  std::printf("[ info     ] metadata blob: %zu bytes (%u lanes, UCX connection %zu, rkeys %zu + %zu bytes)\n",
              blob->size(), a.agent->options().lanes, m->sections[0].connection.size(),
              m->sections[0].region_keys[0].size(), m->sections[0].region_keys[1].size());
  // A corrupted blob is refused by ImportMetadata with the decoder's error.
  Side b = MakeSide("importer", Mem::kArena, 64);
  ASSERT_TRUE(b.agent);
  auto bad = *blob;
  bad[bad.size() / 2] ^= std::byte{1};
  EXPECT_EQ(b.agent->ImportMetadata(bad).status().code(), ErrorCode::kCorruptData);
}

TEST_P(AgentBackends, OutOfRangeDescriptorIsRejectedAndNothingIsPrepared) {
  Side a = MakeOn(GetParam(), "writer", Mem::kRegistered, 4096);
  Side b = MakeOn(GetParam(), "target", Mem::kRegistered, 4096);
  ASSERT_TRUE(a.agent && b.agent);
  Connect(a, b);
  std::fill(b.bytes().begin(), b.bytes().end(), kUntouched);
  FillPattern(a.bytes(), 5);
  auto expect_bad = [&](std::vector<TransferDescriptor> d, const std::string& needle) {
    auto h = a.agent->PrepareTransfer(TransferOp::kWrite, "target", std::move(d), Bytes("n"));
    ASSERT_FALSE(h.ok());
    EXPECT_EQ(h.status().code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(h.status().message().find(needle), std::string::npos) << h.status().ToString();
  };
  const TransferDescriptor good{a.region, 0, b.region, 0, 1024};
  expect_bad({good, good, {a.region, 0, b.region, 4000, 97}}, "descriptor 2");
  expect_bad({good, {a.region, 4095, b.region, 0, 2}}, "descriptor 1");
  expect_bad({{a.region, UINT64_MAX, b.region, 0, 2}}, "descriptor 0");
  expect_bad({good, {a.region, 0, b.region, 1, UINT64_MAX}}, "descriptor 1");
  expect_bad({good, good, good, {a.region + 100, 0, b.region, 0, 1}}, "descriptor 3: local region");
  expect_bad({{a.region, 0, b.region + 100, 0, 1}}, "descriptor 0: peer target has no region");
  EXPECT_EQ(a.agent->PrepareTransfer(TransferOp::kWrite, "nobody", {good}, std::nullopt).status().code(),
            ErrorCode::kNotFound);
  // Nothing was prepared: no pins held, nothing written, no notification sent.
  for (int i = 0; i < 100; ++i) {
    a.agent->Progress();
    b.agent->Progress();
  }
  EXPECT_FALSE(FirstNotEqual(b.bytes(), kUntouched).has_value());
  EXPECT_TRUE(b.agent->TakeNotifications().empty());
  // Exactly at the boundary is fine; a prepared transfer pins its region.
  auto ok = a.agent->PrepareTransfer(TransferOp::kWrite, "target", {{a.region, 0, b.region, 3072, 1024}}, std::nullopt);
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_EQ(a.agent->Deregister(a.region).code(), ErrorCode::kInvalidArgument);
  EXPECT_TRUE(a.agent->Release(*ok).ok());
  EXPECT_TRUE(a.agent->Deregister(a.region).ok());
}

TEST_P(AgentBackends, StandaloneMessagesIncludingLargeOnes) {
  Side a = MakeOn(GetParam(), "sender", Mem::kArena, 64);
  Side b = MakeOn(GetParam(), "receiver", Mem::kArena, 64);
  ASSERT_TRUE(a.agent && b.agent);
  Connect(a, b);
  std::vector<std::byte> big(1 << 20);
  FillPattern(big, 77);
  ASSERT_TRUE(a.agent->SendMessage("receiver", Bytes("hello")).ok());
  ASSERT_TRUE(a.agent->SendMessage("receiver", {}).ok());
  ASSERT_TRUE(a.agent->SendMessage("receiver", big).ok());
  ASSERT_TRUE(b.agent->SendMessage("sender", Bytes("back")).ok());
  std::vector<Notification> got;
  ASSERT_TRUE(PumpUntil(*a.agent, *b.agent, [&] {
    for (auto& n : b.agent->TakeNotifications()) got.push_back(std::move(n));
    return got.size() >= 3;
  }));
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[0].peer, "sender");
  EXPECT_EQ(Str(got[0].payload), "hello");
  EXPECT_TRUE(got[1].payload.empty());
  ASSERT_EQ(got[2].payload.size(), big.size());
  EXPECT_FALSE(FirstMismatch(got[2].payload, 77).has_value());
  // WaitNotification on the other side (the sender of "back" is b, progressed
  // by PumpUntil above; a's wait progresses a).
  auto n = a.agent->WaitNotification(5);
  ASSERT_TRUE(n.ok()) << n.status().ToString();
  EXPECT_EQ(n->peer, "receiver");
  EXPECT_EQ(Str(n->payload), "back");
  auto none = a.agent->WaitNotification(0.05);
  EXPECT_EQ(none.status().code(), ErrorCode::kTimedOut);
  EXPECT_EQ(a.agent->SendMessage("nobody", Bytes("x")).code(), ErrorCode::kNotFound);
}

TEST_P(AgentBackends, InvalidateAndReimportPeer) {
  Side a = MakeOn(GetParam(), "writer", Mem::kArena, 4096);
  Side b = MakeOn(GetParam(), "target", Mem::kArena, 4096);
  ASSERT_TRUE(a.agent && b.agent);
  Connect(a, b);
  FillPattern(a.bytes(), 1);
  const std::vector<TransferDescriptor> d = {{a.region, 0, b.region, 0, 4096}};
  auto h = a.agent->PrepareTransfer(TransferOp::kWrite, "target", d, std::nullopt);
  ASSERT_TRUE(h.ok());
  ASSERT_TRUE(RunToCompletion(*a.agent, *b.agent, *h).ok());

  // The blob of "target" sent by someone else ("intruder"): refused before anything is
  // replaced, so the prepared transfer still moves the bytes.
  auto blob = b.agent->ExportMetadata();
  ASSERT_TRUE(blob.ok());
  auto refused = a.agent->ImportMetadata(*blob, "intruder");
  EXPECT_EQ(refused.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("names agent 'target', expected 'intruder'"), std::string::npos)
      << refused.status().ToString();
  FillPattern(a.bytes(), 3);
  ASSERT_TRUE(RunToCompletion(*a.agent, *b.agent, *h).ok()) << "a refused blob replaced the peer";
  EXPECT_FALSE(FirstMismatch(b.bytes(), 3).has_value());

  // Re-import (under the name it carries): the old plan is stale, a new one works.
  auto named = a.agent->ImportMetadata(*blob, "target");
  ASSERT_TRUE(named.ok()) << named.status().ToString();
  EXPECT_EQ(*named, "target");
  EXPECT_EQ(a.agent->Post(*h).code(), ErrorCode::kPeerDisconnected);
  auto h2 = a.agent->PrepareTransfer(TransferOp::kWrite, "target", d, std::nullopt);
  ASSERT_TRUE(h2.ok());
  FillPattern(a.bytes(), 2);
  Status s = RunToCompletion(*a.agent, *b.agent, *h2);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_FALSE(FirstMismatch(b.bytes(), 2).has_value());

  // Invalidate: posts fail, handles can still be released, the name is gone.
  ASSERT_TRUE(a.agent->InvalidatePeer("target").ok());
  EXPECT_EQ(a.agent->Post(*h2).code(), ErrorCode::kPeerDisconnected);
  EXPECT_TRUE(a.agent->Release(*h).ok());
  EXPECT_TRUE(a.agent->Release(*h2).ok());
  EXPECT_EQ(a.agent->InvalidatePeer("target").code(), ErrorCode::kNotFound);
  EXPECT_EQ(a.agent->PrepareTransfer(TransferOp::kWrite, "target", d, std::nullopt).status().code(),
            ErrorCode::kNotFound);
}

INSTANTIATE_TEST_SUITE_P(Backend, AgentBackends, ::testing::ValuesIn(kBackends),
                         [](const auto& p) { return p.param; });

}  // namespace
}  // namespace shardwire
