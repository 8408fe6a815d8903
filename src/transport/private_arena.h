// Private huge-page memory for an Agent arena (ArenaMemory::kPrivateHugePages):
// anonymous, 2 MiB-aligned, advised for transparent huge pages, excluded from
// fork, populated for writing.
//
// Why: on the PVM development VMs a first user-space access costs a hypervisor
// fault per 4 KiB page, and a 4 KiB page costs a trapped page-table write when
// it is populated; a 2 MiB page populates with one entry, and bytes the kernel
// writes into it (process_vm_readv, read) are read back from user space at
// memory speed (docs/benchmarks_history.md, "Issue 8 item 9"). Shared memory cannot
// have huge pages here (shmem_enabled is "never"), so an arena that wants them
// is private: peers read it by kernel copy or through UCX, never by mapping it.
//
// Internal header (src/transport); not part of the public API. Thread-safety: a
// PrivateMapping is a plain owner (move-only); distinct objects are independent.
#pragma once

#include <cstddef>

#include "shardwire/status.h"

namespace shardwire::transport {

/// True when the kernel grants transparent huge pages to memory advised with
/// MADV_HUGEPAGE: /sys/kernel/mm/transparent_hugepage/enabled is "[always]" or
/// "[madvise]". False when the file is missing or says "[never]".
bool TransparentHugePagesAdvisable();

/// An anonymous private mapping, unmapped when dropped.
class PrivateMapping {
 public:
  PrivateMapping() = default;
  ~PrivateMapping();
  PrivateMapping(PrivateMapping&& o) noexcept;
  PrivateMapping& operator=(PrivateMapping&& o) noexcept;
  PrivateMapping(const PrivateMapping&) = delete;
  PrivateMapping& operator=(const PrivateMapping&) = delete;

  /// Maps `length` bytes (> 0) at a 2 MiB-aligned address: mmap(MAP_PRIVATE |
  /// MAP_ANONYMOUS), madvise(MADV_HUGEPAGE) (best effort), madvise(MADV_DONTFORK)
  /// (a fork of the owner neither copies nor write-protects the pages while
  /// peers read them), then madvise(MADV_POPULATE_WRITE) (best effort; Linux
  /// 5.14+; 32 MiB per call). Contents are zero. `huge_pages()` says whether MADV_HUGEPAGE was
  /// accepted and TransparentHugePagesAdvisable() holds.
  /// Errors: kInvalidArgument for length 0, kIoError when mmap fails (names errno).
  static Result<PrivateMapping> Map(std::size_t length);

  std::byte* data() const { return data_; }
  std::size_t size() const { return length_; }
  bool huge_pages() const { return huge_; }

 private:
  void* raw_ = nullptr;
  std::size_t raw_length_ = 0;
  std::byte* data_ = nullptr;
  std::size_t length_ = 0;
  bool huge_ = false;
};

}  // namespace shardwire::transport
