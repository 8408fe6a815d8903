// WeightPublisher -> WeightSubscriber across real processes over UCX. The oracle fills
// and checks buffers element by element from (tensor, global index, version), sharing
// no code with the planner or the layouts' placement arithmetic.
#include "shardwire/weight_sync.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "shardwire/coordinator.h"

namespace shardwire {
namespace {

// A client of the coordinator on 127.0.0.1:port (the rendezvous of these tests).
Result<std::unique_ptr<CoordinatorClient>> ConnectRendezvous(std::uint16_t port) {
  CoordinatorClientOptions o;
  o.address = "127.0.0.1:" + std::to_string(port);
  o.unavailable_timeout_s = 20;
  return CoordinatorClient::Connect(o);
}

// An in-process coordinator on a free loopback port.
Result<std::unique_ptr<CoordinatorServer>> StartRendezvous() { return CoordinatorServer::Start({}); }

std::vector<TensorSpec> Tensors() {
  return {{"emb", DType::kBF16, {64, 48}},
          {"col", DType::kF32, {40, 24}},
          {"row", DType::kBF16, {24, 40}},
          {"norm", DType::kF32, {24}}};
}

std::byte Oracle(std::uint32_t tensor, std::int64_t element, std::size_t byte, std::uint64_t version) {
  return static_cast<std::byte>((tensor * 131 + element * 7 + byte * 3 + version * 29) & 0xFF);
}

// Fills (check=false) or checks (check=true) a rank's buffer; returns mismatching bytes.
std::size_t Walk(const Layout& layout, int rank, std::span<std::byte> buf, std::uint64_t version, bool check) {
  std::size_t bad = 0;
  for (const ShardRef& s : layout.rank(rank).shards) {
    const TensorSpec& spec = layout.tensors()[s.tensor];
    const std::size_t esize = DTypeSize(spec.dtype);
    for (std::int64_t local = 0; local < s.box.numel(); ++local) {
      std::int64_t rem = local, global = 0, stride = 1;
      for (std::size_t d = spec.shape.size(); d-- > 0;) {
        global += (rem % s.box.shape[d] + s.box.offset[d]) * stride;
        rem /= s.box.shape[d];
        stride *= spec.shape[d];
      }
      for (std::size_t b = 0; b < esize; ++b) {
        std::byte& at = buf[s.byte_offset + static_cast<std::size_t>(local) * esize + b];
        const std::byte want = Oracle(s.tensor, global, b, version);
        if (!check)
          at = want;
        else
          bad += at != want;
      }
    }
  }
  return bad;
}

constexpr int kVersions = 3;

// Child: one engine rank. Exit code 0 = every version arrived and matched.
// With `own_memory`, the subscriber receives into a buffer this process allocated (an
// engine's own weights) instead of a Shardwire arena.
int RunSubscriber(std::uint16_t port, int rank, const Layout& trainer, const Layout& engine, bool own_memory = false) {
  auto rz = ConnectRendezvous(port);
  if (!rz.ok()) return 10;
  std::vector<std::byte> engine_weights(own_memory ? engine.rank(rank).buffer_bytes + 13 : 0);
  WeightSyncOptions options{"t", 20};
  options.buffer = engine_weights;
  auto sub = WeightSubscriber::Create(**rz, trainer, engine, rank, options);
  if (!sub.ok() || !(*sub)->Connect().ok()) return 11;
  for (std::uint64_t v = 1; v <= kVersions; ++v) {
    if (!(*sub)->BeginUpdate(v).ok()) return 12;
    auto stats = (*sub)->WaitForUpdate(v);
    if (!stats.ok()) return 13;
    if ((*sub)->committed_version() != v) return 14;
    if (Walk(engine, rank, (*sub)->weights(), v, true) != 0) return 15;
    if (own_memory && (*sub)->weights().data() != engine_weights.data()) return 16;  // received in place
  }
  return 0;
}

// Starts a child process that runs `body(port)` once the parent sends it the
// rendezvous port. The child is a fresh exec of this test binary running only the
// current test, with SHARDWIRE_WS_CHILD="<index>:<pipe fd>" in its environment: the
// test body runs again in the child and this function, called with the same
// `index`, runs `body` there and exits (calls with other indexes return 0). A fresh
// exec because a forked copy of a process that already used gRPC (the coordinator
// client) or UCX inherits their threads' locks and state without the threads.
template <typename Body>
pid_t ForkWithPort(int* port_pipe_write, int index, Body body) {
  if (const char* spec = std::getenv("SHARDWIRE_WS_CHILD"); spec != nullptr) {
    int want = -1, fd = -1;
    if (std::sscanf(spec, "%d:%d", &want, &fd) != 2) _exit(8);
    if (want != index) return 0;
    std::uint16_t port = 0;
    if (read(fd, &port, sizeof(port)) != sizeof(port)) _exit(9);
    _exit(body(port));
  }
  int fds[2];
  if (pipe(fds) != 0) return -1;
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string filter = std::string("--gtest_filter=") + info->test_suite_name() + "." + info->name();
  std::string child_env = "SHARDWIRE_WS_CHILD=" + std::to_string(index) + ":" + std::to_string(fds[0]);
  std::string exe = "/proc/self/exe";
  std::vector<char*> argv = {exe.data(), filter.data(), nullptr};
  std::vector<char*> envp;
  for (char** e = environ; *e != nullptr; ++e) envp.push_back(*e);
  envp.push_back(child_env.data());
  envp.push_back(nullptr);
  const pid_t pid = fork();
  if (pid == 0) {
    close(fds[1]);
    execve(exe.c_str(), argv.data(), envp.data());
    _exit(127);
  }
  close(fds[0]);
  *port_pipe_write = fds[1];
  return pid;
}

void SendPort(int fd, std::uint16_t port) {
  EXPECT_EQ(write(fd, &port, sizeof(port)), static_cast<ssize_t>(sizeof(port)));
  close(fd);
}

int WaitChild(pid_t pid) {
  int status = 0;
  for (int i = 0; i < 600; ++i) {
    if (waitpid(pid, &status, WNOHANG) == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 100;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  kill(pid, SIGKILL);
  waitpid(pid, &status, 0);
  return 101;
}

TEST(WeightSync, FsdpToTpAcrossProcessesEveryVersionVerified) {
  const Layout trainer = MakeFsdpLayout(Tensors(), 1).value();  // this process: the one trainer rank
  const Layout engine = MakeTpLayout(Tensors(), {0, 0, 1, -1}, 2, 1).value();
  std::vector<pid_t> children;
  std::vector<int> port_pipes;
  for (int r = 0; r < engine.world_size(); ++r) {
    int fd = -1;
    const pid_t pid = ForkWithPort(&fd, r, [&](std::uint16_t p) { return RunSubscriber(p, r, trainer, engine); });
    ASSERT_GE(pid, 0);
    children.push_back(pid);
    port_pipes.push_back(fd);
  }
  auto server = StartRendezvous();
  ASSERT_TRUE(server.ok());
  const auto port = static_cast<std::uint16_t>((*server)->port());
  for (int fd : port_pipes) SendPort(fd, port);
  auto rz = ConnectRendezvous(port);
  ASSERT_TRUE(rz.ok());
  auto pub = WeightPublisher::Create(**rz, trainer, engine, 0, {"t", 20});
  ASSERT_TRUE(pub.ok()) << pub.status().ToString();
  ASSERT_TRUE((*pub)->Connect().ok());
  for (std::uint64_t v = 1; v <= kVersions; ++v) {
    Walk(trainer, 0, (*pub)->weights(), v, false);
    auto stats = (*pub)->Push(v);
    ASSERT_TRUE(stats.ok()) << stats.status().ToString();
    EXPECT_EQ(stats->bytes, 2 * (64 * 48 * 2 + 40 * 24 * 4 + 24 * 40 * 2) / 2 + 2 * 24 * 4);
  }
  for (pid_t pid : children) EXPECT_EQ(WaitChild(pid), 0);
}

TEST(WeightSync, FromTrainerMemoryIntoEngineMemory) {
  const Layout trainer = MakeFsdpLayout(Tensors(), 1).value();
  const Layout engine = MakeTpLayout(Tensors(), {0, 0, 1, -1}, 2, 1).value();
  std::vector<pid_t> children;
  std::vector<int> port_pipes;
  for (int r = 0; r < engine.world_size(); ++r) {
    int fd = -1;
    const pid_t pid = ForkWithPort(
        &fd, r, [&](std::uint16_t p) { return RunSubscriber(p, r, trainer, engine, /*own_memory=*/true); });
    ASSERT_GE(pid, 0);
    children.push_back(pid);
    port_pipes.push_back(fd);
  }
  auto server = StartRendezvous();
  ASSERT_TRUE(server.ok());
  const auto port = static_cast<std::uint16_t>((*server)->port());
  for (int fd : port_pipes) SendPort(fd, port);
  auto rz = ConnectRendezvous(port);
  ASSERT_TRUE(rz.ok());
  // The trainer's parameters live in memory it allocated; too small a buffer is refused.
  std::vector<std::byte> params(trainer.rank(0).buffer_bytes);
  WeightSyncOptions small{"t-small", 20};
  small.buffer = std::span(params).first(params.size() - 1);
  auto refused = WeightPublisher::Create(**rz, trainer, engine, 0, small);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), ErrorCode::kInvalidArgument);
  WeightSyncOptions options{"t", 20};
  options.buffer = params;
  auto pub = WeightPublisher::Create(**rz, trainer, engine, 0, options);
  ASSERT_TRUE(pub.ok()) << pub.status().ToString();
  ASSERT_EQ((*pub)->weights().data(), params.data());
  ASSERT_TRUE((*pub)->Connect().ok());
  for (std::uint64_t v = 1; v <= kVersions; ++v) {
    Walk(trainer, 0, params, v, false);  // the trainer updates its own parameters in place
    auto stats = (*pub)->Push(v);
    ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  }
  for (pid_t pid : children) EXPECT_EQ(WaitChild(pid), 0);
}

TEST(WeightSync, SubscriberReportsADeadPublisher) {
  const Layout trainer = MakeFsdpLayout(Tensors(), 1).value();
  const Layout engine = MakeTpLayout(Tensors(), {-1, -1, -1, -1}, 1, 1).value();
  int port_pipe = -1;
  const pid_t pid = ForkWithPort(&port_pipe, 0, [&](std::uint16_t port) {
    // A publisher that connects, then dies before pushing.
    auto rz = ConnectRendezvous(port);
    if (!rz.ok()) return 10;
    auto pub = WeightPublisher::Create(**rz, trainer, engine, 0, {"t", 20});
    if (!pub.ok() || !(*pub)->Connect().ok()) return 11;
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    raise(SIGKILL);
    return 12;
  });
  ASSERT_GE(pid, 0);
  auto server = StartRendezvous();
  ASSERT_TRUE(server.ok());
  const auto port = static_cast<std::uint16_t>((*server)->port());
  SendPort(port_pipe, port);
  auto rz = ConnectRendezvous(port);
  ASSERT_TRUE(rz.ok());
  auto sub = WeightSubscriber::Create(**rz, trainer, engine, 0, {"t", 10});
  ASSERT_TRUE(sub.ok()) << sub.status().ToString();
  ASSERT_TRUE((*sub)->Connect().ok());
  ASSERT_TRUE((*sub)->BeginUpdate(1).ok());
  auto update = (*sub)->WaitForUpdate(1);
  ASSERT_FALSE(update.ok());
  EXPECT_TRUE(update.status().code() == ErrorCode::kPeerDisconnected || update.status().code() == ErrorCode::kTimedOut)
      << update.status().ToString();
  EXPECT_NE(update.status().message().find("t/trainer/0"), std::string::npos) << update.status().ToString();
  EXPECT_EQ((*sub)->committed_version(), 0u);  // nothing half-received is ever committed
  EXPECT_EQ(WaitChild(pid), 100);
}

}  // namespace
}  // namespace shardwire

namespace shardwire {
namespace {

// The interrupt hook (WeightSyncOptions::interrupt): each wait ends with the hook's status, and
// what arrived meanwhile is kept, so the interrupted call succeeds when made again. Two trainer
// ranks feed one engine rank, all in this process (separate agents, real UCX).
TEST(WeightSync, InterruptEndsEveryWaitAndKeepsWhatArrived) {
  const Layout trainer = MakeFsdpLayout(Tensors(), 2).value();
  const Layout engine = MakeTpLayout(Tensors(), {-1, -1, -1, -1}, 1, 1).value();
  auto server = StartRendezvous();
  ASSERT_TRUE(server.ok());
  auto rz = ConnectRendezvous(static_cast<std::uint16_t>((*server)->port()));
  ASSERT_TRUE(rz.ok());
  std::atomic<bool> stop{false};
  std::atomic<int> calls{0};
  WeightSyncOptions options{"irq", 30};
  options.interrupt = [&]() -> Status {
    calls.fetch_add(1);
    return stop.load() ? FailedPrecondition("stop requested") : Status::Ok();
  };
  auto sub = WeightSubscriber::Create(**rz, trainer, engine, 0, options);
  ASSERT_TRUE(sub.ok()) << sub.status().ToString();
  // Connect with no trainer published: only the hook ends it (timeout 30 s).
  stop = true;
  Status connect = (*sub)->Connect();
  EXPECT_EQ(connect.code(), ErrorCode::kFailedPrecondition) << connect.ToString();
  EXPECT_NE(connect.message().find("stop requested"), std::string::npos);
  stop = false;
  std::vector<std::unique_ptr<WeightPublisher>> pubs;
  for (int r = 0; r < 2; ++r) {
    auto pub = WeightPublisher::Create(**rz, trainer, engine, r, options);
    ASSERT_TRUE(pub.ok()) << pub.status().ToString();
    pubs.push_back(std::move(*pub));
  }
  ASSERT_TRUE((*sub)->Connect().ok());
  for (auto& p : pubs) ASSERT_TRUE(p->Connect().ok());
  for (int r = 0; r < 2; ++r) Walk(trainer, r, pubs[static_cast<std::size_t>(r)]->weights(), 1, false);
  ASSERT_TRUE((*sub)->BeginUpdate(1).ok());
  ASSERT_TRUE(pubs[0]->Push(1).ok());  // DONE(1) from trainer 0 only
  // The wait consumes trainer 0's DONE, then is interrupted while trainer 1's is missing.
  calls = 0;
  std::thread stopper([&] {
    while (calls.load() < 5) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    stop = true;
  });
  auto interrupted = (*sub)->WaitForUpdate(1);
  stopper.join();
  ASSERT_FALSE(interrupted.ok());
  EXPECT_EQ(interrupted.status().code(), ErrorCode::kFailedPrecondition) << interrupted.status().ToString();
  EXPECT_EQ((*sub)->committed_version(), 0u);
  stop = false;
  ASSERT_TRUE(pubs[1]->Push(1).ok());
  auto update = (*sub)->WaitForUpdate(1);  // needs trainer 0's DONE kept from the interrupted call
  ASSERT_TRUE(update.ok()) << update.status().ToString();
  EXPECT_EQ((*sub)->committed_version(), 1u);
  EXPECT_EQ(Walk(engine, 0, (*sub)->weights(), 1, true), 0u);
  // A push with no engine ready for version 2 ends with the hook's status, posting nothing.
  for (int r = 0; r < 2; ++r) Walk(trainer, r, pubs[static_cast<std::size_t>(r)]->weights(), 2, false);
  stop = true;
  auto push = pubs[0]->Push(2);
  ASSERT_FALSE(push.ok());
  EXPECT_EQ(push.status().code(), ErrorCode::kFailedPrecondition) << push.status().ToString();
  EXPECT_EQ(Walk(engine, 0, (*sub)->weights(), 1, true), 0u);  // the engine's bytes are untouched
  stop = false;
  ASSERT_TRUE((*sub)->BeginUpdate(2).ok());
  for (auto& p : pubs) ASSERT_TRUE(p->Push(2).ok());
  ASSERT_TRUE((*sub)->WaitForUpdate(2).ok());
  EXPECT_EQ(Walk(engine, 0, (*sub)->weights(), 2, true), 0u);
}

}  // namespace
}  // namespace shardwire
