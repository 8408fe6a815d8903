// Test fixture for kernel-copy tests (tests/transport): a forked child process whose private
// anonymous memory holds a known pattern, for process_vm_readv / process_vm_writev to read or
// write, and a read-back through /proc/<pid>/mem (a path the code under test does not use).
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "die_with_test_process.h"
#include "transport_test_util.h"

namespace shardwire::testing {

/// A child that maps `kBytes` after the fork, fills them with PatternByte(seed, offset),
/// sends their address, and waits for one byte (or EOF) before exiting. Start() returns
/// pid = -1 when the fork or socketpair failed, addr = 0 when the child sent nothing.
struct PatternChild {
  static constexpr std::size_t kBytes = std::size_t{8} << 20;
  pid_t pid = -1;
  int fd = -1;
  std::uintptr_t addr = 0;

  static PatternChild Start(std::uint64_t seed) {
    PatternChild c;
    int fds[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0) return c;
    const pid_t test_pid = ::getpid();
    c.pid = ::fork();
    if (c.pid == 0) {
      shardwire::testing_util::DieWithTestProcess(test_pid);
      ::close(fds[0]);
      // One guard page (PROT_NONE) after the mapping, so a read running past kBytes faults
      // whatever the allocator (or AddressSanitizer's shadow) mapped next to it.
      const std::size_t page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
      void* p = ::mmap(nullptr, kBytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) ::_exit(3);
      if (::mprotect(static_cast<std::byte*>(p) + kBytes, page, PROT_NONE) != 0) ::_exit(5);
      FillPattern({static_cast<std::byte*>(p), kBytes}, seed);
      const auto a = reinterpret_cast<std::uintptr_t>(p);
      if (!SendFrame(fds[1], {reinterpret_cast<const std::byte*>(&a), sizeof(a)})) ::_exit(4);
      char b;
      (void)::read(fds[1], &b, 1);
      ::_exit(0);
    }
    ::close(fds[1]);
    c.fd = fds[0];
    auto frame = RecvFrame(c.fd, 20);
    if (frame && frame->size() == sizeof(c.addr)) std::memcpy(&c.addr, frame->data(), sizeof(c.addr));
    return c;
  }
  /// "/proc/<pid>/mem".
  std::string MemPath() const { return "/proc/" + std::to_string(pid) + "/mem"; }
  /// The child's whole mapping, read through /proc/<pid>/mem; empty when it cannot be read.
  std::vector<std::byte> ReadBack() const {
    std::vector<std::byte> out(kBytes);
    const int mem = ::open(MemPath().c_str(), O_RDONLY);
    if (mem < 0) return {};
    std::size_t done = 0;
    while (done < out.size()) {
      const ssize_t n = ::pread(mem, out.data() + done, out.size() - done, static_cast<off_t>(addr + done));
      if (n <= 0) break;
      done += static_cast<std::size_t>(n);
    }
    ::close(mem);
    if (done != out.size()) return {};
    return out;
  }
  /// Lets the child exit and reaps it (at most 20 s).
  void Stop() {
    if (fd >= 0) {
      (void)::send(fd, "x", 1, MSG_NOSIGNAL);  // the child may be dead (no SIGPIPE)
      ::close(fd);
      fd = -1;
    }
    if (pid > 0) {
      (void)WaitPidFor(pid, 20);
      pid = -1;
    }
  }
  ~PatternChild() { Stop(); }
};

}  // namespace shardwire::testing
