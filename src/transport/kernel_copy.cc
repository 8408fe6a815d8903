#include "transport/kernel_copy.h"

#include <poll.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <utility>
#include <vector>

#include <fmt/format.h>

namespace shardwire::transport {
namespace {

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434  // Linux 5.3, same number on every architecture
#endif

constexpr std::size_t kMaxIov = IOV_MAX;

// Appends the segment [addr, addr + length) to `v`, merged into the last iovec when it continues it.
void AppendSegment(std::vector<iovec>& v, std::uintptr_t addr, std::uint64_t length) {
  if (!v.empty() && reinterpret_cast<std::uintptr_t>(v.back().iov_base) + v.back().iov_len == addr) {
    v.back().iov_len += static_cast<std::size_t>(length);
    return;
  }
  v.push_back({reinterpret_cast<void*>(addr), static_cast<std::size_t>(length)});
}

// Advances an iovec list past its first `bytes` bytes (a partial process_vm_* copy).
void AdvanceIovecs(std::vector<iovec>& v, std::uint64_t bytes) {
  std::size_t i = 0;
  while (i < v.size() && bytes >= v[i].iov_len) bytes -= v[i++].iov_len;
  v.erase(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(i));
  if (!v.empty() && bytes > 0) {
    v[0].iov_base = static_cast<char*>(v[0].iov_base) + bytes;
    v[0].iov_len -= static_cast<std::size_t>(bytes);
  }
}

}  // namespace

PeerProcess::~PeerProcess() {
  if (pidfd_ >= 0) ::close(pidfd_);
}

PeerProcess::PeerProcess(PeerProcess&& o) noexcept
    : pidfd_(std::exchange(o.pidfd_, -1)), pid_(std::exchange(o.pid_, 0)) {}

PeerProcess& PeerProcess::operator=(PeerProcess&& o) noexcept {
  if (this != &o) {
    if (pidfd_ >= 0) ::close(pidfd_);
    pidfd_ = std::exchange(o.pidfd_, -1);
    pid_ = std::exchange(o.pid_, 0);
  }
  return *this;
}

Result<PeerProcess> PeerProcess::Open(pid_t pid, std::uint64_t probe_addr) {
  if (pid <= 0) return InvalidArgument(fmt::format("kernel copy: pid {}", pid));
  const long fd = ::syscall(SYS_pidfd_open, pid, 0);
  if (fd < 0) {
    const int e = errno;
    if (e == ESRCH) return PeerDisconnected(fmt::format("kernel copy: process {} is gone", pid));
    return Unsupported(fmt::format("kernel copy: pidfd_open({}): {}", pid, std::strerror(e)));
  }
  PeerProcess p;
  p.pidfd_ = static_cast<int>(fd);
  p.pid_ = pid;
  if (probe_addr != 0) {
    unsigned char byte = 0;
    iovec l{&byte, 1}, r{reinterpret_cast<void*>(probe_addr), 1};
    if (::process_vm_readv(pid, &l, 1, &r, 1, 0) != 1) {
      const int e = errno;
      if (e == ESRCH) return PeerDisconnected(fmt::format("kernel copy: process {} is gone", pid));
      return Unsupported(fmt::format("kernel copy: process_vm_readv probe of process {}: {}", pid, std::strerror(e)));
    }
  }
  if (p.Exited()) return PeerDisconnected(fmt::format("kernel copy: process {} exited", pid));
  return p;
}

bool PeerProcess::Exited() const {
  if (pidfd_ < 0) return true;
  pollfd f{pidfd_, POLLIN, 0};
  int n;
  do {
    n = ::poll(&f, 1, 0);
  } while (n < 0 && errno == EINTR);  // a signal is no exit
  // Readable (exited), or another error (never trust the pid then).
  return n < 0 || (n > 0 && (f.revents & (POLLIN | POLLHUP | POLLERR | POLLNVAL)) != 0);
}

Status PeerProcess::ReadRows(std::byte* local, std::uint64_t local_stride, std::uint64_t remote_addr,
                             std::uint64_t remote_stride, std::uint64_t count, std::uint64_t length) const {
  const RowCopy c{local, local_stride, remote_addr, remote_stride, count, length};
  return Copy(false, {&c, 1});
}

Status PeerProcess::WriteRows(const std::byte* local, std::uint64_t local_stride, std::uint64_t remote_addr,
                              std::uint64_t remote_stride, std::uint64_t count, std::uint64_t length) const {
  // process_vm_writev only reads the local iovecs: the cast does not write through `local`.
  const RowCopy c{const_cast<std::byte*>(local), local_stride, remote_addr, remote_stride, count, length};
  return Copy(true, {&c, 1});
}

Status PeerProcess::ReadBatch(std::span<const RowCopy> copies) const { return Copy(false, copies); }

Status PeerProcess::WriteBatch(std::span<const RowCopy> copies) const { return Copy(true, copies); }

Status PeerProcess::Copy(bool write, std::span<const RowCopy> copies) const {
  if (pidfd_ < 0) return InvalidArgument("kernel copy: no peer process");
  const char* call = write ? "process_vm_writev" : "process_vm_readv";
  const char* peer = write ? "to" : "from";
  std::vector<iovec> liov, riov;
  std::uint64_t rows_total = 0;
  for (const RowCopy& c : copies) rows_total += c.count;
  liov.reserve(std::min<std::uint64_t>(rows_total, kMaxIov));
  riov.reserve(std::min<std::uint64_t>(rows_total, kMaxIov));
  std::uint64_t want = 0;  // bytes described by liov / riov (both cover the same rows)
  // Copies what liov / riov describe in as many system calls as partial copies need.
  auto flush = [&]() -> Status {
    std::uint64_t done = 0;
    while (done < want) {
      // A write checks the pidfd before every call: it must never land in a process that took
      // over a dead peer's pid (a read from one is caught by the check after the last call).
      if (write && Exited()) {
        return PeerDisconnected(
            fmt::format("kernel copy: process {} exited; nothing more is written to its pid", pid_));
      }
      const ssize_t n = write ? ::process_vm_writev(pid_, liov.data(), liov.size(), riov.data(), riov.size(), 0)
                              : ::process_vm_readv(pid_, liov.data(), liov.size(), riov.data(), riov.size(), 0);
      if (n < 0) {
        const int e = errno;
        if (e == EINTR) continue;
        if (e == ESRCH) return PeerDisconnected(fmt::format("kernel copy: process {} is gone", pid_));
        return TransportError(fmt::format("kernel copy: {} of {} bytes {} process {} at {}: {}", call, want - done,
                                          peer, pid_, riov.front().iov_base, std::strerror(e)));
      }
      if (n == 0) {
        return TransportError(
            fmt::format("kernel copy: {} {} process {} copied {} of {} bytes", call, peer, pid_, done, want));
      }
      done += static_cast<std::uint64_t>(n);
      // A partial copy stops at a fault (a remote range not mapped): skip the bytes copied and
      // retry the rest, which reports the error if it persists.
      if (done < want) {
        AdvanceIovecs(liov, static_cast<std::uint64_t>(n));
        AdvanceIovecs(riov, static_cast<std::uint64_t>(n));
      }
    }
    liov.clear();
    riov.clear();
    want = 0;
    return Status::Ok();
  };
  for (const RowCopy& c : copies) {
    if (c.count == 0 || c.length == 0) continue;
    const std::uint64_t ls = c.count == 1 ? c.length : c.local_stride;
    const std::uint64_t rs = c.count == 1 ? c.length : c.remote_stride;
    const auto local = reinterpret_cast<std::uintptr_t>(c.local);
    if (ls == c.length && rs == c.length) {  // contiguous on both sides: one segment each
      if (liov.size() >= kMaxIov || riov.size() >= kMaxIov) SW_RETURN_IF_ERROR(flush());
      AppendSegment(liov, local, c.count * c.length);
      AppendSegment(riov, static_cast<std::uintptr_t>(c.remote_addr), c.count * c.length);
      want += c.count * c.length;
      continue;
    }
    for (std::uint64_t r = 0; r < c.count; ++r) {
      // A row adds at most one iovec per side: make room first.
      if (liov.size() >= kMaxIov || riov.size() >= kMaxIov) SW_RETURN_IF_ERROR(flush());
      AppendSegment(liov, local + r * ls, c.length);
      AppendSegment(riov, static_cast<std::uintptr_t>(c.remote_addr + r * rs), c.length);
      want += c.length;
    }
  }
  if (want > 0) SW_RETURN_IF_ERROR(flush());
  if (Exited()) {
    return PeerDisconnected(
        write ? fmt::format("kernel copy: process {} exited; nothing more is written to its pid", pid_)
              : fmt::format("kernel copy: process {} exited; bytes read from its pid may come from another process",
                            pid_));
  }
  return Status::Ok();
}

}  // namespace shardwire::transport
