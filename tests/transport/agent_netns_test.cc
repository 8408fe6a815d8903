// Across hosts, simulated: two processes in two network namespaces joined by a
// veth pair, UCX limited to TCP on the veth device. The initiator WRITEs 64 MiB
// in several descriptors (automatic write path: active messages, because the
// endpoint has only TCP lanes) and READs it back; the target verifies every
// byte. Needs root / CAP_NET_ADMIN and iproute2's `ip`; otherwise GTEST_SKIP
// with the reason. Addresses are 10.231.<n>.1/2 inside namespaces this test
// creates and deletes itself.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "die_with_test_process.h"
#include "shardwire/agent.h"
#include "transport/transport_test_util.h"

namespace shardwire {
namespace {

using testing::FillPattern;
using testing::FirstMismatch;
using testing::RecvFrame;
using testing::SendFrame;
using testing::WaitPidFor;

constexpr std::size_t kSize = 64u << 20;
constexpr double kTimeoutS = 60;

int Shell(const std::string& cmd) { return std::system((cmd + " >/dev/null 2>&1").c_str()); }

// Creates ns_a and ns_b joined by veth_a <-> veth_b; deletes them on destruction.
class VethPair {
 public:
  VethPair() {
    const std::string id = std::to_string(::getpid() % 100000);
    ns_a = "swnsA" + id;
    ns_b = "swnsB" + id;
    veth_a = "swva" + id;
    veth_b = "swvb" + id;
    const std::string net = "10.231." + std::to_string(::getpid() % 250 + 1) + ".";
    ip_a = net + "1";
    ip_b = net + "2";
    if (Shell("ip netns add " + ns_a) != 0) {
      error = "`ip netns add` failed (needs root / CAP_NET_ADMIN and iproute2)";
      return;
    }
    created_a = true;
    if (Shell("ip netns add " + ns_b) != 0) {
      error = "second `ip netns add` failed";
      return;
    }
    created_b = true;
    const std::string steps[] = {
        "ip link add " + veth_a + " type veth peer name " + veth_b,
        "ip link set " + veth_a + " netns " + ns_a,
        "ip link set " + veth_b + " netns " + ns_b,
        "ip -n " + ns_a + " addr add " + ip_a + "/24 dev " + veth_a,
        "ip -n " + ns_b + " addr add " + ip_b + "/24 dev " + veth_b,
        "ip -n " + ns_a + " link set " + veth_a + " up",
        "ip -n " + ns_b + " link set " + veth_b + " up",
        "ip -n " + ns_a + " link set lo up",
        "ip -n " + ns_b + " link set lo up",
    };
    for (const auto& s : steps) {
      if (Shell(s) != 0) {
        error = "`" + s + "` failed";
        return;
      }
    }
  }
  ~VethPair() {
    if (created_a) Shell("ip netns del " + ns_a);  // deleting a namespace deletes its veth end
    if (created_b) Shell("ip netns del " + ns_b);
  }
  std::string ns_a, ns_b, veth_a, veth_b, ip_a, ip_b, error;

 private:
  bool created_a = false, created_b = false;
};

// In a forked child: enter `ns`, restrict UCX to TCP on `dev`. Like `ip netns
// exec`, also remounts /sys in a private mount namespace, because UCX finds
// network devices under /sys/class/net, which otherwise shows the old
// namespace's devices.
bool EnterNamespace(const std::string& ns, const std::string& dev) {
  const int fd = ::open(("/run/netns/" + ns).c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  bool ok = ::setns(fd, CLONE_NEWNET) == 0;
  ::close(fd);
  ok = ok && ::unshare(CLONE_NEWNS) == 0;
  ok = ok && ::mount("", "/", nullptr, MS_SLAVE | MS_REC, nullptr) == 0;
  ok = ok && ::umount2("/sys", MNT_DETACH) == 0;
  ok = ok && ::mount(ns.c_str(), "/sys", "sysfs", 0, nullptr) == 0;
  ::setenv("UCX_TLS", "tcp", 1);
  ::setenv("UCX_NET_DEVICES", dev.c_str(), 1);
  return ok;
}

std::string Handshake(Agent& a, int fd) {
  auto mine = a.ExportMetadata();
  if (!mine.ok() || !SendFrame(fd, *mine)) return "";
  auto theirs = RecvFrame(fd, kTimeoutS);
  if (!theirs) return "";
  auto name = a.ImportMetadata(*theirs);
  return name.ok() ? *name : "";
}

std::vector<TransferDescriptor> Descs(RegionId local, RegionId remote) {
  // Uneven pieces covering the region; 3 MiB + 1 byte pieces cross slices.
  std::vector<TransferDescriptor> d;
  std::uint64_t at = 0;
  const std::uint64_t piece = (3u << 20) + 1;
  while (at < kSize) {
    const std::uint64_t n = std::min<std::uint64_t>(piece, kSize - at);
    d.push_back({local, at, remote, at, n});
    at += n;
  }
  return d;
}

int TargetChild(int fd, const VethPair& v) {
  if (!EnterNamespace(v.ns_b, v.veth_b)) return 20;
  auto agent = Agent::Create({.name = "target"});
  if (!agent.ok()) return 21;
  Agent& a = **agent;
  auto region = a.AllocateArena(kSize);
  if (!region.ok()) return 22;
  std::fill(a.RegionBytes(*region).begin(), a.RegionBytes(*region).end(), std::byte{0xEE});
  FillPattern(a.RegionBytes(*region).subspan(kSize / 2), 9, kSize / 2);  // second half: the READ source
  if (Handshake(a, fd) != "initiator") return 23;
  auto n = a.WaitNotification(kTimeoutS);
  if (!n.ok()) {
    std::fprintf(stderr, "target: %s\n", n.status().ToString().c_str());
    return 24;
  }
  if (auto mm = FirstMismatch(a.RegionBytes(*region).first(kSize / 2), 8)) {
    std::fprintf(stderr, "target: byte %zu differs\n", *mm);
    return 2;
  }
  if (!a.SendMessage("initiator", n->payload).ok()) return 25;
  (void)a.WaitNotification(5);  // until the initiator says bye (or 5 s)
  return 0;
}

int InitiatorChild(int fd, const VethPair& v) {
  if (!EnterNamespace(v.ns_a, v.veth_a)) return 30;
  auto agent = Agent::Create({.name = "initiator"});
  if (!agent.ok()) return 31;
  Agent& a = **agent;
  auto region = a.AllocateArena(kSize);
  if (!region.ok()) return 32;
  FillPattern(a.RegionBytes(*region), 8);
  if (Handshake(a, fd) != "target") return 33;
  auto info = a.DescribePeer("target");
  if (!info.ok()) return 34;
  std::string tls;
  for (const auto& t : info->transports) tls += t + " ";
  std::printf("[ info     ] across namespaces: transports [ %s] write path %s\n", tls.c_str(),
              std::string(WritePathName(info->write_path)).c_str());
  std::fflush(stdout);
  if (info->write_path != WritePath::kActiveMessage) return 35;
  std::vector<TransferDescriptor> first_half;
  for (const auto& d : Descs(*region, 1))
    if (d.remote_offset < kSize / 2)
      first_half.push_back({d.local_region, d.local_offset, d.remote_region, d.remote_offset,
                            std::min<std::uint64_t>(d.length, kSize / 2 - d.remote_offset)});
  auto h = a.PrepareTransfer(TransferOp::kWrite, "target", first_half, std::vector<std::byte>{std::byte{'v'}});
  if (!h.ok()) return 36;
  const auto t0 = std::chrono::steady_clock::now();
  if (!a.Post(*h).ok()) return 37;
  Status s = a.Wait(*h, kTimeoutS);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!s.ok()) {
    std::fprintf(stderr, "initiator: %s\n", s.ToString().c_str());
    return 38;
  }
  std::printf("[ info     ] 32 MiB WRITE across the veth pair: %.2f GB/s\n", (kSize / 2) / secs / 1e9);
  std::fflush(stdout);
  auto ack = a.WaitNotification(kTimeoutS);
  if (!ack.ok() || ack->payload.size() != 1) return 39;
  // READ the target's second half (ucp_get over TCP) into our second half.
  std::fill(a.RegionBytes(*region).begin() + kSize / 2, a.RegionBytes(*region).end(), std::byte{0});
  auto r = a.PrepareTransfer(TransferOp::kRead, "target", {{*region, kSize / 2, 1, kSize / 2, kSize / 2}},
                             std::nullopt);
  if (!r.ok() || !a.Post(*r).ok()) return 40;
  s = a.Wait(*r, kTimeoutS);
  if (!s.ok()) {
    std::fprintf(stderr, "initiator read: %s\n", s.ToString().c_str());
    return 41;
  }
  if (FirstMismatch(a.RegionBytes(*region).subspan(kSize / 2), 9, kSize / 2)) return 3;
  (void)a.SendMessage("target", std::vector<std::byte>{std::byte{'b'}});
  (void)a.WaitNotification(0.2);
  return 0;
}

TEST(NetNamespaces, WriteAndReadAcrossVethOverTcpAreByteExact) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root (CAP_NET_ADMIN) to create network namespaces";
  if (Shell("ip -V") != 0) GTEST_SKIP() << "iproute2's `ip` is not installed";
  VethPair v;
  if (!v.error.empty()) GTEST_SKIP() << "cannot build the veth pair here: " << v.error;
  int fds[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
  const pid_t test_pid = ::getpid();
  const pid_t target = ::fork();
  if (target == 0) {
    shardwire::testing_util::DieWithTestProcess(test_pid);
    ::close(fds[0]);
    ::_exit(TargetChild(fds[1], v));
  }
  const pid_t initiator = ::fork();
  if (initiator == 0) {
    shardwire::testing_util::DieWithTestProcess(test_pid);
    ::close(fds[1]);
    ::_exit(InitiatorChild(fds[0], v));
  }
  ::close(fds[0]);
  ::close(fds[1]);
  auto si = WaitPidFor(initiator, 3 * kTimeoutS);
  auto st = WaitPidFor(target, kTimeoutS);
  ASSERT_TRUE(si.has_value() && st.has_value()) << "a child did not exit in time";
  ASSERT_TRUE(WIFEXITED(*si) && WIFEXITED(*st));
  EXPECT_EQ(WEXITSTATUS(*si), 0) << "initiator failed (3 = READ mismatch, 35 = write path not active messages)";
  EXPECT_EQ(WEXITSTATUS(*st), 0) << "target failed (2 = WRITE mismatch)";
}

}  // namespace
}  // namespace shardwire
