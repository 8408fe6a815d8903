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

// `body` gets the agent and the imported peer's name.
using ChildBody = std::function<int(Agent&, const std::string& peer)>;

Child ForkChild(const std::string& name, const ChildBody& body) {
  int fds[2];
  Child c;
  if (::socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0) return c;
  c.pid = ::fork();
  if (c.pid == 0) {
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
    ::_exit(body(**agent, peer));
  }
  ::close(fds[1]);
  c.fd = fds[0];
  return c;
}

// Sends 8000-byte messages (the largest that fit one shared-memory FIFO element,
// so most of a send's time lies inside the window) as fast as it can, until killed.
int SendForever(Agent& a, const std::string& peer) {
  const std::vector<std::byte> payload(8000, std::byte{0x5A});
  for (;;) {
    if (!a.SendMessage(peer, payload).ok()) std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
}

TEST(MessageEndpoint, SendersKilledInTheMiddleOfSendingNeverDeafenTheReceiver) {
  constexpr int kRounds = 40;
  std::vector<Child> senders;
  for (int r = 0; r < kRounds; ++r) senders.push_back(ForkChild("sender-" + std::to_string(r), SendForever));
  for (const Child& c : senders) ASSERT_GT(c.pid, 0) << "fork";

  auto receiver = MakeAgent("receiver");
  ASSERT_TRUE(receiver.ok()) << receiver.status().ToString();
  Agent& a = **receiver;
  auto blob = a.ExportMetadata();
  ASSERT_TRUE(blob.ok());
  const unsigned seed = std::random_device{}();
  std::mt19937 rng(seed);
  SCOPED_TRACE("seed " + std::to_string(seed) + ", local message sockets " + (LocalMessageSockets() ? "on" : "off"));

  for (int r = 0; r < kRounds; ++r) {
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
    // The live sender's messages must arrive, however many senders died mid-send before.
    bool heard = false;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(kStepTimeoutS);
    while (!heard && std::chrono::steady_clock::now() < deadline) {
      auto n = a.WaitNotification(0.5);
      heard = n.ok() && n->peer == *name;
    }
    ASSERT_TRUE(heard) << "after " << r << " senders were SIGKILLed while sending, nothing from the live sender "
                       << *name << " arrived within " << kStepTimeoutS << " s: the receiver is deaf";
    std::this_thread::sleep_for(std::chrono::microseconds(std::uniform_int_distribution<int>(500, 20000)(rng)));
    c.Kill();
    (void)a.InvalidatePeer(*name);
    (void)a.TakeNotifications();
  }
}

}  // namespace
}  // namespace shardwire
