// HugePageMemoryResource and AdviseHugePages (src/core/huge_page_memory.h): large blocks are
// 2 MiB-aligned, hold what is written, and are unmapped on deallocation; small blocks and pmr
// containers growing across the 2 MiB threshold keep their contents.
#include "core/huge_page_memory.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <deque>
#include <memory_resource>
#include <vector>

#include <gtest/gtest.h>

namespace shardwire {
namespace {

// True when the page holding `p` is mapped in this process (mincore fails with ENOMEM otherwise).
bool Mapped(const void* p) {
  const long page = ::sysconf(_SC_PAGESIZE);
  auto* start = reinterpret_cast<void*>(reinterpret_cast<std::uintptr_t>(p) / page * page);
  unsigned char resident = 0;
  return ::mincore(start, static_cast<std::size_t>(page), &resident) == 0 || errno != ENOMEM;
}

TEST(HugePageMemory, LargeBlocksAreAlignedHoldTheirBytesAndAreUnmapped) {
  HugePageMemoryResource resource;
  const std::size_t bytes = 5 * (std::size_t{1} << 20) + 123;  // not a multiple of 2 MiB
  auto* p = static_cast<unsigned char*>(resource.allocate(bytes, 64));
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(p) % kHugePageBytes, 0u);
  for (std::size_t i = 0; i < bytes; ++i) p[i] = static_cast<unsigned char>(i * 131 + 7);
  for (std::size_t i = 0; i < bytes; i += 4093) ASSERT_EQ(p[i], static_cast<unsigned char>(i * 131 + 7)) << i;
  EXPECT_EQ(p[bytes - 1], static_cast<unsigned char>((bytes - 1) * 131 + 7));
  // The block is rounded up to 6 MiB: its last byte is mapped, and nothing after it is ours.
  EXPECT_TRUE(Mapped(p + 3 * kHugePageBytes - 1));
  resource.deallocate(p, bytes, 64);
  EXPECT_FALSE(Mapped(p));
  EXPECT_FALSE(Mapped(p + 3 * kHugePageBytes - 1));
}

TEST(HugePageMemory, SmallBlocksComeFromTheHeap) {
  HugePageMemoryResource resource;
  auto* p = static_cast<char*>(resource.allocate(100, alignof(std::max_align_t)));
  std::memset(p, 0x5a, 100);
  EXPECT_EQ(p[99], 0x5a);
  resource.deallocate(p, 100, alignof(std::max_align_t));
}

TEST(HugePageMemory, PmrVectorGrowingThroughAMonotonicResourceKeepsItsElements) {
  HugePageMemoryResource huge;
  std::pmr::monotonic_buffer_resource memory(kHugePageBytes, &huge);
  std::vector<std::pmr::vector<std::uint64_t>> lists;
  for (int i = 0; i < 3; ++i) lists.emplace_back(&memory);
  const std::uint64_t n = 1'000'000;  // 8 MB per list: grows across several monotonic blocks
  for (std::uint64_t i = 0; i < n; ++i) {
    for (std::size_t l = 0; l < lists.size(); ++l) lists[l].push_back(i * 3 + l);
  }
  for (std::size_t l = 0; l < lists.size(); ++l) {
    ASSERT_EQ(lists[l].size(), n);
    for (std::uint64_t i = 0; i < n; i += 997) ASSERT_EQ(lists[l][i], i * 3 + l);
    EXPECT_EQ(lists[l].back(), (n - 1) * 3 + l);
  }
}

// The planner's per-source lists are deques over such a resource: many small blocks carved from
// the huge-page buffers, none moved as the lists grow.
TEST(HugePageMemory, PmrDequeGrowingThroughAMonotonicResourceKeepsItsElements) {
  HugePageMemoryResource huge;
  std::pmr::monotonic_buffer_resource memory(kHugePageBytes, &huge);
  std::vector<std::pmr::deque<std::uint64_t>> lists;
  for (int i = 0; i < 3; ++i) lists.emplace_back(&memory);
  const std::uint64_t n = 1'000'000;
  for (std::uint64_t i = 0; i < n; ++i) {
    for (std::size_t l = 0; l < lists.size(); ++l) lists[l].push_back(i * 3 + l);
  }
  const std::uint64_t* first = &lists[0].front();
  lists[0].push_back(0);  // a deque never moves its elements on push_back
  EXPECT_EQ(first, &lists[0].front());
  for (std::size_t l = 0; l < lists.size(); ++l) {
    ASSERT_EQ(lists[l].size(), l == 0 ? n + 1 : n);
    for (std::uint64_t i = 0; i < n; i += 997) ASSERT_EQ(lists[l][i], i * 3 + l);
  }
}

TEST(HugePageMemory, AdviseHugePagesLeavesTheBytesAlone) {
  std::vector<std::uint32_t> v;
  v.reserve(3'000'000);  // 12 MB: several whole 2 MiB pages inside
  AdviseHugePages(v.data(), v.capacity() * sizeof(std::uint32_t));
  for (std::uint32_t i = 0; i < 3'000'000; ++i) v.push_back(i ^ 0x9e3779b9u);
  for (std::uint32_t i = 0; i < 3'000'000; i += 1009) ASSERT_EQ(v[i], i ^ 0x9e3779b9u);
  AdviseHugePages(v.data(), 100);  // no whole aligned page inside: nothing to do, no crash
  AdviseHugePages(nullptr, 0);
}

}  // namespace
}  // namespace shardwire
