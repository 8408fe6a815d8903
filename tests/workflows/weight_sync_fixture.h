// Shared by the weight-sync process tests: the coordinator they rendezvous through, the
// test tensors and their oracle (bytes from (tensor, global element, byte, version), sharing
// no code with the planner or the layouts' placement arithmetic), and child processes.
#pragma once

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "box_element_index.h"
#include "die_with_test_process.h"
#include "shardwire/coordinator.h"
#include "shardwire/layout.h"
#include "shardwire/weight_sync.h"

namespace shardwire::weight_sync_test {

// A client of the coordinator on 127.0.0.1:port (the rendezvous of these tests).
inline Result<std::unique_ptr<CoordinatorClient>> ConnectRendezvous(std::uint16_t port) {
  CoordinatorClientOptions o;
  o.address = "127.0.0.1:" + std::to_string(port);
  o.unavailable_timeout_s = 20;
  return CoordinatorClient::Connect(o);
}

// An in-process coordinator on a free loopback port.
inline Result<std::unique_ptr<CoordinatorServer>> StartRendezvous() { return CoordinatorServer::Start({}); }

// An in-process coordinator and a client of it: the rendezvous of a test whose ranks all
// run in this process.
struct LocalRendezvous {
  std::unique_ptr<CoordinatorServer> server;
  std::unique_ptr<CoordinatorClient> client;
};
inline Result<LocalRendezvous> StartLocalRendezvous() {
  SW_ASSIGN_OR_RETURN(auto server, StartRendezvous());
  SW_ASSIGN_OR_RETURN(auto client, ConnectRendezvous(static_cast<std::uint16_t>(server->port())));
  return LocalRendezvous{std::move(server), std::move(client)};
}

inline std::vector<TensorSpec> Tensors() {
  return {{"emb", DType::kBF16, {64, 48}},
          {"col", DType::kF32, {40, 24}},
          {"row", DType::kBF16, {24, 40}},
          {"norm", DType::kF32, {24}}};
}

inline std::byte Oracle(std::uint32_t tensor, std::int64_t element, std::size_t byte, std::uint64_t version) {
  return static_cast<std::byte>((tensor * 131 + element * 7 + byte * 3 + version * 29) & 0xFF);
}

// Fills (check=false) or checks (check=true) a rank's buffer; returns mismatching bytes.
inline std::size_t Walk(const Layout& layout, int rank, std::span<std::byte> buf, std::uint64_t version, bool check) {
  std::size_t bad = 0;
  for (const ShardRef& s : layout.rank(rank).shards) {
    const TensorSpec& spec = layout.tensors()[s.tensor];
    const std::size_t esize = DTypeSize(spec.dtype);
    for (std::int64_t local = 0; local < s.box.numel(); ++local) {
      const std::int64_t global = testing_util::GlobalIndexOfBoxElement(s.box, spec.shape, local);
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

// One job in this process: a subscriber per engine rank and a publisher per trainer rank (each
// with its own agent), appended to `subs` and `pubs` and connected (the publishers concurrently:
// their Connects wait for each other). Fails the test on any error.
inline void CreateAndConnect(Rendezvous& rendezvous, const Layout& trainer, const Layout& engine,
                             const WeightSyncOptions& options, std::vector<std::unique_ptr<WeightSubscriber>>& subs,
                             std::vector<std::unique_ptr<WeightPublisher>>& pubs,
                             const std::function<void(int engine_rank, WeightSyncOptions&)>& engine_options = {}) {
  for (int e = 0; e < engine.world_size(); ++e) {
    WeightSyncOptions own = options;
    if (engine_options) engine_options(e, own);
    auto sub = WeightSubscriber::Create(rendezvous, trainer, engine, e, own);
    ASSERT_TRUE(sub.ok()) << sub.status().ToString();
    subs.push_back(std::move(*sub));
  }
  const int trainers = trainer.world_size();
  for (int t = 0; t < trainers; ++t) {
    auto pub = WeightPublisher::Create(rendezvous, trainer, engine, t, options);
    ASSERT_TRUE(pub.ok()) << pub.status().ToString();
    pubs.push_back(std::move(*pub));
  }
  for (auto& sub : subs) ASSERT_TRUE(sub->Connect().ok());
  std::vector<Status> st(static_cast<std::size_t>(trainers));
  std::vector<std::thread> connects;
  for (int t = 0; t < trainers; ++t) connects.emplace_back([&, t] { st[t] = pubs[t]->Connect(); });
  for (auto& th : connects) th.join();
  for (int t = 0; t < trainers; ++t) ASSERT_TRUE(st[t].ok()) << "trainer " << t << ": " << st[t].ToString();
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
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid == 0) {
    testing_util::DieWithTestProcess(parent);
    close(fds[1]);
    execve(exe.c_str(), argv.data(), envp.data());
    _exit(127);
  }
  close(fds[0]);
  *port_pipe_write = fds[1];
  return pid;
}

inline void SendPort(int fd, std::uint16_t port) {
  EXPECT_EQ(write(fd, &port, sizeof(port)), static_cast<ssize_t>(sizeof(port)));
  close(fd);
}

// Starts the coordinator the children of ForkWithPort wait for and sends each its port.
// nullptr when the coordinator did not start.
inline std::unique_ptr<CoordinatorServer> ServeChildren(const std::vector<int>& port_pipes) {
  auto server = StartRendezvous();
  if (!server.ok()) return nullptr;
  const auto port = static_cast<std::uint16_t>((*server)->port());
  for (int fd : port_pipes) SendPort(fd, port);
  return std::move(*server);
}

// One child process per rank 0 .. ranks - 1 (ForkWithPort with index = rank), each running
// body(port, rank) once the coordinator's port arrives; then starts the coordinator
// (ServeChildren) and sends it to them. Returns the coordinator (nullptr when a child could not
// be forked or the coordinator did not start) and the children's pids in `children`.
template <typename Body>
std::unique_ptr<CoordinatorServer> ForkRanksAndServe(int ranks, std::vector<pid_t>* children, Body body) {
  std::vector<int> port_pipes;
  for (int r = 0; r < ranks; ++r) {
    int fd = -1;
    const pid_t pid = ForkWithPort(&fd, r, [&](std::uint16_t port) { return body(port, r); });
    if (pid < 0) return nullptr;
    children->push_back(pid);
    port_pipes.push_back(fd);
  }
  return ServeChildren(port_pipes);
}

/// Waits up to 120 s for `pid` to stop (SIGSTOP); false if it exited or did not stop in time.
inline bool WaitStopped(pid_t pid) {
  int status = 0;
  for (int i = 0; i < 2400; ++i) {  // 120 s, as WaitChild
    const pid_t r = waitpid(pid, &status, WUNTRACED | WNOHANG);
    if (r == pid) return WIFSTOPPED(status);
    if (r < 0) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

inline int WaitChild(pid_t pid) {
  int status = 0;
  for (int i = 0; i < 2400; ++i) {  // 120 s: children under TSan on a loaded CI machine
    if (waitpid(pid, &status, WNOHANG) == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 100;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  kill(pid, SIGKILL);
  waitpid(pid, &status, 0);
  return 101;
}

}  // namespace shardwire::weight_sync_test
