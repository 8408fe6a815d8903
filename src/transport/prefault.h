// Pre-faulting this process's page tables for a mapping it will write (the
// local view of a peer's shared-memory region), so that the first transfer
// does not take one page fault per 4 KiB page.
//
// Thread-safety: PrefaultForWrite may run while other processes (or threads)
// write the same pages: neither method changes a byte.
#pragma once

#include <cstddef>
#include <cstdint>

namespace shardwire::transport {

/// How PrefaultForWrite populates the page tables.
enum class PrefaultMethod {
  kAuto,     ///< madvise(MADV_POPULATE_WRITE); kTouch where the kernel refuses it
  kMadvise,  ///< madvise(MADV_POPULATE_WRITE) only (Linux 5.14+)
  kTouch,    ///< an atomic fetch_add of 0 on one byte per page (write fault, value unchanged)
};

/// What PrefaultForWrite did.
struct PrefaultResult {
  bool madvise_ok = false;          ///< MADV_POPULATE_WRITE populated the range
  int madvise_errno = 0;            ///< its errno when it failed (EINVAL: kernel < 5.14 or unsupported mapping)
  std::uint64_t touched_pages = 0;  ///< pages touched by the fallback
};

/// Populates the page tables of [p, p + n) (rounded out to whole pages) for
/// writing, without changing any byte. Never fails: when neither method works the
/// first transfer simply takes the faults.
PrefaultResult PrefaultForWrite(void* p, std::size_t n, PrefaultMethod method = PrefaultMethod::kAuto);

/// Populates the page tables of [p, p + n) (rounded out to whole pages) for
/// reading: madvise(MADV_POPULATE_READ) (Linux 5.14+), else one read per page.
/// Never fails and never changes a byte (the local view of a peer's region that
/// one-sided READs will copy from).
PrefaultResult PrefaultForRead(const void* p, std::size_t n, PrefaultMethod method = PrefaultMethod::kAuto);

}  // namespace shardwire::transport
