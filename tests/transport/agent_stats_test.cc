// Issue 10 item 1: which path a post's bytes take and which pages PrepareTransfer
// pre-faults, as counted by Agent::Stats. The page helpers (AppendRowPages,
// MergePageRanges) are checked against a byte walk; the agent's counters against
// page sets and byte counts computed here from the descriptors. Counted, not
// timed: the time a shadow-paging hypervisor spends per page (the cause of the RL
// demo's slow step 1, docs/transport.md "Pre-faulting") is invisible to the guest,
// so what is asserted is that every page a lane will write was accessed at
// PrepareTransfer, and no other.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <set>
#include <vector>

#include "shardwire/agent.h"
#include "transport/prefault.h"
#include "transport/strided_rows.h"
#include "transport/transport_test_util.h"

namespace shardwire {
namespace {

using testing::FillPattern;
using testing::FirstMismatch;
using transport::AppendRowPages;
using transport::MergePageRanges;
using transport::PageRange;

std::uintptr_t PageSize() { return static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE)); }

// Page numbers the rows touch, by visiting every byte.
std::set<std::uintptr_t> PagesByByteWalk(std::uintptr_t addr, std::uint64_t count, std::uint64_t length,
                                         std::uint64_t stride, std::uintptr_t page) {
  std::set<std::uintptr_t> out;
  for (std::uint64_t r = 0; r < count; ++r)
    for (std::uint64_t k = 0; k < length; ++k) out.insert((addr + r * stride + k) / page);
  return out;
}

std::set<std::uintptr_t> PagesOf(const std::vector<PageRange>& ranges, std::uintptr_t page) {
  std::set<std::uintptr_t> out;
  for (const PageRange& r : ranges) {
    EXPECT_EQ(r.begin % page, 0u);
    EXPECT_EQ(r.end % page, 0u);
    for (std::uintptr_t a = r.begin; a < r.end; a += page) out.insert(a / page);
  }
  return out;
}

TEST(PagePrefault, AppendRowPagesCoversExactlyThePagesTheRowsTouch) {
  const std::uintptr_t page = 4096;
  std::vector<PageRange> got;
  // Dense rows (gap < page): one range over the span.
  AppendRowPages(100, 10, 3000, 4000, page, got);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0], (PageRange{0, 40960}));  // last row ends at 100 + 9 * 4000 + 3000 = 39100
  // Sparse rows (gap >= page): one range per row, the gaps' pages left out.
  got.clear();
  AppendRowPages(4096, 3, 100, 3 * 4096, page, got);
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[1], (PageRange{4 * 4096, 5 * 4096}));
  // Nothing for 0 bytes.
  got.clear();
  AppendRowPages(5, 0, 10, 10, page, got);
  AppendRowPages(5, 10, 0, 10, page, got);
  EXPECT_TRUE(got.empty());

  std::mt19937_64 rng(7);
  for (int trial = 0; trial < 300; ++trial) {
    const std::uintptr_t addr = rng() % 20000;
    const std::uint64_t length = 1 + rng() % 9000, count = rng() % 12;
    const std::uint64_t stride = length + (rng() % 2 == 0 ? rng() % 300 : rng() % 20000);
    got.clear();
    AppendRowPages(addr, count, length, stride, page, got);
    EXPECT_EQ(PagesOf(got, page), PagesByByteWalk(addr, count, length, stride, page))
        << "addr " << addr << " count " << count << " length " << length << " stride " << stride;
  }
}

TEST(PagePrefault, MergePageRangesSortsAndJoinsOverlappingAndAdjacent) {
  std::vector<PageRange> r{{8, 12}, {0, 4}, {4, 6}, {20, 24}, {10, 16}, {22, 23}};
  MergePageRanges(r);
  EXPECT_EQ(r, (std::vector<PageRange>{{0, 6}, {8, 16}, {20, 24}}));
  std::vector<PageRange> none;
  MergePageRanges(none);
  EXPECT_TRUE(none.empty());
}

TEST(PagePrefault, AutoAccessesEveryPage) {
  // kAuto must access every page: madvise alone does not build a shadow-paging
  // hypervisor's entries (the slow step 1 of issue 10).
  const std::size_t page = PageSize();
  const std::size_t bytes = 64 * page;
  std::vector<std::byte> buf(bytes + page);
  FillPattern(buf, 9);
  const transport::PrefaultResult a = transport::PrefaultForWrite(buf.data() + page, bytes);
  EXPECT_GE(a.touched_pages, bytes / page);
  EXPECT_LE(a.touched_pages, bytes / page + 1);  // the start may not be page aligned
  EXPECT_FALSE(a.madvise_ok) << "kAuto does not call madvise (see transport/prefault.h)";
  const transport::PrefaultResult m =
      transport::PrefaultForWrite(buf.data() + page, bytes, transport::PrefaultMethod::kMadvise);
  EXPECT_EQ(m.touched_pages, 0u);
  EXPECT_FALSE(FirstMismatch(buf, 9).has_value()) << "pre-faulting changed a byte";
}

// Two agents in this process; the target's region is an arena (mapped here:
// direct copies) or caller-registered memory (not mapped: UCX requests).
struct Pair {
  std::unique_ptr<Agent> writer, target;
  RegionId src = 0, dst = 0;
  std::vector<std::byte> owned;
};

Pair MakePair(std::uint32_t lanes, bool arena_target, std::size_t bytes) {
  Pair p;
  // kPut: these tests count UCX's requests into unmapped (caller-registered) memory, which
  // kAuto would write by kernel copy on this host (kernel_copy_write_test.cc covers that).
  auto w = Agent::Create({.name = "writer", .lanes = lanes, .write_path = WritePath::kPut});
  auto t = Agent::Create({.name = "target", .lanes = lanes});
  EXPECT_TRUE(w.ok() && t.ok());
  if (!w.ok() || !t.ok()) return p;
  p.writer = std::move(w).value();
  p.target = std::move(t).value();
  auto src = p.writer->AllocateArena(bytes);
  EXPECT_TRUE(src.ok());
  p.src = *src;
  FillPattern(p.writer->RegionBytes(p.src), 3);
  if (arena_target) {
    auto dst = p.target->AllocateArena(bytes);
    EXPECT_TRUE(dst.ok());
    p.dst = *dst;
    std::memset(p.target->RegionBytes(p.dst).data(), 0, bytes);
  } else {
    p.owned.assign(bytes, std::byte{0});
    auto dst = p.target->RegisterMemory(p.owned.data(), bytes);
    EXPECT_TRUE(dst.ok());
    p.dst = *dst;
  }
  auto mw = p.writer->ExportMetadata();
  auto mt = p.target->ExportMetadata();
  EXPECT_TRUE(p.target->ImportMetadata(*mw).ok());
  EXPECT_TRUE(p.writer->ImportMetadata(*mt).ok());
  return p;
}

// Remote pages (relative page numbers of the target region) the descriptors write.
std::set<std::uint64_t> RemotePages(const std::vector<TransferDescriptor>& ds) {
  std::set<std::uint64_t> out;
  for (const TransferDescriptor& d : ds)
    for (std::uintptr_t p : PagesByByteWalk(d.remote_offset, d.count, d.length, d.remote_stride, PageSize()))
      out.insert(p);
  return out;
}

TEST(AgentStats, OneLanePrefaultsExactlyThePagesItWillWriteAndCopiesDirectly) {
  const std::size_t page = PageSize();
  const std::size_t bytes = 512 * page;
  Pair p = MakePair(1, /*arena_target=*/true, bytes);
  ASSERT_TRUE(p.writer && p.target);
  // Sparse rows (100 bytes every 5 pages), a contiguous range, and rows that
  // straddle page boundaries: 3 different page patterns, none covering the region.
  const std::vector<TransferDescriptor> ds{
      {p.src, 0, p.dst, 10, 100, 20, 5 * page, 5 * page},
      {p.src, 300 * page, p.dst, 300 * page + 17, 8 * page, 1, 0, 0},
      {p.src, 400 * page, p.dst, 400 * page + page - 50, 100, 10, 3 * page, 2 * page},
  };
  const AgentStats s0 = p.writer->Stats();
  auto h = p.writer->PrepareTransfer(TransferOp::kWrite, "target", ds, std::nullopt);
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  const AgentStats s1 = p.writer->Stats();
  EXPECT_EQ(s1.prefaulted_pages - s0.prefaulted_pages, RemotePages(ds).size());
  EXPECT_GT(s1.prefault_s, s0.prefault_s);
  std::uint64_t total = 0;
  for (const auto& d : ds) total += d.bytes();
  for (int post = 0; post < 2; ++post) {
    ASSERT_TRUE(p.writer->Post(*h).ok());
    ASSERT_TRUE(p.writer->Wait(*h, 30).ok());
  }
  const AgentStats s2 = p.writer->Stats();
  EXPECT_EQ(s2.posts - s1.posts, 2u);
  EXPECT_EQ(s2.direct_copy_bytes - s1.direct_copy_bytes, 2 * total);
  EXPECT_GT(s2.direct_copy_blocks, s1.direct_copy_blocks);
  EXPECT_EQ(s2.ucx_requests, s1.ucx_requests) << "an arena on this host must take the direct path";
  EXPECT_EQ(s2.prefaulted_pages, s1.prefaulted_pages) << "posts must not pre-fault again";
  // The bytes landed: every row of every descriptor, checked against the source pattern.
  const auto dst = p.target->RegionBytes(p.dst);
  for (std::size_t i = 0; i < ds.size(); ++i) {
    const TransferDescriptor& d = ds[i];
    for (std::uint64_t r = 0; r < d.count; ++r) {
      ASSERT_FALSE(FirstMismatch(dst.subspan(d.remote_offset + r * d.remote_stride, d.length), 3,
                                 d.local_offset + r * d.local_stride)
                       .has_value())
          << "descriptor " << i << " row " << r;
    }
  }
  EXPECT_TRUE(p.writer->Release(*h).ok());
}

TEST(AgentStats, TwoLanesPrefaultEachPageOfAContiguousWriteOnce) {
  const std::size_t page = PageSize();
  const std::size_t bytes = 8u << 20;  // 8 slices of 1 MiB: 4 per lane
  Pair p = MakePair(2, /*arena_target=*/true, bytes);
  ASSERT_TRUE(p.writer && p.target);
  const std::vector<TransferDescriptor> ds{{p.src, 0, p.dst, 0, bytes}};
  auto h = p.writer->PrepareTransfer(TransferOp::kWrite, "target", ds, std::nullopt);
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  // Each lane writes its own half through its own mapping: bytes / page in all,
  // not bytes / page per lane (the old whole-region pre-fault per lane).
  EXPECT_EQ(p.writer->Stats().prefaulted_pages, bytes / page);
  ASSERT_TRUE(p.writer->Post(*h).ok());
  ASSERT_TRUE(p.writer->Wait(*h, 30).ok());
  const AgentStats s = p.writer->Stats();
  EXPECT_EQ(s.direct_copy_bytes, bytes);
  // 8 MiB copied by the lanes: their copy time is counted, in wall and in CPU seconds (a
  // copy of 8 MiB cannot take no CPU time; nothing else runs in those batches).
  EXPECT_GT(s.direct_copy_cpu_s, 0.0);
  EXPECT_GT(s.direct_copy_s, 0.0);
  EXPECT_FALSE(FirstMismatch(p.target->RegionBytes(p.dst), 3).has_value());
  EXPECT_TRUE(p.writer->Release(*h).ok());
}

TEST(AgentStats, APostAboveHalfASliceIsDividedAmongTheLanesAndASmallerOneIsNot) {
  // Issue 10 item 3: PrepareTransfer keeps a transfer on one lane only up to
  // OneLaneMaxBytes (half of the default 1 MiB slice), so a batch of 64 x 16 KiB
  // (1 MiB, one slice per descriptor) is copied by both lanes and 64 x 4 KiB
  // (256 KiB) by one. Counted by AgentStats::lane_jobs (lanes per post).
  const std::size_t bytes = 2u << 20;
  Pair p = MakePair(2, /*arena_target=*/true, bytes);
  ASSERT_TRUE(p.writer && p.target);
  auto batch = [&](std::uint64_t each, std::uint64_t n) {
    std::vector<TransferDescriptor> ds;
    // Descriptors in reverse order of their offsets: distinct, not one contiguous run.
    for (std::uint64_t i = 0; i < n; ++i) ds.push_back({p.src, (n - 1 - i) * each, p.dst, (n - 1 - i) * each, each});
    return ds;
  };
  struct Case {
    std::uint64_t each, n, lanes;
  };
  for (const Case c : {Case{16u << 10, 64, 2}, Case{4u << 10, 64, 1}, Case{8u << 10, 64, 1}, Case{32u << 10, 64, 2}}) {
    std::memset(p.target->RegionBytes(p.dst).data(), 0, bytes);
    auto h = p.writer->PrepareTransfer(TransferOp::kWrite, "target", batch(c.each, c.n), std::nullopt);
    ASSERT_TRUE(h.ok()) << h.status().ToString();
    const AgentStats s0 = p.writer->Stats();
    ASSERT_TRUE(p.writer->Post(*h).ok());
    ASSERT_TRUE(p.writer->Wait(*h, 30).ok());
    const AgentStats s1 = p.writer->Stats();
    EXPECT_EQ(s1.posts - s0.posts, 1u);
    EXPECT_EQ(s1.lane_jobs - s0.lane_jobs, c.lanes) << c.n << " x " << c.each << " bytes";
    EXPECT_EQ(s1.direct_copy_bytes - s0.direct_copy_bytes, c.each * c.n);
    const auto dst = p.target->RegionBytes(p.dst);
    EXPECT_FALSE(FirstMismatch(dst.first(c.each * c.n), 3).has_value()) << c.n << " x " << c.each;
    EXPECT_TRUE(std::all_of(dst.begin() + static_cast<std::ptrdiff_t>(c.each * c.n), dst.end(), [](std::byte b) {
      return b == std::byte{0};
    })) << "bytes beyond the batch were written";
    EXPECT_TRUE(p.writer->Release(*h).ok());
  }
}

// A batch above half a slice whose writes overlap (64 x 16 KiB from distinct sources into one
// 16 KiB destination, as ucx_perftest reuses one buffer) stays on one lane: the writes land in
// descriptor order, so the destination holds the last descriptor's bytes (over two lanes either
// half's last could win, and both lanes wrote the same cache lines at once: 0.14x perftest's
// message rate). A READ whose local ranges overlap alike.
TEST(AgentStats, ABatchWhoseWritesOverlapStaysOnOneLaneAndLandsInDescriptorOrder) {
  const std::size_t bytes = 2u << 20;
  const std::uint64_t each = 16u << 10, n = 64;
  Pair p = MakePair(2, /*arena_target=*/true, bytes);
  ASSERT_TRUE(p.writer && p.target);
  for (TransferOp op : {TransferOp::kWrite, TransferOp::kRead}) {
    std::vector<TransferDescriptor> ds;
    // WRITE: source i*each -> destination 0. READ: the peer's i*each -> local 0 (the local
    // region is then refilled with its pattern for the next check).
    for (std::uint64_t i = 0; i < n; ++i) {
      ds.push_back(op == TransferOp::kWrite ? TransferDescriptor{p.src, i * each, p.dst, 0, each}
                                            : TransferDescriptor{p.src, 0, p.dst, i * each, each});
    }
    if (op == TransferOp::kWrite) {
      std::memset(p.target->RegionBytes(p.dst).data(), 0, bytes);
    } else {
      FillPattern(p.target->RegionBytes(p.dst), 5);
    }
    auto h = p.writer->PrepareTransfer(op, "target", ds, std::nullopt);
    ASSERT_TRUE(h.ok()) << h.status().ToString();
    const AgentStats s0 = p.writer->Stats();
    ASSERT_TRUE(p.writer->Post(*h).ok());
    ASSERT_TRUE(p.writer->Wait(*h, 30).ok());
    const AgentStats s1 = p.writer->Stats();
    EXPECT_EQ(s1.lane_jobs - s0.lane_jobs, 1u) << (op == TransferOp::kWrite ? "WRITE" : "READ");
    const auto landed = op == TransferOp::kWrite ? p.target->RegionBytes(p.dst) : p.writer->RegionBytes(p.src);
    const std::uint64_t seed = op == TransferOp::kWrite ? 3 : 5;
    EXPECT_FALSE(FirstMismatch(landed.first(each), seed, (n - 1) * each).has_value())
        << "the last descriptor's bytes must win (" << (op == TransferOp::kWrite ? "WRITE" : "READ") << ")";
    if (op == TransferOp::kWrite) {
      EXPECT_TRUE(std::all_of(landed.begin() + static_cast<std::ptrdiff_t>(each), landed.end(),
                              [](std::byte b) { return b == std::byte{0}; }));
    }
    EXPECT_TRUE(p.writer->Release(*h).ok());
  }
}

TEST(AgentStats, UnmappedTargetMemoryTakesOneUcxRequestPerRowAndNoPrefault) {
  const std::size_t bytes = 1u << 20;
  Pair p = MakePair(2, /*arena_target=*/false, bytes);
  ASSERT_TRUE(p.writer && p.target);
  // 40 rows of 1000 bytes (one block: fits a slice) + one contiguous 300 KB range.
  const std::vector<TransferDescriptor> ds{{p.src, 0, p.dst, 0, 1000, 40, 3000, 2000},
                                           {p.src, 500000, p.dst, 500000, 300000}};
  auto h = p.writer->PrepareTransfer(TransferOp::kWrite, "target", ds, std::nullopt);
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  EXPECT_EQ(p.writer->Stats().prefaulted_pages, 0u) << "caller-registered memory is not mapped here";
  ASSERT_TRUE(p.writer->Post(*h).ok());
  ASSERT_TRUE(p.writer->Wait(*h, 30).ok());
  const AgentStats s = p.writer->Stats();
  EXPECT_EQ(s.direct_copy_bytes, 0u);
  EXPECT_EQ(s.direct_copy_s, 0.0) << "no direct copies, no direct-copy time";
  EXPECT_EQ(s.direct_copy_cpu_s, 0.0);
  EXPECT_EQ(s.ucx_requests, 41u);
  EXPECT_EQ(s.ucx_bytes, 40u * 1000 + 300000);
  EXPECT_FALSE(FirstMismatch(std::span(p.owned).subspan(500000, 300000), 3, 500000).has_value());
  EXPECT_TRUE(p.writer->Release(*h).ok());
}

}  // namespace
}  // namespace shardwire
