// Real processes, real UCX: the test process forks a child, each side creates
// its own Agent after the fork, and metadata blobs travel over a socketpair.
// Children report through their exit code (0 = verified) and never touch gtest.
// Every wait has a timeout; children are reaped with WaitPidFor.
#include <gtest/gtest.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "die_with_test_process.h"
#include "shardwire/agent.h"
#include "transport/transport_test_util.h"

namespace shardwire {
namespace {

using testing::Bytes;
using testing::Str;

using testing::FillPattern;
using testing::FirstMismatch;
using testing::PatternByte;
using testing::RecvFrame;
using testing::SendFrame;
using testing::WaitPidFor;

constexpr std::size_t kSize = 64u << 20;  // 64 MiB
constexpr double kStepTimeoutS = 60;

enum class Mem { kArena, kRegistered };

struct Params {
  Mem mem;
  PeerFailureDetection detection;
};

std::string ParamName(const Params& p) {
  return std::string(p.mem == Mem::kArena ? "arena" : "registered") +
         (p.detection == PeerFailureDetection::kAuto ? "_auto" : "_ucxpeer");
}

// Several descriptors of uneven sizes that together cover the whole target
// region exactly once; target ranges are a rotation of source ranges, so
// offsets differ on both sides.
std::vector<TransferDescriptor> CoveringDescs(RegionId local, RegionId remote) {
  const std::uint64_t cuts[] = {0, 1, 4096, 5u << 20, (5u << 20) + 12345, 31u << 20, 50u << 20, kSize};
  std::vector<TransferDescriptor> out;
  const std::uint64_t shift = 3u << 20;
  for (std::size_t i = 0; i + 1 < std::size(cuts); ++i) {
    const std::uint64_t len = cuts[i + 1] - cuts[i];
    // Source range: the same interval, rotated by `shift` (wrapping ranges split).
    std::uint64_t src = (cuts[i] + shift) % kSize;
    std::uint64_t done = 0;
    while (done < len) {
      const std::uint64_t piece = std::min(len - done, kSize - src);
      out.push_back({local, src, remote, cuts[i] + done, piece});
      done += piece;
      src = (src + piece) % kSize;
    }
  }
  return out;
}

// Child side checks: every descriptor's target range holds the pattern of its
// source range.
bool VerifyCovering(std::span<const std::byte> target, const std::vector<TransferDescriptor>& descs, std::uint64_t seed) {
  for (std::size_t i = 0; i < descs.size(); ++i) {
    const auto& d = descs[i];
    auto mm = FirstMismatch(target.subspan(d.remote_offset, d.length), seed, d.local_offset);
    if (mm) {
      std::fprintf(stderr, "child: descriptor %zu differs at byte %zu\n", i, *mm);
      return false;
    }
  }
  return true;
}

Result<RegionId> MakeRegion(Agent& a, Mem mem, std::vector<std::byte>& owned) {
  if (mem == Mem::kArena) return a.AllocateArena(kSize);
  owned.resize(kSize);
  return a.RegisterMemory(owned.data(), owned.size());
}

// Exchanges blobs: sends ours, imports theirs. Returns the peer name or "".
std::string Handshake(Agent& a, int fd) {
  auto mine = a.ExportMetadata();
  if (!mine.ok() || !SendFrame(fd, *mine)) return "";
  auto theirs = RecvFrame(fd, kStepTimeoutS);
  if (!theirs) return "";
  auto name = a.ImportMetadata(*theirs);
  if (!name.ok()) {
    std::fprintf(stderr, "%s: ImportMetadata: %s\n", a.name().c_str(), name.status().ToString().c_str());
    return "";
  }
  return *name;
}

constexpr int kSteps = 2;

// Target process: receives kSteps posts of one prepared WRITE, verifying every
// byte after each notification and acknowledging it.
int TargetChild(int fd, Params p) {
  auto agent = Agent::Create({.name = "child", .ucx = {.failure_detection = p.detection}});
  if (!agent.ok()) return 10;
  Agent& a = **agent;
  std::vector<std::byte> owned;
  auto region = MakeRegion(a, p.mem, owned);
  if (!region.ok()) return 11;
  std::fill(a.RegionBytes(*region).begin(), a.RegionBytes(*region).end(), std::byte{0xEE});
  if (Handshake(a, fd) != "parent") return 12;
  auto peer_region = RecvFrame(fd, kStepTimeoutS);  // parent's source region id
  if (!peer_region || peer_region->size() != sizeof(RegionId)) return 13;
  RegionId src = 0;
  std::memcpy(&src, peer_region->data(), sizeof(src));
  const auto descs = CoveringDescs(src, *region);
  for (int step = 1; step <= kSteps; ++step) {
    auto n = a.WaitNotification(kStepTimeoutS);
    if (!n.ok()) {
      std::fprintf(stderr, "child: WaitNotification: %s\n", n.status().ToString().c_str());
      return 14;
    }
    if (n->peer != "parent" || Str(n->payload) != "step") return 15;
    if (!VerifyCovering(a.RegionBytes(*region), descs, 1000 + static_cast<std::uint64_t>(step))) return 2;
    if (!a.SendMessage("parent", Bytes("ack " + std::to_string(step))).ok()) return 16;
  }
  // Let the last ack leave before the agent is destroyed (it is an eager
  // message; a short progress window suffices).
  (void)a.WaitNotification(0.2);
  return 0;
}

pid_t ForkChild(int fds[2], const std::function<int(int)>& child) {
  if (::socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0) return -1;
  const pid_t test_pid = ::getpid();
  const pid_t pid = ::fork();
  if (pid == 0) {
    shardwire::testing_util::DieWithTestProcess(test_pid);
    ::close(fds[0]);
    int code = 99;
    code = child(fds[1]);
    ::_exit(code);
  }
  ::close(fds[1]);
  return pid;
}

void PrintTo(const Params& p, std::ostream* os) { *os << ParamName(p); }

class MultiProcess : public ::testing::TestWithParam<Params> {};

TEST_P(MultiProcess, Write64MiBInSeveralDescriptorsWithNotification) {
  const Params p = GetParam();
  int fds[2];
  const pid_t pid = ForkChild(fds, [p](int fd) { return TargetChild(fd, p); });
  ASSERT_GT(pid, 0);
  const int fd = fds[0];

  auto agent = Agent::Create({.name = "parent", .ucx = {.failure_detection = p.detection}});
  ASSERT_TRUE(agent.ok()) << agent.status().ToString();
  Agent& a = **agent;
  std::vector<std::byte> owned;
  auto region = MakeRegion(a, p.mem, owned);
  ASSERT_TRUE(region.ok()) << region.status().ToString();
  ASSERT_EQ(Handshake(a, fd), "child");
  RegionId src = *region;
  ASSERT_TRUE(SendFrame(fd, std::span<const std::byte>(reinterpret_cast<const std::byte*>(&src), sizeof(src))));

  // The child's region id is its first (and only) region: 1.
  const RegionId child_region = 1;
  const auto descs = CoveringDescs(src, child_region);
  ASSERT_GE(descs.size(), 7u);
  // Prepared once, posted every step (the RL-sync pattern).
  auto h = a.PrepareTransfer(TransferOp::kWrite, "child", descs, Bytes("step"));
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  for (int step = 1; step <= kSteps; ++step) {
    FillPattern(a.RegionBytes(src), 1000 + static_cast<std::uint64_t>(step));
    ASSERT_TRUE(a.Post(*h).ok());
    Status s = a.Wait(*h, kStepTimeoutS);
    ASSERT_TRUE(s.ok()) << "step " << step << ": " << s.ToString();
    auto ack = a.WaitNotification(kStepTimeoutS);
    ASSERT_TRUE(ack.ok()) << ack.status().ToString();
    EXPECT_EQ(ack->peer, "child");
    EXPECT_EQ(Str(ack->payload), "ack " + std::to_string(step));
  }
  EXPECT_TRUE(a.Release(*h).ok());
  auto status = WaitPidFor(pid, kStepTimeoutS);
  ::close(fd);
  ASSERT_TRUE(status.has_value()) << "child did not exit in time";
  ASSERT_TRUE(WIFEXITED(*status)) << "child died with signal " << WTERMSIG(*status);
  EXPECT_EQ(WEXITSTATUS(*status), 0) << "child reported failure (2 = byte mismatch)";
}

// Waits until `pid` is stopped (SIGSTOP); false on timeout or exit.
bool WaitStopped(pid_t pid, double timeout_s) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  while (std::chrono::steady_clock::now() < deadline) {
    int st = 0;
    const pid_t r = ::waitpid(pid, &st, WUNTRACED | WNOHANG);
    if (r == pid) return WIFSTOPPED(st);
    if (r < 0) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return false;
}

// A target child whose memory is caller-registered (UCX 1.13.1 emulates RMA
// into it over active messages, served by the target's lane threads) and that
// stops itself (SIGSTOP) after the handshake: while it is stopped nothing
// posted to it can complete, so "in flight" is a fact, not a race. After
// SIGCONT it waits for one notification, verifies the bytes and acknowledges
// with the notification's payload.
// `wait_for_go`: stop only after the parent sends a frame (once it has wired up
// its endpoints: see InitiatorWaitReturnsWhenTargetIsKilled).
int StoppingTargetChild(int fd, PeerFailureDetection detection, const std::string& name, bool wait_for_go = false) {
  auto agent = Agent::Create({.name = name, .ucx = {.failure_detection = detection}});
  if (!agent.ok()) return 10;
  Agent& a = **agent;
  std::vector<std::byte> owned;
  auto region = MakeRegion(a, Mem::kRegistered, owned);
  if (!region.ok()) return 11;
  std::fill(a.RegionBytes(*region).begin(), a.RegionBytes(*region).end(), std::byte{0xEE});
  if (Handshake(a, fd) != "parent") return 12;
  if (wait_for_go && !RecvFrame(fd, kStepTimeoutS)) return 13;
  ::raise(SIGSTOP);
  auto n = a.WaitNotification(kStepTimeoutS);
  if (!n.ok()) {
    std::fprintf(stderr, "%s: WaitNotification: %s\n", name.c_str(), n.status().ToString().c_str());
    return 14;
  }
  // The parent's source region is its first: id 1.
  if (!VerifyCovering(a.RegionBytes(*region), CoveringDescs(1, *region), 77)) return 2;
  if (!a.SendMessage("parent", n->payload).ok()) return 16;
  (void)a.WaitNotification(0.2);
  return 0;
}

// These tests need WRITEs the stopped target must serve (UCX's emulated puts into
// caller-registered memory): under WritePath::kAuto a same-host target's unmapped memory is
// written by kernel copy, which completes without the target's help, so same-host (kAuto
// detection) parents write with kPut; TCP-only (kUcxPeer) parents keep kAuto (active messages).
WritePath UcxServedWrites(PeerFailureDetection det) {
  return det == PeerFailureDetection::kAuto ? WritePath::kPut : WritePath::kAuto;
}

class StoppedTarget : public ::testing::TestWithParam<PeerFailureDetection> {};

// In-flight refusals, Cancel, and a per-post notification payload, against a
// target that cannot make progress until the test lets it.
TEST_P(StoppedTarget, InFlightRefusalsCancelAndRepost) {
  const PeerFailureDetection det = GetParam();
  int fds[2];
  const pid_t pid = ForkChild(fds, [det](int fd) { return StoppingTargetChild(fd, det, "child"); });
  ASSERT_GT(pid, 0);
  const int fd = fds[0];
  auto agent = Agent::Create({.name = "parent", .ucx = {.failure_detection = det}, .write_path = UcxServedWrites(det)});
  ASSERT_TRUE(agent.ok());
  Agent& a = **agent;
  std::vector<std::byte> owned;
  auto region = MakeRegion(a, Mem::kRegistered, owned);
  ASSERT_TRUE(region.ok());
  FillPattern(a.RegionBytes(*region), 77);
  ASSERT_EQ(Handshake(a, fd), "child");
  ASSERT_TRUE(WaitStopped(pid, 30)) << "child did not stop";
  auto h = a.PrepareTransfer(TransferOp::kWrite, "child", CoveringDescs(*region, 1), Bytes("v1"));
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  ASSERT_TRUE(a.Post(*h).ok());
  Status s = a.Wait(*h, 0.3);
  if (s.ok()) {
    ::kill(pid, SIGKILL);
    (void)WaitPidFor(pid, 10);
    ::close(fd);
    GTEST_SKIP() << "this UCX build completed a write into a stopped process's registered memory";
  }
  EXPECT_EQ(s.code(), ErrorCode::kTimedOut) << s.ToString();
  auto t = a.Test(*h);
  ASSERT_TRUE(t.ok());
  EXPECT_FALSE(*t);
  EXPECT_EQ(a.Post(*h).code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(a.Release(*h).code(), ErrorCode::kInvalidArgument);
  // Cancel cannot finish while issued operations wait for the stopped target.
  Status c = a.Cancel(*h, 0.2);
  EXPECT_TRUE(c.ok() || c.code() == ErrorCode::kTimedOut) << c.ToString();
  ::kill(pid, SIGCONT);
  c = a.Cancel(*h, kStepTimeoutS);
  ASSERT_TRUE(c.ok()) << c.ToString();
  EXPECT_EQ(a.Wait(*h, 1).code(), ErrorCode::kInvalidArgument);  // "cancelled"
  // Post again with this post's own payload: the child must see "v2", never "v1".
  ASSERT_TRUE(a.Post(*h, Bytes("v2")).ok());
  s = a.Wait(*h, kStepTimeoutS);
  ASSERT_TRUE(s.ok()) << s.ToString();
  auto ack = a.WaitNotification(kStepTimeoutS);
  ASSERT_TRUE(ack.ok()) << ack.status().ToString();
  EXPECT_EQ(Str(ack->payload), "v2");
  EXPECT_TRUE(a.Release(*h).ok());
  auto status = WaitPidFor(pid, kStepTimeoutS);
  ::close(fd);
  ASSERT_TRUE(status.has_value());
  ASSERT_TRUE(WIFEXITED(*status));
  EXPECT_EQ(WEXITSTATUS(*status), 0) << "child reported failure (2 = byte mismatch)";
}

// The target is SIGKILLed while the initiator waits on a WRITE that cannot
// complete without it (it is stopped). Wait must return kPeerDisconnected
// (liveness check or UCX error callback), never hang; the handle can then be
// released.
TEST_P(StoppedTarget, InitiatorWaitReturnsWhenTargetIsKilled) {
  const PeerFailureDetection det = GetParam();
  int fds[2];
  const pid_t pid = ForkChild(fds, [det](int fd) { return StoppingTargetChild(fd, det, "child", /*wait_for_go=*/true); });
  ASSERT_GT(pid, 0);
  const int fd = fds[0];
  auto agent = Agent::Create({.name = "parent", .ucx = {.failure_detection = det}, .write_path = UcxServedWrites(det)});
  ASSERT_TRUE(agent.ok());
  Agent& a = **agent;
  std::vector<std::byte> owned;
  auto region = MakeRegion(a, Mem::kRegistered, owned);
  ASSERT_TRUE(region.ok());
  ASSERT_EQ(Handshake(a, fd), "child");
  // Wire up before the target stops: UCX 1.13.1 aborts (ucp_request.c:684, inside its own
  // error path, uct_tcp_ep_set_failed) when a TCP endpoint whose wire-up request is still
  // queued fails, which is what killing a target stopped before it answered did in 2 CI runs
  // (docs/transport.md, "Tried first"). What this test checks, a Wait on a transfer in flight
  // to a killed target, is unchanged.
  ASSERT_TRUE(a.WireUp("child", 30).ok());
  ASSERT_TRUE(SendFrame(fd, Bytes("go")));
  ASSERT_TRUE(WaitStopped(pid, 30));
  auto h = a.PrepareTransfer(TransferOp::kWrite, "child", {{*region, 0, 1, 0, kSize}}, Bytes("never"));
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  ASSERT_TRUE(a.Post(*h).ok());
  std::thread killer([pid] {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    ::kill(pid, SIGKILL);
  });
  Status s = a.Wait(*h, 20);
  killer.join();
  // The death is detected (message channel hang-up, /proc liveness or UCX's endpoint error),
  // not waited out: kTimedOut here means detection is broken.
  EXPECT_EQ(s.code(), ErrorCode::kPeerDisconnected) << s.ToString();
  std::printf("[ info     ] Wait after SIGKILL of the target: %s\n", s.ToString().c_str());
  EXPECT_TRUE(a.Release(*h).ok());
  EXPECT_EQ(a.FailedPeers(), std::vector<std::string>{"child"});
  EXPECT_EQ(a.Post(*h).code(), ErrorCode::kNotFound);
  EXPECT_TRUE(a.InvalidatePeer("child").ok());
  auto status = WaitPidFor(pid, 10);
  ::close(fd);
  ASSERT_TRUE(status.has_value());
  EXPECT_TRUE(WIFSIGNALED(*status));
}

// Two targets; one is killed mid-transfer. Its transfer fails with
// kPeerDisconnected, the other peer's transfer completes byte-exact, and the
// same agent then imports the killed peer's replacement (same name) and
// transfers to it.
TEST_P(StoppedTarget, OtherPeerUnaffectedAndReplacementReconnects) {
  const PeerFailureDetection det = GetParam();
  int vfds[2], hfds[2], rfds[2];
  // Every child is forked before this process starts agent threads.
  const pid_t victim =
      ForkChild(vfds, [det](int fd) { return StoppingTargetChild(fd, det, "victim", /*wait_for_go=*/true); });
  ASSERT_GT(victim, 0);
  const pid_t healthy = ForkChild(hfds, [det](int fd) {
    auto agent = Agent::Create({.name = "healthy", .ucx = {.failure_detection = det}});
    if (!agent.ok()) return 10;
    Agent& a = **agent;
    auto region = a.AllocateArena(kSize);
    if (!region.ok() || Handshake(a, fd) != "parent") return 11;
    auto n = a.WaitNotification(kStepTimeoutS);
    if (!n.ok() || n->peer != "parent") return 14;
    if (!VerifyCovering(a.RegionBytes(*region), CoveringDescs(1, *region), 77)) return 2;
    if (!a.SendMessage("parent", Bytes("healthy ok")).ok()) return 16;
    (void)a.WaitNotification(0.2);
    return 0;
  });
  ASSERT_GT(healthy, 0);
  const pid_t replacement = ForkChild(rfds, [det](int fd) {
    if (!RecvFrame(fd, kStepTimeoutS * 2)) return 9;  // "go"
    auto agent = Agent::Create({.name = "victim", .ucx = {.failure_detection = det}});
    if (!agent.ok()) return 10;
    Agent& a = **agent;
    auto region = a.AllocateArena(kSize);
    if (!region.ok() || Handshake(a, fd) != "parent") return 11;
    auto n = a.WaitNotification(kStepTimeoutS);
    if (!n.ok()) return 14;
    if (!VerifyCovering(a.RegionBytes(*region), CoveringDescs(1, *region), 77)) return 2;
    if (!a.SendMessage("parent", Bytes("replacement ok")).ok()) return 16;
    (void)a.WaitNotification(0.2);
    return 0;
  });
  ASSERT_GT(replacement, 0);

  auto agent = Agent::Create({.name = "parent", .ucx = {.failure_detection = det}, .write_path = UcxServedWrites(det)});
  ASSERT_TRUE(agent.ok());
  Agent& a = **agent;
  auto region = a.AllocateArena(kSize);
  ASSERT_TRUE(region.ok());
  FillPattern(a.RegionBytes(*region), 77);
  ASSERT_EQ(Handshake(a, vfds[0]), "victim");
  // Wire up before the victim stops, as in InitiatorWaitReturnsWhenTargetIsKilled: on UCX 1.13.1
  // a TCP endpoint (ucxpeer) failing with a wire-up message still queued aborts the process
  // (openucx/ucx#8175; hit once here in session 17's asan stage: "got REP message").
  ASSERT_TRUE(a.WireUp("victim", 30).ok());
  ASSERT_TRUE(SendFrame(vfds[0], Bytes("go")));
  ASSERT_EQ(Handshake(a, hfds[0]), "healthy");
  ASSERT_TRUE(WaitStopped(victim, 30));
  auto hv = a.PrepareTransfer(TransferOp::kWrite, "victim", {{*region, 0, 1, 0, kSize}}, Bytes("v"));
  auto hh = a.PrepareTransfer(TransferOp::kWrite, "healthy", CoveringDescs(*region, 1), Bytes("h"));
  ASSERT_TRUE(hv.ok() && hh.ok());
  ASSERT_TRUE(a.Post(*hv).ok());
  ASSERT_TRUE(a.Post(*hh).ok());
  ::kill(victim, SIGKILL);
  Status sh = a.Wait(*hh, kStepTimeoutS);
  EXPECT_TRUE(sh.ok()) << sh.ToString();
  Status sv = a.Wait(*hv, 20);
  EXPECT_EQ(sv.code(), ErrorCode::kPeerDisconnected) << sv.ToString();
  std::printf("[ info     ] killed peer: %s; other peer: %s\n", sv.ToString().c_str(), sh.ToString().c_str());
  bool healthy_acked = false;
  for (int i = 0; i < 3 && !healthy_acked; ++i) {
    auto n = a.WaitNotification(kStepTimeoutS);
    if (n.ok()) {
      EXPECT_EQ(n->peer, "healthy");
      healthy_acked = n->peer == "healthy";
    } else {
      EXPECT_EQ(n.status().code(), ErrorCode::kPeerDisconnected) << n.status().ToString();
    }
  }
  EXPECT_TRUE(healthy_acked);
  EXPECT_TRUE(a.Release(*hv).ok());
  EXPECT_TRUE(a.Release(*hh).ok());

  // The replacement registers under the dead peer's name.
  ASSERT_TRUE(SendFrame(rfds[0], Bytes("go")));
  ASSERT_EQ(Handshake(a, rfds[0]), "victim");
  // Re-importing the name clears the dead incarnation's failure. ("healthy" may be listed: it
  // exits 0.2 s after its ack, and a slow replacement start, e.g. under TSan, lets the parent
  // see that first: seen once in a cold TSan stage.)
  const std::vector<std::string> failed = a.FailedPeers();
  EXPECT_EQ(std::count(failed.begin(), failed.end(), "victim"), 0) << "the replacement is listed as failed";
  auto hr = a.PrepareTransfer(TransferOp::kWrite, "victim", CoveringDescs(*region, 1), Bytes("r"));
  ASSERT_TRUE(hr.ok()) << hr.status().ToString();
  ASSERT_TRUE(a.Post(*hr).ok());
  Status sr = a.Wait(*hr, kStepTimeoutS);
  ASSERT_TRUE(sr.ok()) << sr.ToString();
  // Skip the failure reports of peers that exited meanwhile (reported once each).
  auto ack = a.WaitNotification(kStepTimeoutS);
  for (int i = 0; i < 3 && !ack.ok() && ack.status().code() == ErrorCode::kPeerDisconnected; ++i)
    ack = a.WaitNotification(kStepTimeoutS);
  ASSERT_TRUE(ack.ok()) << ack.status().ToString();
  EXPECT_EQ(Str(ack->payload), "replacement ok");
  EXPECT_TRUE(a.Release(*hr).ok());

  for (auto [pid, fd, name] : {std::tuple{victim, vfds[0], "victim"}, std::tuple{healthy, hfds[0], "healthy"},
                               std::tuple{replacement, rfds[0], "replacement"}}) {
    auto st = WaitPidFor(pid, kStepTimeoutS);
    ::close(fd);
    ASSERT_TRUE(st.has_value()) << name;
    if (pid != victim) {
      ASSERT_TRUE(WIFEXITED(*st)) << name;
      EXPECT_EQ(WEXITSTATUS(*st), 0) << name << " reported failure (2 = byte mismatch)";
    }
  }
}

// A peer that stops (SIGSTOP) before it answers the wire-up (over TCP, kUcxPeer: the handshake
// needs its worker): WireUp times out and forgets the peer, so no flush of it stays in flight
// and the same name can be imported afresh at once (a rank's next process). (Not wired up
// again to the same process once it runs: UCX 1.13.1 over TCP then fails the new endpoint,
// "Endpoint timeout", or asserts on the stale wire-up reply, ucp_request.c:684.)
TEST(WireUpToAStoppedPeer, TimesOutAndForgetsThePeerSoItCanBeImportedAfresh) {
  int fds[2];
  const pid_t pid = ForkChild(fds, [](int fd) {
    auto agent = Agent::Create({.name = "stops", .ucx = {.failure_detection = PeerFailureDetection::kUcxPeer}});
    if (!agent.ok()) return 10;
    if (Handshake(**agent, fd) != "parent") return 12;
    ::raise(SIGSTOP);
    return 0;
  });
  ASSERT_GT(pid, 0);
  const int fd = fds[0];
  auto agent = Agent::Create({.name = "parent", .ucx = {.failure_detection = PeerFailureDetection::kUcxPeer}});
  ASSERT_TRUE(agent.ok()) << agent.status().ToString();
  Agent& a = **agent;
  auto mine = a.ExportMetadata();
  ASSERT_TRUE(mine.ok() && SendFrame(fd, *mine));
  const auto blob = RecvFrame(fd, kStepTimeoutS);
  ASSERT_TRUE(blob.has_value());
  auto name = a.ImportMetadata(*blob);
  ASSERT_TRUE(name.ok()) << name.status().ToString();
  ASSERT_TRUE(WaitStopped(pid, 30));
  const Status stalled = a.WireUp(*name, 1.0);
  EXPECT_EQ(stalled.code(), ErrorCode::kTimedOut) << stalled.ToString();
  EXPECT_NE(stalled.message().find("invalidated"), std::string::npos) << stalled.ToString();
  EXPECT_EQ(a.DescribePeer(*name).status().code(), ErrorCode::kNotFound) << "the stalled peer was kept";
  auto again = a.ImportMetadata(*blob);
  EXPECT_TRUE(again.ok()) << again.status().ToString();
  ASSERT_EQ(::kill(pid, SIGKILL), 0);
  const auto status = WaitPidFor(pid, 30);
  ASSERT_TRUE(status.has_value());
  EXPECT_TRUE(WIFSIGNALED(*status));
  ::close(fd);
}

INSTANTIATE_TEST_SUITE_P(Transport, StoppedTarget,
                         ::testing::Values(PeerFailureDetection::kAuto, PeerFailureDetection::kUcxPeer),
                         [](const auto& i) { return i.param == PeerFailureDetection::kAuto ? "auto" : "ucxpeer"; });

// A peer destroys its agent but its process lives on (a serving process that stops
// being a source, an engine that closes its subscriber): the /proc liveness check
// still sees the process, but the peer's message channel closed, so the agent
// reports the peer failed at once instead of letting waits run out their time.
TEST(PeerAgentDestroyed, InALiveProcessIsReportedAsAPeerFailure) {
  int fds[2];
  const pid_t pid = ForkChild(fds, [](int fd) {
    auto agent = Agent::Create({.name = "child"});
    if (!agent.ok()) return 10;
    if (Handshake(**agent, fd) != "parent") return 11;
    // Not before the parent imported this agent's blob: its import maps this agent's
    // shared memory, which the reset removes (the import then failed, 1 run in ~70).
    auto imported = RecvFrame(fd, kStepTimeoutS);
    if (!imported || Str(*imported) != "imported") return 13;
    agent->reset();  // the agent goes, the process stays
    if (!SendFrame(fd, Bytes("destroyed"))) return 12;
    for (;;) ::pause();
  });
  ASSERT_GT(pid, 0);
  const int fd = fds[0];
  auto agent = Agent::Create({.name = "parent"});
  ASSERT_TRUE(agent.ok());
  Agent& a = **agent;
  ASSERT_EQ(Handshake(a, fd), "child");
  ASSERT_EQ(a.DescribePeer("child").value().message_transports, std::vector<std::string>{"unix/seqpacket"});
  ASSERT_TRUE(SendFrame(fd, Bytes("imported")));
  auto frame = RecvFrame(fd, kStepTimeoutS);
  ASSERT_TRUE(frame.has_value());
  ASSERT_EQ(Str(*frame), "destroyed");
  auto n = a.WaitNotification(10);
  ASSERT_FALSE(n.ok()) << "a notification from an agent that was destroyed";
  EXPECT_EQ(n.status().code(), ErrorCode::kPeerDisconnected) << n.status().ToString();
  EXPECT_NE(n.status().message().find("peer child"), std::string::npos) << n.status().ToString();
  EXPECT_NE(n.status().message().find("message channel"), std::string::npos) << n.status().ToString();
  const Status sent = a.SendMessage("child", Bytes("anyone?"));
  EXPECT_EQ(sent.code(), ErrorCode::kPeerDisconnected) << sent.ToString();
  ::kill(pid, SIGKILL);
  auto status = WaitPidFor(pid, 10);
  ::close(fd);
  ASSERT_TRUE(status.has_value());
}

// The initiator is SIGKILLed while the target waits for its notification:
// WaitNotification must return kPeerDisconnected (nothing is ever sent, so kTimedOut
// would mean the death went undetected).
TEST_P(MultiProcess, TargetWaitNotificationReturnsWhenInitiatorIsKilled) {
  const Params p = GetParam();
  int fds[2];
  const pid_t pid = ForkChild(fds, [p](int fd) {
    auto agent = Agent::Create({.name = "child", .ucx = {.failure_detection = p.detection}});
    if (!agent.ok()) return 10;
    if (Handshake(**agent, fd) != "parent") return 11;
    for (;;) ::pause();
  });
  ASSERT_GT(pid, 0);
  const int fd = fds[0];
  auto agent = Agent::Create({.name = "parent", .ucx = {.failure_detection = p.detection}});
  ASSERT_TRUE(agent.ok());
  Agent& a = **agent;
  std::vector<std::byte> owned;
  ASSERT_TRUE(MakeRegion(a, p.mem, owned).ok());
  ASSERT_EQ(Handshake(a, fd), "child");
  std::thread killer([pid] {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    ::kill(pid, SIGKILL);
  });
  auto n = a.WaitNotification(20);
  killer.join();
  ASSERT_FALSE(n.ok());
  EXPECT_EQ(n.status().code(), ErrorCode::kPeerDisconnected) << n.status().ToString();
  std::printf("[ info     ] WaitNotification after SIGKILL of the initiator: %s\n", n.status().ToString().c_str());
  auto status = WaitPidFor(pid, 10);
  ::close(fd);
  ASSERT_TRUE(status.has_value());
}

INSTANTIATE_TEST_SUITE_P(Transport, MultiProcess,
                         ::testing::Values(Params{Mem::kArena, PeerFailureDetection::kAuto},
                                           Params{Mem::kRegistered, PeerFailureDetection::kAuto},
                                           Params{Mem::kRegistered, PeerFailureDetection::kUcxPeer}),
                         [](const auto& i) { return ParamName(i.param); });

}  // namespace
}  // namespace shardwire
