// The UCX backend tunes the shared-memory receive pools only when UCX_TLS leaves shared memory
// selected (src/transport/ucx/shared_memory_tls.h): the predicate on UCX_TLS's syntax, and a real
// agent created in a child process with UCX_TLS=tcp, whose UCX log must carry no "invalid
// configuration" warning (UCX prints one per worker for a setting no opened transport reads).
#include "transport/ucx/shared_memory_tls.h"

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>

#include "shardwire/agent.h"
#include "transport/transport_test_util.h"

namespace shardwire::transport::ucx {
namespace {

TEST(SharedMemoryTls, FollowsTheSyntaxOfUcxTls) {
  for (const char* selected : {"", "all", "sm", "shm", "mm", "posix", "sysv", "tcp,sm", "rc,posix,cuda_copy", "^tcp",
                               "^posix", "^sysv,tcp", "^rc,ud"}) {
    EXPECT_TRUE(UcxTlsSelectsSharedMemory(selected)) << '"' << selected << '"';
  }
  EXPECT_TRUE(UcxTlsSelectsSharedMemory(nullptr)) << "unset: UCX's default, all";
  for (const char* unselected :
       {"tcp", "rc,cuda_copy,cuda_ipc", "self,tcp", "^sm", "^shm", "^mm,tcp", "^posix,sysv", "cma", "smx"}) {
    EXPECT_FALSE(UcxTlsSelectsSharedMemory(unselected)) << '"' << unselected << '"';
  }
}

// Creates an agent in a child process with UCX_TLS = `tls` (nullptr: unset), its stdout and
// stderr (where UCX logs) in a file; returns what it wrote, or "exit N" when it failed.
std::string AgentLogWith(const char* tls) {
  char path[] = "/tmp/shardwire-tls-XXXXXX";
  const int fd = ::mkstemp(path);
  if (fd < 0) return "mkstemp failed";
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    if (tls != nullptr) {
      ::setenv("UCX_TLS", tls, 1);
      ::setenv("UCX_NET_DEVICES", "lo", 1);
    } else {
      ::unsetenv("UCX_TLS");
    }
    // Two agents of two lanes each, one connected to the other (the bench's TCP section).
    // UCX logs through stdio: flushed before _exit, which would drop its buffers.
    int rc = 0;
    {
      auto a = Agent::Create({.name = "tls-probe-a", .lanes = 2});
      auto b = Agent::Create({.name = "tls-probe-b", .lanes = 2});
      if (!a.ok() || !b.ok()) {
        rc = 3;
      } else {
        auto meta = (*b)->ExportMetadata();
        if (!meta.ok() || !(*a)->ImportMetadata(*meta).ok()) rc = 4;
      }
    }
    std::fflush(stdout);
    std::fflush(stderr);
    ::_exit(rc);
  }
  ::close(fd);
  // 120 s: two agents under TSan on a loaded CI machine take a few seconds; a child that
  // hangs in UCX is killed and reported instead of holding the test to ctest's timeout.
  const std::optional<int> waited = shardwire::testing::WaitPidFor(pid, 120);
  const int status = waited.value_or(-1);
  std::ifstream in(path);
  std::stringstream log;
  log << in.rdbuf();
  ::unlink(path);
  if (!waited) return "exit (killed after 120 s without exiting): " + log.str();
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) return "exit " + std::to_string(status) + ": " + log.str();
  return log.str();
}

TEST(SharedMemoryTls, AnAgentOverTcpAloneGetsNoInvalidConfigurationWarning) {
  const std::string tcp = AgentLogWith("tcp");
  EXPECT_EQ(tcp.find("exit "), std::string::npos) << tcp;
  EXPECT_EQ(tcp.find("invalid configuration"), std::string::npos) << tcp;
  const std::string all = AgentLogWith(nullptr);
  EXPECT_EQ(all.find("exit "), std::string::npos) << all;
  EXPECT_EQ(all.find("invalid configuration"), std::string::npos) << all;
}

}  // namespace
}  // namespace shardwire::transport::ucx
