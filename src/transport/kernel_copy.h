// Same-host READs and WRITEs by kernel copy (Linux cross-memory attach,
// process_vm_readv / process_vm_writev; WRITEs: WritePath in agent.h):
// the kernel copies a peer process's bytes into this process's memory, with no
// mapping of the peer's memory in this process and no user-space write to the
// destination.
//
// Why (issue 8 item 9, measured on the 2-core PVM development VMs with
// /tmp-only microbenchmarks, docs/benchmarks_history.md "Issue 8 item 9"): under a
// shadow-paging hypervisor every first user-space access through a mapping costs
// about 11-20 us per 4 KiB page (a hypervisor fault, shown as user time inside
// memcpy), whether the page is 4 KiB or part of a transparent huge page. A READ
// through a mapping of the peer's shared-memory region pays it twice per page
// (the source mapping and the destination's first write); the kernel copy pays
// neither when the destination is huge-page memory (the kernel writes through
// its own mapping: ~0.9 us per 4 KiB page in all, read back from user space at
// memory speed). Into 4 KiB destination pages the kernel copy is *slower* in
// all (the later first user access still costs the hypervisor fault), so the
// Agent uses it only where ReadPath says (see agent.h).
//
// The peer is named by pid, so a pid reused after the peer died must never be
// read: PeerProcess holds a pidfd (pidfd_open) of the peer, opened while the
// peer's start time still matched, and every copy is followed by a check of
// that pidfd: if the peer had exited, the bytes may come from another process
// and the copy reports kPeerDisconnected (a reused pid needs the original to
// have exited first, and exit is sticky on the pidfd, so checking *after* the
// copy closes the race).
//
// Internal header (src/transport); not part of the public API. Thread-safety:
// ReadRows, WriteRows, ReadBatch and WriteBatch may run on several threads for one
// PeerProcess at once (the pidfd is only polled; each call builds its own iovecs);
// opening and closing are not concurrent with copies (the Agent opens at
// ImportMetadata and closes at peer teardown).
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "shardwire/status.h"

namespace shardwire::transport {

/// One 2-D copy between this process and a peer (PeerProcess::ReadBatch / WriteBatch):
/// `count` rows of `length` bytes at `local`, `local + local_stride`, ... and at the
/// peer's `remote_addr`, `remote_addr + remote_stride`, ... (strides in bytes; ignored
/// when count == 1). Rows must not overlap on either side.
struct RowCopy {
  std::byte* local = nullptr;
  std::uint64_t local_stride = 0;
  std::uint64_t remote_addr = 0;
  std::uint64_t remote_stride = 0;
  std::uint64_t count = 0;
  std::uint64_t length = 0;
};

/// A same-host peer process that may be read by kernel copy.
class PeerProcess {
 public:
  PeerProcess() = default;
  ~PeerProcess();
  PeerProcess(PeerProcess&& o) noexcept;
  PeerProcess& operator=(PeerProcess&& o) noexcept;
  PeerProcess(const PeerProcess&) = delete;
  PeerProcess& operator=(const PeerProcess&) = delete;

  /// Opens `pid` for kernel copies. The caller checks, after Open returns, that
  /// `pid` is still the process it means (e.g. its start time, as the Agent's
  /// liveness check does): the pidfd then stays bound to that process even if
  /// the pid is reused later. `probe_addr` (an address of the
  /// peer known to be mapped, e.g. a region's base; 0 = no probe) is read once
  /// (one byte) to learn whether this process may read the peer at all (ptrace
  /// access: same user and no Yama/LSM restriction, or CAP_SYS_PTRACE).
  /// Errors: kUnsupported when pidfd_open or process_vm_readv is not available
  /// or permitted (the caller uses another path), kPeerDisconnected when the
  /// process is gone.
  static Result<PeerProcess> Open(pid_t pid, std::uint64_t probe_addr);

  bool valid() const { return pidfd_ >= 0; }
  pid_t pid() const { return pid_; }

  /// Copies `count` rows of `length` bytes from the peer's addresses
  /// `remote_addr`, `remote_addr + remote_stride`, ... to `local`, `local +
  /// local_stride`, ... (a 2-D copy; contiguous sides become one iovec), at
  /// most IOV_MAX iovecs per system call. Then checks that the peer has not
  /// exited (see the file comment). Rows must not overlap on either side.
  /// Errors: kPeerDisconnected (the peer exited: ESRCH, or its pidfd reports
  /// exit after the copy; the destination bytes are then unspecified),
  /// kTransportError naming the errno for anything else (EFAULT: a remote range
  /// not mapped in the peer; EPERM; a short copy).
  Status ReadRows(std::byte* local, std::uint64_t local_stride, std::uint64_t remote_addr, std::uint64_t remote_stride,
                  std::uint64_t count, std::uint64_t length) const;

  /// The WRITE counterpart of ReadRows (process_vm_writev): copies `count` rows
  /// of `length` bytes from `local`, `local + local_stride`, ... into the peer's
  /// addresses `remote_addr`, `remote_addr + remote_stride`, ..., at most IOV_MAX
  /// iovecs per system call (a contiguous side is one iovec). A write must not
  /// reach a process that reused the peer's pid, so the pidfd is checked
  /// *before* every system call (a reused pid needs the peer to have exited and
  /// been reaped first, which the pidfd reports) as well as after the last one.
  /// The window left between the check and the call is a few microseconds, in
  /// which the peer would have to exit, be reaped and its pid be handed to a
  /// new process of the same user (pid_max wraps first); Linux offers no
  /// pidfd-based process_vm_writev to close it. Rows must not overlap.
  /// Errors: kPeerDisconnected (the peer exited before or during the copy, or
  /// ESRCH; the peer's bytes are then unspecified, which no longer matters),
  /// kTransportError naming the errno for anything else (EFAULT: a remote range
  /// not mapped in the peer; EPERM; a short copy), kInvalidArgument without a peer.
  Status WriteRows(const std::byte* local, std::uint64_t local_stride, std::uint64_t remote_addr,
                   std::uint64_t remote_stride, std::uint64_t count, std::uint64_t length) const;

  /// ReadRows for several copies at once: their rows go into the same system calls
  /// (up to IOV_MAX iovecs per side each; segments that touch are merged), with one
  /// exit check after the last. A batch of 64 x 64 KiB rows is one process_vm_readv
  /// instead of 64 calls and 64 checks (each a system call costing 1-3 us under the
  /// paravirtualised development host; docs/benchmarks_history.md, "Small transfers").
  /// Errors as ReadRows; on error, which copies landed is unspecified.
  Status ReadBatch(std::span<const RowCopy> copies) const;

  /// WriteRows for several copies at once, batched as ReadBatch, with WriteRows'
  /// pidfd check before every system call and after the last. Errors as WriteRows.
  Status WriteBatch(std::span<const RowCopy> copies) const;

  /// True when the peer has exited (its pidfd is readable), or the pidfd is invalid.
  bool Exited() const;

 private:
  // ReadBatch (write = false) and WriteBatch (write = true): the iovec batching, partial-copy
  // resumption and error mapping around process_vm_readv / process_vm_writev.
  Status Copy(bool write, std::span<const RowCopy> copies) const;
  int pidfd_ = -1;
  pid_t pid_ = 0;
};

}  // namespace shardwire::transport
