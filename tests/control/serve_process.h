// `shardwire serve` as a child process of a test (SHARDWIRE_BIN must name the binary):
// shared by the in-memory and Redis coordinator process tests.
#pragma once

#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <regex>
#include <string>
#include <vector>

#include "die_with_test_process.h"

namespace shardwire::testing_util {

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
  /// The port of `address` ("host:port").
  int port() const { return std::stoi(address.substr(address.rfind(':') + 1)); }
  /// Sends SIGSTOP and waits (<= 10 s) until every thread of the process has stopped: kill()
  /// returns once the signal is queued, and a server thread not yet stopped could still answer
  /// a call made right after it. False if it did not stop in time.
  bool Stop() const {
    if (pid <= 0 || ::kill(pid, SIGSTOP) != 0) return false;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (std::chrono::steady_clock::now() < deadline) {
      int st = 0;
      const pid_t r = ::waitpid(pid, &st, WUNTRACED | WNOHANG);
      if (r == pid) return WIFSTOPPED(st);
      if (r < 0) return false;
      ::usleep(2000);
    }
    return false;
  }
};

// Starts `shardwire serve --port <port> extra...` (stdout and stderr into one pipe) and waits
// (<= 30 s) for its "listening on HOST:PORT" line. Returns false (with the output so far) otherwise.
// `env`: "NAME=value" entries the process gets besides (and over) this process's environment;
// `global`: options of `shardwire` itself, before `serve` (e.g. --log-format json).
inline bool StartServe(ServeProcess* p, int port, const std::vector<std::string>& extra, std::string* output,
                       const std::vector<std::string>& env = {}, const std::vector<std::string>& global = {}) {
  int fds[2];
  if (::pipe(fds) != 0) return false;
  std::vector<std::string> argv_s = {SHARDWIRE_BIN};
  argv_s.insert(argv_s.end(), global.begin(), global.end());
  argv_s.insert(argv_s.end(), {"serve", "--port", std::to_string(port)});
  argv_s.insert(argv_s.end(), extra.begin(), extra.end());
  // Built before fork: only async-signal-safe calls in the child.
  std::vector<std::string> env_s;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string entry(*e);
    const std::string name = entry.substr(0, entry.find('=') + 1);
    bool replaced = false;
    for (const auto& x : env) replaced = replaced || x.compare(0, name.size(), name) == 0;
    if (!replaced) env_s.push_back(entry);
  }
  env_s.insert(env_s.end(), env.begin(), env.end());
  std::vector<char*> envp;
  for (auto& e : env_s) envp.push_back(e.data());
  envp.push_back(nullptr);
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t parent = ::getpid();
  p->pid = ::fork();
  if (p->pid == 0) {
    DieWithTestProcess(parent);
    ::dup2(fds[1], 1);
    ::dup2(fds[1], 2);  // its log lines too (stderr), as tests read them beside "listening on"
    ::close(fds[0]);
    ::close(fds[1]);
    ::execve(argv[0], argv.data(), envp.data());
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

}  // namespace shardwire::testing_util
