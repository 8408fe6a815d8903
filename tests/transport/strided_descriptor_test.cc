// Strided descriptors ({count, local_stride, remote_stride, length}): the pure
// helpers (row checks, cutting into blocks, 2-D copy), in-process transfers over
// every execution path (mapped arena: 2-D memcpy; registered memory: one request
// per row; active messages: one message per row; READ), a multi-process WRITE,
// and the typed errors. Every transfer is checked byte for byte against an
// oracle that walks the rows itself (PatternByte of the source position).
#include <gtest/gtest.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <memory>
#include <random>
#include <string>

#include "die_with_test_process.h"
#include "shardwire/agent.h"
#include "transport/strided_rows.h"
#include "transport/transport_test_util.h"

namespace shardwire {
namespace {

using testing::FillPattern;
using testing::PatternByte;
using testing::PumpUntil;
using transport::CheckRows;
using transport::CopyRows;
using transport::CutIntoBlocks;
using transport::RowBlock;

constexpr std::byte kUntouched{0xEE};
constexpr std::size_t kRegion = 1 << 20;

// ---- pure helpers -----------------------------------------------------------

// Byte positions (local -> remote) a descriptor moves, by walking its rows.
std::map<std::uint64_t, std::uint64_t> RowBytes(std::uint64_t lo, std::uint64_t ls, std::uint64_t ro, std::uint64_t rs,
                                                std::uint64_t count, std::uint64_t length) {
  std::map<std::uint64_t, std::uint64_t> out;
  for (std::uint64_t r = 0; r < count; ++r)
    for (std::uint64_t k = 0; k < length; ++k) out[ro + r * rs + k] = lo + r * ls + k;
  return out;
}

TEST(StridedRows, CheckRowsAcceptsValidAndNamesEachError) {
  EXPECT_TRUE(CheckRows(0, 0, 1, 100, 100, "x").ok());      // count 1: stride ignored
  EXPECT_TRUE(CheckRows(0, 100, 10, 100, 1000, "x").ok());  // exactly fills the region
  EXPECT_TRUE(CheckRows(5, 0, 0, 100, 10, "x").ok());       // count 0 moves nothing
  EXPECT_TRUE(CheckRows(5, 0, 7, 0, 10, "x").ok());         // length 0 moves nothing
  EXPECT_TRUE(CheckRows(900, 0, 1, 100, 1000, "x").ok());   // last byte of the region
  auto bad = [](Status s, const std::string& needle) {
    EXPECT_EQ(s.code(), ErrorCode::kInvalidArgument) << s.ToString();
    EXPECT_NE(s.message().find(needle), std::string::npos) << s.ToString();
  };
  bad(CheckRows(0, 99, 2, 100, 1000, "side A"), "side A stride 99 is shorter than the row length 100");
  bad(CheckRows(0, 0, 2, 8, 1000, "side B"), "side B stride 0 is shorter");
  bad(CheckRows(0, 100, 11, 100, 1000, "side C"), "exceed the region of 1000 bytes");  // one row too many
  bad(CheckRows(901, 0, 1, 100, 1000, "side D"), "exceed the region");
  bad(CheckRows(UINT64_MAX, 0, 1, 2, 1000, "e"), "exceed the region");
  bad(CheckRows(0, UINT64_MAX, 2, 1, 1000, "f"), "exceed the region");  // (count-1)*stride would wrap
  bad(CheckRows(0, 1ull << 40, 1ull << 30, 1, 1000, "g"), "exceed the region");
  bad(CheckRows(0, 1ull << 33, 1ull << 33, 1ull << 33, UINT64_MAX, "h"), "overflow 64 bits");
}

TEST(StridedRows, CutIntoBlocksGroupsRowsPerSliceAndCoversEveryByteOnce) {
  std::vector<RowBlock> b;
  // 25 rows of 100 bytes, slice 1000: 10 + 10 + 5 rows, strides kept.
  CutIntoBlocks(
      {.local_offset = 7, .remote_offset = 9, .length = 100, .count = 25, .local_stride = 300, .remote_stride = 128},
      1000, false, b);
  ASSERT_EQ(b.size(), 3u);
  EXPECT_EQ(b[0], (RowBlock{7, 9, 100, 10, 300, 128}));
  EXPECT_EQ(b[1], (RowBlock{7 + 3000, 9 + 1280, 100, 10, 300, 128}));
  EXPECT_EQ(b[2], (RowBlock{7 + 6000, 9 + 2560, 100, 5, 300, 128}));
  // Rows longer than a slice: each row cut at slice boundaries.
  b.clear();
  CutIntoBlocks({.length = 2500, .count = 2, .local_stride = 3000, .remote_stride = 2500}, 1000, false, b);
  ASSERT_EQ(b.size(), 6u);
  EXPECT_EQ(b[3], (RowBlock{3000, 2500, 1000, 1, 0, 0}));
  EXPECT_EQ(b[5], (RowBlock{5000, 4500, 500, 1, 0, 0}));
  // Rows that are contiguous on both sides form one range, cut at slice boundaries.
  b.clear();
  CutIntoBlocks({.length = 100, .count = 10, .local_stride = 100, .remote_stride = 100}, 256, false, b);
  ASSERT_EQ(b.size(), 4u);
  EXPECT_EQ(b[3], (RowBlock{768, 768, 232, 1, 0, 0}));
  // One row per block when asked (active-message writes).
  b.clear();
  CutIntoBlocks({.length = 10, .count = 4, .local_stride = 10, .remote_stride = 20}, 1 << 20, true, b);
  ASSERT_EQ(b.size(), 4u);
  EXPECT_EQ(b[2], (RowBlock{20, 40, 10, 1, 0, 0}));
  // Nothing for count 0 or length 0.
  b.clear();
  CutIntoBlocks({.length = 10, .count = 0}, 100, false, b);
  CutIntoBlocks({.length = 0, .count = 10, .local_stride = 1, .remote_stride = 1}, 100, false, b);
  EXPECT_TRUE(b.empty());

  // Randomised: the blocks move exactly the descriptor's bytes, each once, and
  // no block exceeds the slice.
  std::mt19937_64 rng(42);
  for (int trial = 0; trial < 200; ++trial) {
    const std::uint64_t length = 1 + rng() % 64, count = rng() % 20;
    TransferDescriptor d{.local_offset = rng() % 50,
                         .remote_offset = rng() % 50,
                         .length = length,
                         .count = count,
                         .local_stride = length + rng() % 3 * (rng() % 40),
                         .remote_stride = length + rng() % 30};
    const bool one_row = rng() % 4 == 0;
    const std::uint64_t slice = 1 + rng() % 200;
    b.clear();
    CutIntoBlocks(d, slice, one_row, b);
    std::map<std::uint64_t, std::uint64_t> got;
    for (const RowBlock& x : b) {
      EXPECT_LE(x.bytes(), std::max(slice, x.length));
      EXPECT_TRUE(x.count == 1 || x.length <= slice);
      if (one_row) {
        EXPECT_EQ(x.count, 1u);
      }
      for (auto [r, l] : RowBytes(x.local_offset, x.local_stride, x.remote_offset, x.remote_stride, x.count, x.length))
        EXPECT_TRUE(got.emplace(r, l).second) << "remote byte " << r << " moved twice";
    }
    EXPECT_EQ(got, RowBytes(d.local_offset, d.local_stride, d.remote_offset, d.remote_stride, d.count, d.length))
        << "trial " << trial;
  }
}

TEST(StridedRows, CopyRowsMatchesARowWalk) {
  std::vector<std::byte> src(4000), dst(4000, kUntouched);
  FillPattern(src, 3);
  CopyRows(dst.data() + 5, 50, src.data() + 1, 70, 40, 33);
  const auto expect = RowBytes(1, 70, 5, 50, 40, 33);
  for (std::size_t k = 0; k < dst.size(); ++k) {
    auto it = expect.find(k);
    ASSERT_EQ(dst[k], it == expect.end() ? kUntouched : PatternByte(3, it->second)) << "byte " << k;
  }
}

// CopyRowsStreaming: the same bytes as a byte-by-byte row walk for every destination
// alignment (the unaligned head and tail of a row are plain stores, the middle streaming
// stores), rows just below and above kMinStreamingRowBytes, copies just below and above
// kMinStreamingCopyBytes in all, contiguous rows (one long row) and strided ones; bytes
// outside the rows are untouched.
TEST(StridedRows, CopyRowsStreamingMatchesARowWalkAtEveryAlignment) {
  using transport::CopyRowsStreaming;
  using transport::kMinStreamingCopyBytes;
  using transport::kMinStreamingRowBytes;
  struct Shape {
    std::uint64_t count, length, src_stride, dst_stride;
  };
  constexpr std::uint64_t kBig = kMinStreamingCopyBytes;
  const std::vector<Shape> shapes = {{1, 7, 7, 7},
                                     {1, kBig - 1, 0, 0},
                                     {1, kBig, 0, 0},
                                     {1, kBig + 4096 + 13, 0, 0},
                                     {5, kBig / 5 + 333, kBig / 5 + 333, kBig / 5 + 333},  // contiguous
                                     {kBig / 300 + 9, 300, 517, 301},
                                     {kBig / 591 + 17, 64 * 9 + 15, 1200, 64 * 9 + 15},
                                     {kBig / 253 + 3, kMinStreamingRowBytes - 3, 400, 260},
                                     {9, 300, 517, 301}};  // small in all: CopyRows
  for (const Shape& sh : shapes) {
    for (std::uint64_t src_off = 0; src_off < 3; ++src_off) {
      for (std::uint64_t dst_off = 0; dst_off < 18; ++dst_off) {
        const std::uint64_t ds = sh.count == 1 ? sh.length : sh.dst_stride;
        const std::uint64_t ss = sh.count == 1 ? sh.length : sh.src_stride;
        const std::uint64_t span = (sh.count - 1) * std::max(ss, ds) + sh.length + 64;
        std::vector<std::byte> src(span + 32), dst(span + 32, kUntouched);
        FillPattern(src, 11);
        std::vector<std::byte> expect = dst;
        for (std::uint64_t r = 0; r < sh.count; ++r) {
          for (std::uint64_t k = 0; k < sh.length; ++k) expect[dst_off + r * ds + k] = src[src_off + r * ss + k];
        }
        CopyRowsStreaming(dst.data() + dst_off, sh.dst_stride, src.data() + src_off, sh.src_stride, sh.count,
                          sh.length);
        const auto diff = std::mismatch(dst.begin(), dst.end(), expect.begin());
        ASSERT_TRUE(diff.first == dst.end()) << "byte " << (diff.first - dst.begin()) << " rows " << sh.count << "x"
                                             << sh.length << " src+" << src_off << " dst+" << dst_off;
      }
    }
  }
}

// ---- agents -----------------------------------------------------------------

enum class Mem { kArena, kRegistered };

struct Params {
  Mem mem;
  WritePath path;
  TransferOp op;
};

std::string ParamName(const Params& p) {
  return std::string(p.op == TransferOp::kWrite ? "write_" : "read_") +
         (p.mem == Mem::kArena ? "arena" : "registered") + (p.path == WritePath::kActiveMessage ? "_am" : "_put");
}

struct Side {
  std::unique_ptr<Agent> agent;
  std::vector<std::byte> owned;
  RegionId region = 0;
  std::span<std::byte> bytes() const { return agent->RegionBytes(region); }
};

// Small slices (4 KiB) so that blocks, rows longer than a slice and both lanes
// are all exercised by a 1 MiB region.
Side MakeSide(const std::string& name, Mem mem, WritePath path) {
  Side s;
  auto a = Agent::Create({.name = name, .lanes = 2, .slice_bytes = 4096, .write_path = path});
  EXPECT_TRUE(a.ok()) << a.status().ToString();
  if (!a.ok()) return s;
  s.agent = std::move(a).value();
  Result<RegionId> r = InvalidArgument("unset");
  if (mem == Mem::kArena) {
    r = s.agent->AllocateArena(kRegion);
  } else {
    s.owned.resize(kRegion);
    r = s.agent->RegisterMemory(s.owned.data(), kRegion);
  }
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  if (r.ok()) s.region = *r;
  return s;
}

void Connect(Side& a, Side& b) {
  auto ma = a.agent->ExportMetadata();
  auto mb = b.agent->ExportMetadata();
  ASSERT_TRUE(ma.ok() && mb.ok());
  ASSERT_TRUE(b.agent->ImportMetadata(*ma).ok());
  ASSERT_TRUE(a.agent->ImportMetadata(*mb).ok());
}

// Strided descriptors of every shape, target rows disjoint: contiguous (count 1),
// source stride > target stride, strides equal to the length (one range), rows
// longer than a slice, a row-parallel shard (2 KiB rows of 4 KiB source rows),
// rows ending exactly at the region's end, and two that move nothing.
std::vector<TransferDescriptor> ShapedDescs(RegionId local, RegionId remote) {
  auto d = [&](std::uint64_t lo, std::uint64_t ro, std::uint64_t len, std::uint64_t count, std::uint64_t ls,
               std::uint64_t rs) { return TransferDescriptor{local, lo, remote, ro, len, count, ls, rs}; };
  return {
      d(3, 7, 5000, 1, 0, 0),
      d(10000, 200000, 100, 500, 300, 128),
      d(160000, 300000, 64, 1000, 64, 64),
      d(230000, 400000, 10000, 5, 12000, 10001),
      d(300000, 500000, 2048, 160, 4096, 2048),
      d(960000, kRegion - (9 * 1000 + 50), 50, 10, 500, 1000),
      d(0, 0, 100, 0, 0, 0),
      d(0, 0, 0, 10, 0, 0),
  };
}

// The oracle: the destination (remote for WRITE, local for READ) holds, in every
// row of every descriptor, the pattern of the matching source position, and
// kUntouched everywhere else.
void ExpectRowsMoved(std::span<const std::byte> dst, const std::vector<TransferDescriptor>& descs, TransferOp op,
                     std::uint64_t seed) {
  std::vector<std::int64_t> expect(dst.size(), -1);  // destination byte -> source byte (-1: untouched)
  for (const auto& d : descs) {
    const std::uint64_t ds = op == TransferOp::kWrite ? d.remote_stride : d.local_stride;
    const std::uint64_t ss = op == TransferOp::kWrite ? d.local_stride : d.remote_stride;
    const std::uint64_t d0 = op == TransferOp::kWrite ? d.remote_offset : d.local_offset;
    const std::uint64_t s0 = op == TransferOp::kWrite ? d.local_offset : d.remote_offset;
    for (std::uint64_t r = 0; r < d.count; ++r)
      for (std::uint64_t k = 0; k < d.length; ++k)
        expect.at(d0 + r * ds + k) = static_cast<std::int64_t>(s0 + r * ss + k);
  }
  std::size_t wrong = 0;
  for (std::size_t k = 0; k < dst.size(); ++k) {
    const std::byte want = expect[k] < 0 ? kUntouched : PatternByte(seed, static_cast<std::uint64_t>(expect[k]));
    if (dst[k] != want && wrong++ < 5) ADD_FAILURE() << "destination byte " << k << " is wrong";
  }
  EXPECT_EQ(wrong, 0u);
}

class Strided : public ::testing::TestWithParam<Params> {};

TEST_P(Strided, EveryShapeIsByteExactOverThreePosts) {
  const Params p = GetParam();
  Side a = MakeSide("initiator", p.mem, p.path);
  Side b = MakeSide("target", p.mem, p.path);
  ASSERT_TRUE(a.agent && b.agent);
  Connect(a, b);
  const auto descs = ShapedDescs(a.region, b.region);
  Side& src = p.op == TransferOp::kWrite ? a : b;
  Side& dst = p.op == TransferOp::kWrite ? b : a;
  auto h = a.agent->PrepareTransfer(p.op, "target", descs, std::nullopt);
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  for (std::uint64_t step = 1; step <= 3; ++step) {
    FillPattern(src.bytes(), 100 + step);
    std::fill(dst.bytes().begin(), dst.bytes().end(), kUntouched);
    ASSERT_TRUE(a.agent->Post(*h).ok());
    Status result = TimedOut("not complete in 20 s");
    PumpUntil(*a.agent, *b.agent, [&] {
      auto t = a.agent->Test(*h);
      if (!t.ok()) result = t.status();
      if (t.ok() && *t) result = Status::Ok();
      return !t.ok() || *t;
    });
    ASSERT_TRUE(result.ok()) << "step " << step << ": " << result.ToString();
    ExpectRowsMoved(dst.bytes(), descs, p.op, 100 + step);
  }
  EXPECT_TRUE(a.agent->Release(*h).ok());
}

INSTANTIATE_TEST_SUITE_P(Paths, Strided,
                         ::testing::Values(Params{Mem::kArena, WritePath::kAuto, TransferOp::kWrite},
                                           Params{Mem::kRegistered, WritePath::kAuto, TransferOp::kWrite},
                                           Params{Mem::kArena, WritePath::kActiveMessage, TransferOp::kWrite},
                                           Params{Mem::kRegistered, WritePath::kActiveMessage, TransferOp::kWrite},
                                           Params{Mem::kArena, WritePath::kAuto, TransferOp::kRead},
                                           Params{Mem::kRegistered, WritePath::kAuto, TransferOp::kRead}),
                         [](const auto& param_info) { return ParamName(param_info.param); });

TEST(StridedErrors, BadGeometryIsTypedNamesTheDescriptorAndPreparesNothing) {
  Side a = MakeSide("initiator", Mem::kArena, WritePath::kAuto);
  Side b = MakeSide("target", Mem::kArena, WritePath::kAuto);
  ASSERT_TRUE(a.agent && b.agent);
  Connect(a, b);
  std::fill(b.bytes().begin(), b.bytes().end(), kUntouched);
  FillPattern(a.bytes(), 9);
  const TransferDescriptor good{a.region, 0, b.region, 0, 100, 10, 200, 100};
  auto expect_bad = [&](TransferDescriptor bad, const std::string& needle) {
    auto h = a.agent->PrepareTransfer(TransferOp::kWrite, "target", {good, good, bad}, std::nullopt);
    ASSERT_FALSE(h.ok());
    EXPECT_EQ(h.status().code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(h.status().message().find("descriptor 2"), std::string::npos) << h.status().ToString();
    EXPECT_NE(h.status().message().find(needle), std::string::npos) << h.status().ToString();
  };
  auto with = [&](auto f) {
    TransferDescriptor d = good;
    f(d);
    return d;
  };
  expect_bad(with([](auto& d) { d.remote_stride = 99; }), "remote region");              // rows would overlap
  expect_bad(with([](auto& d) { d.local_stride = 50; }), "local region");                // shorter than the row
  expect_bad(with([](auto& d) { d.remote_stride = 0; }), "stride 0 is shorter");         // zero stride
  expect_bad(with([](auto& d) { d.count = 1ull << 40; }), "exceed the region");          // bounds
  expect_bad(with([](auto& d) { d.remote_stride = UINT64_MAX; }), "exceed the region");  // would wrap
  expect_bad(with([](auto& d) { d.remote_offset = kRegion - 9 * 100 - 99; }), "exceed the region");  // 1 byte over
  expect_bad(with([](auto& d) {
               d.length = 1ull << 33;
               d.count = 1ull << 33;
               d.local_stride = d.remote_stride = 1ull << 33;
             }),
             "overflow 64 bits");
  // Nothing was prepared: no pin, nothing written.
  EXPECT_FALSE(testing::FirstNotEqual(b.bytes(), kUntouched).has_value());
  // Exactly at the end is fine; count 1 ignores a zero stride.
  auto ok = a.agent->PrepareTransfer(
      TransferOp::kWrite, "target",
      {with([](auto& d) { d.remote_offset = kRegion - 9 * 100 - 100; }), {a.region, 0, b.region, 0, 64, 1, 0, 0}},
      std::nullopt);
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_TRUE(a.agent->Release(*ok).ok());
  EXPECT_TRUE(a.agent->Deregister(a.region).ok());  // no pin left behind by the failed prepares
}

// ---- two processes ----------------------------------------------------------

constexpr double kTimeoutS = 60;

std::string Handshake(Agent& a, int fd) {
  auto mine = a.ExportMetadata();
  if (!mine.ok() || !testing::SendFrame(fd, *mine)) return "";
  auto theirs = testing::RecvFrame(fd, kTimeoutS);
  if (!theirs) return "";
  auto name = a.ImportMetadata(*theirs);
  return name.ok() ? *name : "";
}

// A row-parallel shard split over two engine ranks: each source row of 8 KiB
// goes half to rank 0 (this child's first half) and half to rank 1 (second half).
std::vector<TransferDescriptor> RowParallelDescs(RegionId local, RegionId remote) {
  const std::uint64_t rows = 60, row = 8192, half = row / 2;
  return {{local, 0, remote, 0, half, rows, row, half},
          {local, half, remote, rows * half, half, rows, row, half},
          {local, rows * row + 1, remote, 2 * rows * half + 3, 777, 1, 0, 0}};
}

int StridedTargetChild(int fd, Mem mem) {
  auto agent = Agent::Create({.name = "child"});
  if (!agent.ok()) return 10;
  Agent& a = **agent;
  std::vector<std::byte> owned(kRegion);
  auto region = mem == Mem::kArena ? a.AllocateArena(kRegion) : a.RegisterMemory(owned.data(), kRegion);
  if (!region.ok()) return 11;
  std::fill(a.RegionBytes(*region).begin(), a.RegionBytes(*region).end(), kUntouched);
  if (Handshake(a, fd) != "parent") return 12;
  const auto descs = RowParallelDescs(1, *region);
  for (std::uint64_t step = 1; step <= 2; ++step) {
    auto n = a.WaitNotification(kTimeoutS);
    if (!n.ok()) return 14;
    ExpectRowsMoved(a.RegionBytes(*region), descs, TransferOp::kWrite, 500 + step);
    if (::testing::Test::HasFailure()) return 2;
    if (!a.SendMessage("parent", {}).ok()) return 16;
  }
  (void)a.WaitNotification(0.2);
  return 0;
}

class StridedMultiProcess : public ::testing::TestWithParam<Mem> {};

TEST_P(StridedMultiProcess, RowParallelShardIsByteExactInTheTargetProcess) {
  int fds[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
  const Mem mem = GetParam();
  const pid_t test_pid = ::getpid();
  const pid_t pid = ::fork();
  if (pid == 0) {
    shardwire::testing_util::DieWithTestProcess(test_pid);
    ::close(fds[0]);
    ::_exit(StridedTargetChild(fds[1], mem));
  }
  ::close(fds[1]);
  ASSERT_GT(pid, 0);
  const int fd = fds[0];
  {
    auto agent = Agent::Create({.name = "parent"});
    ASSERT_TRUE(agent.ok()) << agent.status().ToString();
    Agent& a = **agent;
    std::vector<std::byte> owned(kRegion);
    auto region = mem == Mem::kArena ? a.AllocateArena(kRegion) : a.RegisterMemory(owned.data(), kRegion);
    ASSERT_TRUE(region.ok()) << region.status().ToString();
    ASSERT_EQ(Handshake(a, fd), "child");
    const auto descs = RowParallelDescs(*region, 1);
    auto h = a.PrepareTransfer(TransferOp::kWrite, "child", descs, std::vector<std::byte>{std::byte{1}});
    ASSERT_TRUE(h.ok()) << h.status().ToString();
    for (std::uint64_t step = 1; step <= 2; ++step) {
      FillPattern(a.RegionBytes(*region), 500 + step);
      ASSERT_TRUE(a.Post(*h).ok());
      ASSERT_TRUE(a.Wait(*h, kTimeoutS).ok());
      ASSERT_TRUE(a.WaitNotification(kTimeoutS).ok()) << "no acknowledgement for step " << step;
    }
    EXPECT_TRUE(a.Release(*h).ok());
  }
  auto status = testing::WaitPidFor(pid, kTimeoutS);
  ::close(fd);
  ASSERT_TRUE(status.has_value()) << "child did not exit in time";
  ASSERT_TRUE(WIFEXITED(*status));
  EXPECT_EQ(WEXITSTATUS(*status), 0) << "child reported failure (2 = byte mismatch)";
}

INSTANTIATE_TEST_SUITE_P(Memory, StridedMultiProcess, ::testing::Values(Mem::kArena, Mem::kRegistered),
                         [](const auto& param_info) {
                           return std::string(param_info.param == Mem::kArena ? "arena" : "registered");
                         });

}  // namespace
}  // namespace shardwire
