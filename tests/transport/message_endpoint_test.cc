// Messages (notifications, Agent::SendMessage) survive same-host peers that die
// in the middle of sending them: real processes, real UCX, real sockets.
//
// Why messages need their own path (UcxOptions::local_message_sockets,
// docs/reliability.md "A killed sender deafens a same-host receiver"): UCX's
// shared-memory transports deliver active messages through one in-order FIFO
// per receiving worker, and a sender SIGKILLed between reserving an element and
// marking it written leaves the receiver deaf to every sender. With
// local_message_sockets off (SHARDWIRE_TEST_LOCAL_MESSAGE_SOCKETS=0) the test
// below failed within 1-15 rounds on the development machine.
//
// Connection set-up is checked too: an endpoint between two same-host workers
// (UCP_ERR_HANDLING_MODE_NONE, docs/transport.md "Peer failure") connects to
// the peer's FIFO without any wire-up message (UCX debug log: "wireup_msg_lane
// <none>"), so a peer killed while connecting cannot wedge it either; the
// second test keeps it so (session 17: 3 x 300 rounds passed; 3 x 1000 rounds
// of a variant without the per-connection message passed with
// local_message_sockets off, where a wedged FIFO would have shown).
//
// Children report through their exit code and never touch gtest. Every wait has
// a timeout; children are reaped with WaitPidFor.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "die_with_test_process.h"
#include "shardwire/agent.h"
#include "transport/transport_test_util.h"

namespace shardwire {
namespace {

using testing::Bytes;
using testing::RecvFrame;
using testing::SendFrame;
using testing::WaitPidFor;

constexpr double kStepTimeoutS = 30;

bool LocalMessageSockets() {
  const char* env = std::getenv("SHARDWIRE_TEST_LOCAL_MESSAGE_SOCKETS");
  return env != nullptr ? std::string(env) != "0" : UcxOptions{}.local_message_sockets;
}

Result<std::unique_ptr<Agent>> MakeAgent(const std::string& name) {
  AgentOptions o;
  o.name = name;
  o.lanes = 1;
  o.ucx.local_message_sockets = LocalMessageSockets();
  return Agent::Create(std::move(o));
}

// A child forked before the parent starts any thread: waits for a blob on its
// socket (EOF: exits 0 unused), creates an agent named `name`, answers with its
// own blob, then runs `body`. Destroying it SIGKILLs and reaps the child (an
// assertion that ends a test early leaves no process behind).
struct Child {
  pid_t pid = -1;
  int fd = -1;
  Child() = default;
  Child(Child&& o) noexcept : pid(std::exchange(o.pid, -1)), fd(std::exchange(o.fd, -1)) {}
  Child& operator=(Child&&) = delete;
  ~Child() { Kill(); }
  void Kill() {
    if (fd >= 0) ::close(fd);
    fd = -1;
    if (pid > 0) {
      ::kill(pid, SIGKILL);
      (void)WaitPidFor(pid, 10);
    }
    pid = -1;
  }
};

// `body` gets the agent, the imported peer's name and the peer's blob.
using ChildBody = std::function<int(Agent&, const std::string& peer, const std::vector<std::byte>& peer_blob)>;

Child ForkChild(const std::string& name, const ChildBody& body) {
  int fds[2];
  Child c;
  if (::socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0) return c;
  const pid_t test_pid = ::getpid();
  c.pid = ::fork();
  if (c.pid == 0) {
    shardwire::testing_util::DieWithTestProcess(test_pid);
    ::close(fds[0]);
    auto theirs = RecvFrame(fds[1], 600);
    if (!theirs) ::_exit(0);
    auto agent = MakeAgent(name);
    if (!agent.ok()) ::_exit(10);
    auto mine = (*agent)->ExportMetadata();
    if (!mine.ok() || !SendFrame(fds[1], *mine)) ::_exit(11);
    auto imported = (*agent)->ImportMetadata(*theirs);
    if (!imported.ok()) {
      std::fprintf(stderr, "%s: ImportMetadata: %s\n", name.c_str(), imported.status().ToString().c_str());
      ::_exit(12);
    }
    const std::string peer = *imported;
    ::_exit(body(**agent, peer, *theirs));
  }
  ::close(fds[1]);
  c.fd = fds[0];
  return c;
}

// Sends 8000-byte messages (the largest that fit one shared-memory FIFO element,
// so most of a send's time lies inside the window) as fast as it can, until killed.
int SendForever(Agent& a, const std::string& peer, const std::vector<std::byte>&) {
  const std::vector<std::byte> payload(8000, std::byte{0x5A});
  for (;;) {
    if (!a.SendMessage(peer, payload).ok()) std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
}

// Connects to the peer (WireUp: a flush of the new endpoint on every lane), says
// hello, waits for the peer's go, then connects
// again and again until killed (InvalidatePeer, a fresh ImportMetadata, WireUp
// and one small message, which opens a new message connection), so that most
// of its time lies in connection set-up.
int ConnectForever(Agent& a, const std::string& peer, const std::vector<std::byte>& peer_blob) {
  const Status up = a.WireUp(peer, kStepTimeoutS);
  if (!up.ok()) {
    std::fprintf(stderr, "%s: WireUp: %s\n", a.name().c_str(), up.ToString().c_str());
    return 20;
  }
  const std::vector<std::byte> hello(16, std::byte{0x11});
  if (!a.SendMessage(peer, hello).ok()) return 21;
  if (!a.WaitNotification(kStepTimeoutS).ok()) return 22;
  for (;;) {
    (void)a.InvalidatePeer(peer);
    if (!a.ImportMetadata(peer_blob).ok()) std::this_thread::sleep_for(std::chrono::microseconds(100));
    (void)a.WireUp(peer, 1);
    (void)a.SendMessage(peer, hello);
  }
}

// Round r: child r (running `body`) connects to one receiver agent and must be
// heard (a notification from it arrives); with `receiver_wires_up` the
// receiver's own WireUp to it must succeed first and the receiver then sends
// the child a go. Then the child is SIGKILLed at a random moment 0.5-20 ms
// later, in the middle of `body`.
void KilledPeersNeverDeafenTheReceiver(int rounds, const ChildBody& body, bool receiver_wires_up) {
  std::vector<Child> senders;
  for (int r = 0; r < rounds; ++r) senders.push_back(ForkChild("sender-" + std::to_string(r), body));
  for (const Child& c : senders) ASSERT_GT(c.pid, 0) << "fork";

  auto receiver = MakeAgent("receiver");
  ASSERT_TRUE(receiver.ok()) << receiver.status().ToString();
  Agent& a = **receiver;
  auto blob = a.ExportMetadata();
  ASSERT_TRUE(blob.ok());
  const unsigned seed = std::random_device{}();
  std::mt19937 rng(seed);
  SCOPED_TRACE("seed " + std::to_string(seed) + ", local message sockets " + (LocalMessageSockets() ? "on" : "off"));

  for (int r = 0; r < rounds; ++r) {
    Child& c = senders[static_cast<std::size_t>(r)];
    ASSERT_TRUE(SendFrame(c.fd, *blob));
    auto theirs = RecvFrame(c.fd, kStepTimeoutS);
    ASSERT_TRUE(theirs.has_value()) << "sender " << r << " sent no metadata";
    auto name = a.ImportMetadata(*theirs);
    ASSERT_TRUE(name.ok()) << name.status().ToString();
    if (r == 0) {  // the path under test is the one in use
      auto info = a.DescribePeer(*name);
      ASSERT_TRUE(info.ok());
      EXPECT_EQ(info->message_transports,
                LocalMessageSockets() ? std::vector<std::string>{"unix/seqpacket"} : std::vector<std::string>{});
    }
    if (receiver_wires_up) {
      const Status up = a.WireUp(*name, kStepTimeoutS);
      ASSERT_TRUE(up.ok()) << "after " << r << " peers were SIGKILLed, the receiver's wire-up to the live peer "
                           << *name << " failed: " << up.ToString();
    }
    // The live sender's messages must arrive, however many senders died mid-send before.
    bool heard = false;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(kStepTimeoutS);
    while (!heard && std::chrono::steady_clock::now() < deadline) {
      auto n = a.WaitNotification(0.5);
      heard = n.ok() && n->peer == *name;
    }
    ASSERT_TRUE(heard) << "after " << r << " peers were SIGKILLed, nothing from the live peer " << *name
                       << " arrived within " << kStepTimeoutS << " s: the receiver is deaf";
    if (receiver_wires_up) {
      ASSERT_TRUE(a.SendMessage(*name, std::vector<std::byte>(4, std::byte{0x60})).ok());
    }
    std::this_thread::sleep_for(std::chrono::microseconds(std::uniform_int_distribution<int>(500, 20000)(rng)));
    c.Kill();
    (void)a.InvalidatePeer(*name);
    (void)a.TakeNotifications();
  }
}

TEST(MessageEndpoint, SendersKilledInTheMiddleOfSendingNeverDeafenTheReceiver) {
  KilledPeersNeverDeafenTheReceiver(40, SendForever, false);
}

// Peers killed while they connect to the receiver: UCX endpoints (any wire-up
// message would travel over UCX, not over the message sockets; same-host
// endpoints send none) and message connections. Rounds:
// SHARDWIRE_TEST_CONNECT_ROUNDS (default 40).
TEST(MessageEndpoint, PeersKilledWhileConnectingNeverDeafenTheReceiver) {
  const char* env = std::getenv("SHARDWIRE_TEST_CONNECT_ROUNDS");
  KilledPeersNeverDeafenTheReceiver(env != nullptr ? std::atoi(env) : 40, ConnectForever, true);
}

}  // namespace
}  // namespace shardwire
