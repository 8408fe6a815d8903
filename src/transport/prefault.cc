#include "transport/prefault.h"

#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  // Linux 5.14
#endif
#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22  // Linux 5.14
#endif

namespace shardwire::transport {

PrefaultResult PrefaultForWrite(void* p, std::size_t n, PrefaultMethod method) {
  PrefaultResult r;
  if (p == nullptr || n == 0) return r;
  const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
  const auto begin = reinterpret_cast<std::uintptr_t>(p) & ~(page - 1);
  const auto end = reinterpret_cast<std::uintptr_t>(p) + n;
  if (method == PrefaultMethod::kMadvise) {
    if (::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_POPULATE_WRITE) == 0) {
      r.madvise_ok = true;
    } else {
      r.madvise_errno = errno;
    }
    return r;
  }
  // One access per page: fills the kernel's entry (a minor fault) and builds a
  // shadow-paging hypervisor's entry, which madvise does not (see the header). A locked add of 0 is a write access (so
  // the page is mapped writable) that leaves the byte as it is, even while the
  // owner writes the same page concurrently.
  for (std::uintptr_t a = begin; a < end; a += page) {
    std::atomic_ref<unsigned char>(*reinterpret_cast<unsigned char*>(a)).fetch_add(0, std::memory_order_relaxed);
    ++r.touched_pages;
  }
  return r;
}

PrefaultResult PrefaultForRead(const void* p, std::size_t n, PrefaultMethod method) {
  PrefaultResult r;
  if (p == nullptr || n == 0) return r;
  const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
  const auto begin = reinterpret_cast<std::uintptr_t>(p) & ~(page - 1);
  const auto end = reinterpret_cast<std::uintptr_t>(p) + n;
  if (method != PrefaultMethod::kTouch) {
    if (::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_POPULATE_READ) == 0) {
      r.madvise_ok = true;
      return r;
    }
    r.madvise_errno = errno;
    if (method == PrefaultMethod::kMadvise) return r;
  }
  for (std::uintptr_t a = begin; a < end; a += page) {
    (void)*reinterpret_cast<const volatile unsigned char*>(a);
    ++r.touched_pages;
  }
  return r;
}

}  // namespace shardwire::transport
