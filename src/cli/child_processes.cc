#include "cli/child_processes.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>

#include <fmt/format.h>

namespace shardwire::cli {
namespace {

volatile sig_atomic_t g_interrupted = 0;  // written only by the signal handler

void OnInterrupt(int) { g_interrupted = 1; }

constexpr auto kPollInterval = std::chrono::milliseconds(20);

}  // namespace

std::string ChildExit::Describe() const {
  if (signal != 0) return fmt::format("{} was killed by signal {} ({})", label, signal, strsignal(signal));
  return fmt::format("{} exited with code {}", label, exit_code);
}

ChildProcesses::ChildProcesses() {
  struct sigaction sa {};
  sa.sa_handler = OnInterrupt;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

ChildProcesses::~ChildProcesses() { KillAll(); }

bool ChildProcesses::InterruptRequested() { return g_interrupted != 0; }

Status ChildProcesses::Interrupted() {
  return FailedPrecondition("interrupted by SIGINT or SIGTERM (Ctrl-C); every worker process was stopped");
}

Status ChildProcesses::Spawn(const std::string& label, const std::vector<std::string>& args) {
  std::vector<std::string> argv_storage{"shardwire"};
  argv_storage.insert(argv_storage.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_storage) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) return IoError(fmt::format("fork for {} failed: {}", label, std::strerror(errno)));
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(125);  // the parent died before prctl took effect
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    execv("/proc/self/exe", argv.data());
    _exit(127);
  }
  running_[pid] = label;
  return Status::Ok();
}

std::vector<ChildExit> ChildProcesses::ReapExited() {
  std::vector<ChildExit> exits;
  for (auto it = running_.begin(); it != running_.end();) {
    int status = 0;
    const pid_t r = waitpid(it->first, &status, WNOHANG);
    if (r == it->first || (r < 0 && errno == ECHILD)) {
      ChildExit e{it->second};
      if (r == it->first && WIFSIGNALED(status)) e.signal = WTERMSIG(status);
      if (r == it->first && WIFEXITED(status)) e.exit_code = WEXITSTATUS(status);
      exits.push_back(e);
      it = running_.erase(it);
    } else {
      ++it;
    }
  }
  return exits;
}

Result<std::vector<ChildExit>> ChildProcesses::WaitAll(double timeout_s) {
  std::vector<ChildExit> exits;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  while (!running_.empty()) {
    for (auto& e : ReapExited()) exits.push_back(e);
    if (running_.empty()) break;
    if (InterruptRequested()) return Interrupted();
    if (std::chrono::steady_clock::now() > deadline) {
      std::string names;
      for (const auto& [pid, label] : running_) names += (names.empty() ? "" : ", ") + label;
      return TimedOut(fmt::format("still running after {:.0f} s: {}", timeout_s, names));
    }
    std::this_thread::sleep_for(kPollInterval);
  }
  return exits;
}

void ChildProcesses::KillAll(double grace_s) {
  if (running_.empty()) return;
  for (const auto& [pid, label] : running_) kill(pid, SIGTERM);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(grace_s);
  while (!running_.empty() && std::chrono::steady_clock::now() < deadline) {
    ReapExited();
    if (!running_.empty()) std::this_thread::sleep_for(kPollInterval);
  }
  for (const auto& [pid, label] : running_) kill(pid, SIGKILL);
  for (const auto& [pid, label] : running_) waitpid(pid, nullptr, 0);
  running_.clear();
}

}  // namespace shardwire::cli
