// Pre-faulting this process's page tables for a mapping it will write (the
// local view of a peer's shared-memory region), so that the first transfer
// does not pay a fault per 4 KiB page.
//
// Two levels of page tables have to be filled, and only the first is visible to
// the guest kernel:
//   1. the kernel's page tables of this process (a minor fault per page, counted
//      in getrusage ru_minflt): a write access per page, or
//      madvise(MADV_POPULATE_WRITE) in one system call (Linux 5.14+);
//   2. under a hypervisor that shadows guest page tables (PVM, "Hypervisor
//      detected: PVM" in dmesg; KVM without EPT/NPT), the hypervisor's shadow
//      entry of each page, built on the first CPU access through the new
//      mapping. madvise does not access the pages, so it does not build them.
//      The cost (about 7-20 us per page on the 2-core PVM development VMs, 1.3-4 s
//      per GB) shows up as user time inside the first memcpy, with no page
//      fault counted (docs/transport.md, "Pre-faulting"). Only an access does:
//      one byte per page. Measured on PVM: pages populated by madvise and then
//      touched often still made the first copy slow (0.04-0.11x of the second in
//      3 of 5 runs of bench/mapping_first_write, and step 1 of the RL demo at 2x a
//      steady step), while pages only touched did not (0.40-0.70x; demo step 1 at
//      steady speed). So kAuto touches and does not call madvise.
// Hardware that walks the guest page tables itself (bare metal, KVM with EPT)
// needs only level 1; the touch then costs one minor fault per page (~0.5 us).
//
// Thread-safety: PrefaultForWrite may run while other processes (or threads)
// write the same pages: neither method changes a byte.
#pragma once

#include <cstddef>
#include <cstdint>

namespace shardwire::transport {

/// How PrefaultForWrite populates the page tables.
enum class PrefaultMethod {
  kAuto,     ///< kTouch (see above for why not madvise first)
  kMadvise,  ///< madvise(MADV_POPULATE_WRITE) only (Linux 5.14+): kernel page tables only
  kTouch,    ///< an atomic fetch_add of 0 on one byte per page (write access, value unchanged)
};

/// What PrefaultForWrite did.
struct PrefaultResult {
  bool madvise_ok = false;          ///< MADV_POPULATE_WRITE populated the range
  int madvise_errno = 0;            ///< its errno when it failed (EINVAL: kernel < 5.14 or unsupported mapping)
  std::uint64_t touched_pages = 0;  ///< pages accessed one byte each (kAuto, kTouch)
};

/// Populates the page tables of [p, p + n) (rounded out to whole pages) for
/// writing, without changing any byte: kAuto fills both levels described above.
/// Never fails: when neither method works the first transfer simply takes the faults.
/// Takes about 0.5 us per page on hardware-walked page tables, 7-20 us per page
/// under a shadow-paging hypervisor.
PrefaultResult PrefaultForWrite(void* p, std::size_t n, PrefaultMethod method = PrefaultMethod::kAuto);

/// Populates the page tables of [p, p + n) (rounded out to whole pages) for
/// reading: madvise(MADV_POPULATE_READ) (Linux 5.14+), else one read per page.
/// Never fails and never changes a byte (the local view of a peer's region that
/// one-sided READs will copy from).
PrefaultResult PrefaultForRead(const void* p, std::size_t n, PrefaultMethod method = PrefaultMethod::kAuto);

}  // namespace shardwire::transport
