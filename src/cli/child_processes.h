// ChildProcesses: the worker processes a demo starts, owned RAII-style.
//
// Children re-execute this binary (/proc/self/exe) with the given arguments, die with
// the parent (PR_SET_PDEATHSIG), and are terminated (SIGTERM, then SIGKILL after a
// grace period) and reaped by the destructor or KillAll, so no failure path leaves
// orphans. SIGINT/SIGTERM sent to the parent are caught and reported through
// InterruptRequested() so the caller can clean up and exit.
//
// Thread-safety: one owning thread.
#pragma once

#include <sys/types.h>

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "shardwire/status.h"

namespace shardwire::cli {

struct ChildExit {
  std::string label;
  int exit_code = 0;  ///< valid when signal == 0
  int signal = 0;     ///< the signal that killed it, or 0
  bool ok() const { return signal == 0 && exit_code == 0; }
  std::string Describe() const;
};

class ChildProcesses {
 public:
  ChildProcesses();
  ~ChildProcesses();
  ChildProcesses(const ChildProcesses&) = delete;
  ChildProcesses& operator=(const ChildProcesses&) = delete;

  /// Starts this binary with `args` (argv[1..]). `label` names it in messages.
  Status Spawn(const std::string& label, const std::vector<std::string>& args);

  /// Reaps every child that has exited, without blocking.
  std::vector<ChildExit> ReapExited();

  /// Waits up to timeout_s for all children to exit; returns the exits seen.
  /// kTimedOut (naming the children still running) when some did not exit; Interrupted()
  /// once SIGINT/SIGTERM arrived (the children are left to the caller's cleanup).
  Result<std::vector<ChildExit>> WaitAll(double timeout_s);

  /// SIGTERM to every running child, SIGKILL after `grace_s`, then reaps them all.
  void KillAll(double grace_s = 2.0);

  std::size_t running() const { return running_.size(); }

  /// The pid of the running child labelled `label`, or -1.
  pid_t PidOf(const std::string& label) const {
    for (const auto& [pid, l] : running_) {
      if (l == label) return pid;
    }
    return -1;
  }

  /// True once SIGINT or SIGTERM reached this process (after construction).
  static bool InterruptRequested();

  /// What a command returns when InterruptRequested() stopped it: kFailedPrecondition (the
  /// code the Python bindings give a wait that Ctrl-C ended), naming the signal. The command
  /// exits with 130, as a shell does for SIGINT.
  static Status Interrupted();

 private:
  std::map<pid_t, std::string> running_;
};

}  // namespace shardwire::cli
