// `shardwire serve --metrics-port` (a real process): the endpoint answers a real HTTP client
// with the coordinator's metrics after a real gRPC call; a port in use or out of range makes
// serve exit 1 naming the port; `--log-format json` writes log lines that parse as JSON.
#include <gtest/gtest.h>
#include <httplib.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <nlohmann/json.hpp>
#include <regex>
#include <thread>
#include <sstream>
#include <string>
#include <vector>

#include "die_with_test_process.h"
#include "shardwire/coordinator.h"

namespace shardwire {
namespace {

// A child running the CLI with stdout and stderr on one pipe.
struct Child {
  pid_t pid = -1;
  int fd = -1;
  std::string output;
  ~Child() {
    if (pid > 0) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
    if (fd >= 0) ::close(fd);
  }
  // Reads until `re` matches the output (true) or the child exits / 30 s pass (false).
  bool WaitFor(const std::regex& re, std::smatch* m) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (std::chrono::steady_clock::now() < end) {
      if (std::regex_search(output, *m, re)) return true;
      pollfd pfd{fd, POLLIN, 0};
      if (::poll(&pfd, 1, 100) <= 0) continue;
      char buf[4096];
      const ssize_t n = ::read(fd, buf, sizeof buf);
      if (n <= 0) return std::regex_search(output, *m, re);
      output.append(buf, static_cast<std::size_t>(n));
    }
    return false;
  }
  // Waits (at most 30 s) for the exit; returns the exit code, or -1.
  int Exit() {
    std::smatch m;
    WaitFor(std::regex("$^never"), &m);  // drain until EOF or timeout
    int status = 0;
    for (int i = 0; i < 300; ++i) {
      if (::waitpid(pid, &status, WNOHANG) == pid) {
        pid = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return -1;
  }
};

void Spawn(Child* c, std::vector<std::string> args) {
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  args.insert(args.begin(), SHARDWIRE_BIN);
  const pid_t parent = ::getpid();
  c->pid = ::fork();
  if (c->pid == 0) {
    testing_util::DieWithTestProcess(parent);
    ::dup2(fds[1], 1);
    ::dup2(fds[1], 2);
    ::close(fds[0]);
    ::close(fds[1]);
    std::vector<char*> argv;
    for (auto& s : args) argv.push_back(s.data());
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  ::close(fds[1]);
  c->fd = fds[0];
}

double Sample(const std::string& body, const std::string& series) {
  std::istringstream in(body);
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(series + " ", 0) == 0) return std::stod(line.substr(series.size() + 1));
  ADD_FAILURE() << "no sample " << series << " in\n" << body;
  return -1;
}

// `serve --port 0 --metrics-port 0`; returns the metrics port it printed (-1: none within 30 s).
int ServeWithMetrics(Child* serve) {
  Spawn(serve, {"serve", "--port", "0", "--metrics-port", "0"});
  std::smatch m;
  if (!serve->WaitFor(std::regex(R"(shardwire metrics on http://127\.0\.0\.1:(\d+)/metrics)"), &m)) return -1;
  return std::stoi(m[1]);
}

TEST(ServeMetrics, MetricsPortAnswersWithTheCoordinatorsMetrics) {
  Child serve;
  const int metrics_port = ServeWithMetrics(&serve);
  ASSERT_GT(metrics_port, 0) << serve.output;
  std::smatch m;
  ASSERT_TRUE(serve.WaitFor(std::regex(R"(listening on (\S+))"), &m)) << serve.output;
  CoordinatorClientOptions co;
  co.address = m[1];
  auto client = CoordinatorClient::Connect(co);
  ASSERT_TRUE(client.ok()) << client.status().ToString();
  SourceRecord r;
  r.model_identity = "id";
  r.instance_id = "inst";
  r.layout = "tp=1";
  r.layout_fingerprint = "f";
  r.metadata = std::vector<std::byte>(8, std::byte{1});
  ASSERT_TRUE((*client)->RegisterSource(r).ok());

  httplib::Client http("127.0.0.1", metrics_port);
  http.set_read_timeout(5, 0);
  auto res = http.Get("/metrics");
  ASSERT_TRUE(res) << httplib::to_string(res.error());
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(Sample(res->body, "shardwire_coordinator_sources{state=\"READY\"}"), 1);
  EXPECT_EQ(Sample(res->body, "shardwire_coordinator_requests_total{method=\"SourceRegistry/Register\",code=\"OK\"}"),
            1);
}

TEST(ServeMetrics, PortInUseOrOutOfRangeExitsOneNamingThePort) {
  Child first;
  const int port = ServeWithMetrics(&first);
  ASSERT_GT(port, 0) << first.output;
  const std::string taken = std::to_string(port);
  Child second;
  Spawn(&second, {"serve", "--port", "0", "--metrics-port", taken});
  EXPECT_EQ(second.Exit(), 1) << second.output;
  EXPECT_NE(second.output.find("I/O error"), std::string::npos) << second.output;
  EXPECT_NE(second.output.find(":" + taken), std::string::npos) << second.output;
  Child third;
  Spawn(&third, {"serve", "--port", "0", "--metrics-port", "70000"});
  EXPECT_EQ(third.Exit(), 1) << third.output;
  EXPECT_NE(third.output.find("70000"), std::string::npos) << third.output;
}

TEST(ServeMetrics, JsonLogFormatWritesOneJsonObjectPerLogLine) {
  Child serve;
  Spawn(&serve, {"-v", "--log-format", "json", "serve", "--port", "0"});
  std::smatch m;
  ASSERT_TRUE(serve.WaitFor(std::regex(R"(shardwire coordinator listening on)"), &m)) << serve.output;
  // The debug line "coordinator listening on ..." comes before the plain stdout banner.
  std::istringstream in(serve.output);
  std::string line;
  int json_lines = 0;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] != '{') continue;
    auto j = nlohmann::json::parse(line, nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << line;
    EXPECT_TRUE(j.contains("time") && j.contains("level") && j.contains("logger") && j.contains("message")) << line;
    ++json_lines;
  }
  EXPECT_GE(json_lines, 1) << serve.output;
}

}  // namespace
}  // namespace shardwire
