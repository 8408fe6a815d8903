#include "transport/kernel_copy.h"

#include <poll.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

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

// The iovecs of `count` rows of `length` bytes at `base`, `stride` apart,
// starting at row `first`, at most kMaxIov of them; rows that touch are merged.
// Returns the number of rows covered.
std::uint64_t RowIovecs(std::uintptr_t base, std::uint64_t stride, std::uint64_t first, std::uint64_t count,
                        std::uint64_t length, std::vector<iovec>& out) {
  out.clear();
  if (stride == length || count == 1) {  // contiguous: one iovec for every row left
    out.push_back({reinterpret_cast<void*>(base + first * stride), static_cast<std::size_t>((count - first) * length)});
    return count - first;
  }
  std::uint64_t r = first;
  for (; r < count && out.size() < kMaxIov; ++r) {
    out.push_back({reinterpret_cast<void*>(base + r * stride), static_cast<std::size_t>(length)});
  }
  return r - first;
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
  const int n = ::poll(&f, 1, 0);
  return n != 0;  // readable (exited), or an error: never trust the pid then
}

Status PeerProcess::ReadRows(std::byte* local, std::uint64_t local_stride, std::uint64_t remote_addr,
                             std::uint64_t remote_stride, std::uint64_t count, std::uint64_t length) const {
  return CopyRows(false, local, local_stride, remote_addr, remote_stride, count, length);
}

Status PeerProcess::WriteRows(const std::byte* local, std::uint64_t local_stride, std::uint64_t remote_addr,
                              std::uint64_t remote_stride, std::uint64_t count, std::uint64_t length) const {
  // process_vm_writev only reads the local iovecs: the cast does not write through `local`.
  return CopyRows(true, const_cast<std::byte*>(local), local_stride, remote_addr, remote_stride, count, length);
}

Status PeerProcess::CopyRows(bool write, std::byte* local, std::uint64_t local_stride, std::uint64_t remote_addr,
                             std::uint64_t remote_stride, std::uint64_t count, std::uint64_t length) const {
  if (pidfd_ < 0) return InvalidArgument("kernel copy: no peer process");
  if (count == 0 || length == 0) return Status::Ok();
  if (count == 1) local_stride = remote_stride = length;
  const char* call = write ? "process_vm_writev" : "process_vm_readv";
  const char* peer = write ? "to" : "from";
  std::vector<iovec> liov, riov;
  liov.reserve(std::min<std::uint64_t>(count, kMaxIov));
  riov.reserve(std::min<std::uint64_t>(count, kMaxIov));
  std::uint64_t row = 0;
  while (row < count) {
    // As many rows as both sides fit in kMaxIov iovecs.
    const std::uint64_t rr =
        RowIovecs(static_cast<std::uintptr_t>(remote_addr), remote_stride, row, count, length, riov);
    const std::uint64_t rl = RowIovecs(reinterpret_cast<std::uintptr_t>(local), local_stride, row, count, length, liov);
    const std::uint64_t rows = std::min(rr, rl);
    // Trim the side that covers more rows to exactly `rows` rows.
    auto trim = [&](std::vector<iovec>& v, std::uint64_t covered) {
      if (covered == rows) return;
      if (v.size() == 1) {
        v[0].iov_len = static_cast<std::size_t>(rows * length);
      } else {
        v.resize(static_cast<std::size_t>(rows));
      }
    };
    trim(riov, rr);
    trim(liov, rl);
    const std::uint64_t want = rows * length;
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
      if (done < want) {
        // A partial copy stops at a fault (a remote range not mapped): advance
        // both iovec lists past the bytes copied and retry the rest, which
        // reports the error if it persists.
        auto advance = [](std::vector<iovec>& v, std::uint64_t bytes) {
          std::size_t i = 0;
          while (i < v.size() && bytes >= v[i].iov_len) bytes -= v[i++].iov_len;
          v.erase(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(i));
          if (!v.empty() && bytes > 0) {
            v[0].iov_base = static_cast<char*>(v[0].iov_base) + bytes;
            v[0].iov_len -= static_cast<std::size_t>(bytes);
          }
        };
        advance(liov, static_cast<std::uint64_t>(n));
        advance(riov, static_cast<std::uint64_t>(n));
      }
    }
    row += rows;
  }
  if (Exited()) {
    return PeerDisconnected(
        write ? fmt::format("kernel copy: process {} exited; nothing more is written to its pid", pid_)
              : fmt::format("kernel copy: process {} exited; bytes read from its pid may come from another process",
                            pid_));
  }
  return Status::Ok();
}

}  // namespace shardwire::transport
