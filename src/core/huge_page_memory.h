// Memory in transparent huge pages for large tables that live for one computation (the
// planner's move lists) or are built once (a layout's shard tables).
//
// Why: under a shadow-paging hypervisor (PVM) the first touch of a 4 KiB page costs ~10 us, so
// a table of 200 MB built from fresh memory spends ~0.5 s in page faults. Planning Kimi-K2 for
// 128 engine ranks (1.6 million moves) took 1.3-1.8 s on such a host, 52,000 first touches; with
// the same tables in 2 MiB pages, about 500 (docs/benchmarks.md, "Planner at scale"); building
// the layouts of that plan went from 121,000 faults and 1.9-2.8 s to 33,000 and 0.8-1.5 s. The
// kernel gives an anonymous range 2 MiB pages when it is advised MADV_HUGEPAGE and the system's
// transparent huge page mode is "always" or "madvise"; otherwise the advice is ignored and the
// memory works as usual, in 4 KiB pages.
//
// Internal header (src/core), usable from every layer; not part of the public API.
#pragma once

#include <cstddef>
#include <memory_resource>

namespace shardwire {

/// Bytes of a transparent huge page on x86-64 and of the alignment HugePageMemoryResource gives
/// its large blocks.
inline constexpr std::size_t kHugePageBytes = std::size_t{2} << 20;

/// A std::pmr::memory_resource for large, short-lived tables. A request of at least
/// kHugePageBytes gets its own anonymous private mapping, rounded up to a multiple of 2 MiB,
/// aligned to 2 MiB and advised MADV_HUGEPAGE (best effort), and is unmapped on deallocation;
/// smaller requests go to std::pmr::new_delete_resource(). Use it as the upstream of a
/// std::pmr::monotonic_buffer_resource whose initial size is kHugePageBytes, so that every block
/// the monotonic resource takes is a huge-page block.
/// Errors: throws std::bad_alloc when the mapping fails (the memory_resource contract).
/// Alignment: any power of two up to 2 MiB for large blocks; up to alignof(std::max_align_t) and
/// what new_delete_resource() supports for small ones.
/// Thread-safety: stateless; allocate and deallocate may be called from any thread.
class HugePageMemoryResource final : public std::pmr::memory_resource {
 private:
  void* do_allocate(std::size_t bytes, std::size_t alignment) override;
  void do_deallocate(void* p, std::size_t bytes, std::size_t alignment) override;
  bool do_is_equal(const std::pmr::memory_resource& other) const noexcept override { return this == &other; }
};

/// Advises MADV_HUGEPAGE for the 2 MiB-aligned part of [data, data + bytes): call it on memory
/// not yet touched (e.g. a vector's buffer right after reserve()) so that its first touches
/// fault in 2 MiB pages. Best effort: does nothing for ranges without a whole aligned 2 MiB page
/// inside, and ignores the kernel's refusal. Thread-safety: none needed.
void AdviseHugePages(void* data, std::size_t bytes);

}  // namespace shardwire
