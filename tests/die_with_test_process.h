// For test code that forks a helper process (a coordinator, a redis-server, a worker):
// called first in the child, it makes the child die with the test process. A test that
// a sanitizer halts, that crashes or that times out then leaves no process behind, and
// none holds ctest's output pipe open (ctest waits for every writer of that pipe to
// close: a surviving `shardwire serve` held it until the 1800 s test timeout in a TSan
// run). Async-signal-safe, as code between fork and exec must be.
#pragma once

#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

namespace shardwire::testing_util {

/// In a freshly forked child: SIGKILL when the thread that forked it exits, and _exit(127)
/// at once if the parent `parent` (its getpid() before fork) is already gone.
inline void DieWithTestProcess(pid_t parent) {
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != parent) ::_exit(127);
}

}  // namespace shardwire::testing_util
