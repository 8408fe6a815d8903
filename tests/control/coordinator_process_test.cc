// The coordinator in another process: `shardwire serve` started by the test,
// killed with SIGKILL and restarted on the same port. A client made before the
// kill reconnects by itself (a call issued while the coordinator is down is retried
// until it is back); with in-memory state the data is gone after the restart,
// which is the documented behaviour.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <regex>
#include <string>
#include <thread>

#include "control/test_util.h"
#include "shardwire/coordinator.h"

namespace shardwire {
namespace {

using testing_util::BytesOf;

// A running `shardwire serve`; SIGKILLed and reaped by the destructor.
struct ServeProcess {
  pid_t pid = -1;
  int out_fd = -1;
  std::string address;

  ~ServeProcess() { Kill(); }
  void Kill() {
    if (pid > 0) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
      pid = -1;
    }
    if (out_fd >= 0) ::close(out_fd);
    out_fd = -1;
  }
};

// Starts `shardwire serve --port <port> extra...` and waits (<= 30 s) for its
// "listening on HOST:PORT" line. Returns false (with the output so far) otherwise.
bool StartServe(ServeProcess* p, int port, const std::vector<std::string>& extra, std::string* output) {
  int fds[2];
  if (::pipe(fds) != 0) return false;
  std::vector<std::string> argv_s = {SHARDWIRE_BIN, "serve", "--port", std::to_string(port)};
  argv_s.insert(argv_s.end(), extra.begin(), extra.end());
  p->pid = ::fork();
  if (p->pid == 0) {
    ::dup2(fds[1], 1);
    ::close(fds[0]);
    ::close(fds[1]);
    std::vector<char*> argv;
    for (auto& s : argv_s) argv.push_back(s.data());
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  ::close(fds[1]);
  p->out_fd = fds[0];
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  const std::regex line(R"(listening on (\S+))");
  while (std::chrono::steady_clock::now() < end) {
    pollfd pfd{p->out_fd, POLLIN, 0};
    if (::poll(&pfd, 1, 100) <= 0) continue;
    char buf[512];
    const ssize_t n = ::read(p->out_fd, buf, sizeof buf);
    if (n <= 0) return false;  // exited
    output->append(buf, static_cast<std::size_t>(n));
    std::smatch m;
    if (std::regex_search(*output, m, line)) {
      p->address = m[1];
      return true;
    }
  }
  return false;
}

TEST(CoordinatorProcess, ClientReconnectsAfterSigkillAndRestartOnTheSamePort) {
  ServeProcess first;
  std::string out;
  ASSERT_TRUE(StartServe(&first, 0, {"--stale-after", "5"}, &out)) << out;
  const int port = std::stoi(first.address.substr(first.address.rfind(':') + 1));
  ASSERT_GT(port, 0);

  CoordinatorClientOptions o;
  o.address = first.address;
  o.unavailable_timeout_s = 30;
  auto c = CoordinatorClient::Connect(o);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  ASSERT_TRUE((*c)->Put("before", BytesOf("1")).ok());
  auto src = SourceRecord{};
  src.model_identity = "m";
  src.instance_id = "i";
  ASSERT_TRUE((*c)->RegisterSource(src).ok());
  EXPECT_EQ((*c)->ListSources("m", std::nullopt)->size(), 1u);

  first.Kill();  // SIGKILL: no goodbye

  // Issued while nothing listens: retried until the restarted coordinator answers.
  Status during = Internal("not run");
  std::thread t([&] { during = (*c)->Put("during", BytesOf("2")); });

  ServeProcess second;
  out.clear();
  ASSERT_TRUE(StartServe(&second, port, {}, &out)) << out;
  t.join();
  EXPECT_TRUE(during.ok()) << during.ToString();
  EXPECT_EQ(*GetString(**c, "during", 5), "2");
  // In-memory state: what the killed coordinator held is gone.
  EXPECT_EQ((*c)->Get("before", 0).status().code(), ErrorCode::kTimedOut);
  EXPECT_TRUE((*c)->ListSources("m", std::nullopt)->empty());

  // A second serve on the same port fails with a message naming the address.
  ServeProcess third;
  out.clear();
  EXPECT_FALSE(StartServe(&third, port, {}, &out));
  int status = 0;
  ::waitpid(third.pid, &status, 0);
  third.pid = -1;
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 1);

  // SIGTERM stops a serve cleanly (exit 0).
  ::kill(second.pid, SIGTERM);
  ::waitpid(second.pid, &status, 0);
  second.pid = -1;
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

TEST(CoordinatorProcess, ServeWithTokenFileRefusesOtherTokens) {
  const std::string path = ::testing::TempDir() + "/shardwire-token-" + std::to_string(::getpid());
  {
    FILE* f = std::fopen(path.c_str(), "w");
    ASSERT_NE(f, nullptr);
    std::fputs("tok-123\n", f);
    std::fclose(f);
  }
  ServeProcess p;
  std::string out;
  ASSERT_TRUE(StartServe(&p, 0, {"--token-file", path}, &out)) << out;
  CoordinatorClientOptions o;
  o.address = p.address;
  o.unavailable_timeout_s = 10;
  o.token = "tok-124";
  EXPECT_EQ(CoordinatorClient::Connect(o).status().code(), ErrorCode::kUnauthenticated);
  o.token = "tok-123";
  auto c = CoordinatorClient::Connect(o);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(*(*c)->Add("n", 2), 2);
  std::remove(path.c_str());
}

}  // namespace
}  // namespace shardwire
