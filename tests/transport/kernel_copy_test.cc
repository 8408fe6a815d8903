// Kernel copies (process_vm_readv, src/transport/kernel_copy.h) and private
// huge-page arenas (src/transport/private_arena.h), and the Agent's READ path
// that combines them (ReadPath): real child processes, real UCX; every byte is
// checked against PatternByte, computed independently of any buffer.
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>

#include <gtest/gtest.h>

#include "die_with_test_process.h"
#include "pattern_child.h"
#include "shardwire/agent.h"
#include "transport/kernel_copy.h"
#include "transport/private_arena.h"
#include "transport_test_util.h"

namespace shardwire {
namespace {

using testing::FillPattern;
using testing::FirstMismatch;
using testing::PatternByte;
using testing::RecvFrame;
using testing::SendFrame;
using testing::WaitPidFor;

constexpr std::uint64_t kSeed = 77;
using testing::PatternChild;
constexpr std::size_t kChildBytes = PatternChild::kBytes;

// ReadBatch: several copies of different shapes in shared system calls (one flush inside, as
// the rows pass IOV_MAX), each checked against PatternByte; bytes between rows keep their sentinel.
TEST(KernelCopy, ReadBatchOfManyCopiesMatchesThePattern) {
  PatternChild child = PatternChild::Start(kSeed);
  ASSERT_GT(child.pid, 0);
  auto peer = transport::PeerProcess::Open(child.pid, child.addr);
  ASSERT_TRUE(peer.ok()) << peer.status().ToString();
  struct Shape {
    std::uint64_t at, remote_stride, local_stride, count, length;
  };
  const std::vector<Shape> shapes = {{4099, 65536, 65536, 1, 65536},      {1u << 20, 65536, 65536, 16, 65536},
                                     {3u << 20, 56, 24, 900, 24},          {5u << 20, 300, 128, 500, 100},
                                     {6u << 20, 4096, 4096, 1, 4096}};
  std::vector<std::vector<std::byte>> outs;
  std::vector<transport::RowCopy> batch;
  for (const Shape& sh : shapes) outs.emplace_back(sh.count * sh.local_stride, std::byte{0xEE});
  for (std::size_t i = 0; i < shapes.size(); ++i) {
    const Shape& sh = shapes[i];
    batch.push_back({outs[i].data(), sh.local_stride, child.addr + sh.at, sh.remote_stride, sh.count, sh.length});
  }
  ASSERT_TRUE(peer->ReadBatch(batch).ok());
  for (std::size_t i = 0; i < shapes.size(); ++i) {
    const Shape& sh = shapes[i];
    for (std::uint64_t r = 0; r < sh.count; ++r) {
      for (std::uint64_t k = 0; k < sh.local_stride; ++k) {
        const std::byte want = k < sh.length ? PatternByte(kSeed, sh.at + r * sh.remote_stride + k) : std::byte{0xEE};
        ASSERT_EQ(outs[i][r * sh.local_stride + k], want) << "copy " << i << " row " << r << " byte " << k;
      }
    }
  }
}

TEST(KernelCopy, ReadsContiguousAndStridedRowsFromAChildProcess) {
  PatternChild child = PatternChild::Start(kSeed);
  ASSERT_GT(child.pid, 0);
  ASSERT_NE(child.addr, 0u);
  auto peer = transport::PeerProcess::Open(child.pid, child.addr);
  ASSERT_TRUE(peer.ok()) << peer.status().ToString();
  EXPECT_FALSE(peer->Exited());

  // Contiguous, 3 MiB + 5 bytes from offset 4099.
  std::vector<std::byte> out((3u << 20) + 5);
  ASSERT_TRUE(peer->ReadRows(out.data(), out.size(), child.addr + 4099, out.size(), 1, out.size()).ok());
  EXPECT_EQ(FirstMismatch(out, kSeed, 4099), std::nullopt);

  // 3000 rows (more than IOV_MAX) of 24 bytes, 56 apart at the child, packed 24
  // apart here (a row-parallel shard's rows: strided source, contiguous target).
  const std::uint64_t rows = 3000, len = 24, src_stride = 56, first = 1000;
  std::vector<std::byte> packed(rows * len, std::byte{0});
  ASSERT_TRUE(peer->ReadRows(packed.data(), len, child.addr + first, src_stride, rows, len).ok());
  for (std::uint64_t r = 0; r < rows; ++r) {
    for (std::uint64_t k = 0; k < len; ++k) {
      ASSERT_EQ(packed[r * len + k], PatternByte(kSeed, first + r * src_stride + k)) << "row " << r << " byte " << k;
    }
  }

  // Strided on both sides: 1500 rows of 100 bytes, 300 apart there, 128 apart
  // here; the gaps here keep their sentinel.
  const std::uint64_t r2 = 1500, l2 = 100, s2 = 300, d2 = 128;
  std::vector<std::byte> sparse(r2 * d2, std::byte{0xA5});
  ASSERT_TRUE(peer->ReadRows(sparse.data(), d2, child.addr, s2, r2, l2).ok());
  for (std::uint64_t r = 0; r < r2; ++r) {
    for (std::uint64_t k = 0; k < d2; ++k) {
      const std::byte want = k < l2 ? PatternByte(kSeed, r * s2 + k) : std::byte{0xA5};
      ASSERT_EQ(sparse[r * d2 + k], want) << "row " << r << " byte " << k;
    }
  }
}

TEST(KernelCopy, UnmappedRemoteRangeIsATransportError) {
  PatternChild child = PatternChild::Start(kSeed);
  ASSERT_GT(child.pid, 0);
  auto peer = transport::PeerProcess::Open(child.pid, child.addr);
  ASSERT_TRUE(peer.ok()) << peer.status().ToString();
  std::vector<std::byte> out(4096);
  // The child's mapping ends at addr + kChildBytes; a read running past it faults.
  const Status st = peer->ReadRows(out.data(), out.size(), child.addr + kChildBytes - 100, out.size(), 1, out.size());
  EXPECT_EQ(st.code(), ErrorCode::kTransportError) << st.ToString();
}

TEST(KernelCopy, ExitedPeerIsDisconnected) {
  PatternChild child = PatternChild::Start(kSeed);
  ASSERT_GT(child.pid, 0);
  auto peer = transport::PeerProcess::Open(child.pid, child.addr);
  ASSERT_TRUE(peer.ok()) << peer.status().ToString();
  const pid_t pid = child.pid;
  child.Stop();  // exits and is reaped: the pid may now be reused
  EXPECT_TRUE(peer->Exited());
  std::vector<std::byte> out(64);
  EXPECT_EQ(peer->ReadRows(out.data(), 64, child.addr, 64, 1, 64).code(), ErrorCode::kPeerDisconnected);
  auto again = transport::PeerProcess::Open(pid, 0);
  EXPECT_FALSE(again.ok() && !again->Exited());  // gone, or (pid reused) not that child
}

TEST(PrivateArena, AlignedZeroFilledAndSized) {
  auto m = transport::PrivateMapping::Map((3u << 20) + 1);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(m->data()) % (2u << 20), 0u);
  EXPECT_EQ(m->size(), (3u << 20) + 1);
  EXPECT_EQ(testing::FirstNotEqual({m->data(), m->size()}, std::byte{0}), std::nullopt);
  m->data()[m->size() - 1] = std::byte{1};  // writable to the last byte
  EXPECT_EQ(transport::PrivateMapping::Map(0).status().code(), ErrorCode::kInvalidArgument);
}

// The Agent's READ from a child's arena into a local arena: with ReadPath::kAuto
// (kernel copy where huge pages were granted locally or the child's region cannot be
// mapped) and kMapped (never), strided and contiguous descriptors, both arena kinds at
// the child and locally. Checks the bytes and which path the stats say they took.
struct ReadCase {
  ReadPath path;
  ArenaMemory child_memory;
  ArenaMemory local_memory = ArenaMemory::kPrivateHugePages;
};

class AgentKernelCopyRead : public ::testing::TestWithParam<ReadCase> {};

TEST_P(AgentKernelCopyRead, BytesAndPath) {
  const ReadCase rc = GetParam();
  constexpr std::size_t kArena = std::size_t{6} << 20;
  int fds[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
  const pid_t test_pid = ::getpid();
  const pid_t pid = ::fork();
  if (pid == 0) {  // the source: an arena filled with the pattern, served until EOF
    shardwire::testing_util::DieWithTestProcess(test_pid);
    ::close(fds[0]);
    auto a = Agent::Create({.name = "source"});
    if (!a.ok()) ::_exit(10);
    auto region = (*a)->AllocateArena(kArena, rc.child_memory);
    if (!region.ok()) ::_exit(11);
    FillPattern((*a)->RegionBytes(*region), kSeed);
    auto blob = (*a)->ExportMetadata();
    if (!blob.ok() || !SendFrame(fds[1], *blob)) ::_exit(12);
    const RegionId id = *region;
    if (!SendFrame(fds[1], {reinterpret_cast<const std::byte*>(&id), sizeof(id)})) ::_exit(13);
    char b;
    (void)::read(fds[1], &b, 1);
    ::_exit(0);
  }
  ::close(fds[1]);
  auto blob = RecvFrame(fds[0], 30);
  auto rid = RecvFrame(fds[0], 30);
  ASSERT_TRUE(blob && rid && rid->size() == sizeof(RegionId));
  RegionId remote = 0;
  std::memcpy(&remote, rid->data(), sizeof(remote));
  {
    auto a = Agent::Create({.name = "loader", .read_path = rc.path});
    ASSERT_TRUE(a.ok()) << a.status().ToString();
    auto local = (*a)->AllocateArena(kArena, rc.local_memory);
    ASSERT_TRUE(local.ok()) << local.status().ToString();
    auto peer = (*a)->ImportMetadata(*blob);
    ASSERT_TRUE(peer.ok()) << peer.status().ToString();
    // Contiguous 2 MiB + 3 from offset 11; then 4096 rows of 512 bytes, 1024 apart
    // at the source, packed at local offset 3 MiB.
    const std::vector<TransferDescriptor> descs = {{.local_region = *local,
                                                    .local_offset = 0,
                                                    .remote_region = remote,
                                                    .remote_offset = 11,
                                                    .length = (2u << 20) + 3},
                                                   {.local_region = *local,
                                                    .local_offset = 3u << 20,
                                                    .remote_region = remote,
                                                    .remote_offset = 5,
                                                    .length = 512,
                                                    .count = 4096,
                                                    .local_stride = 512,
                                                    .remote_stride = 1024}};
    auto h = (*a)->PrepareTransfer(TransferOp::kRead, *peer, descs, std::nullopt);
    ASSERT_TRUE(h.ok()) << h.status().ToString();
    ASSERT_TRUE((*a)->Post(*h).ok());
    const Status waited = (*a)->Wait(*h, 30);
    ASSERT_TRUE(waited.ok()) << waited.ToString();
    auto bytes = (*a)->RegionBytes(*local);
    EXPECT_EQ(FirstMismatch(bytes.subspan(0, (2u << 20) + 3), kSeed, 11), std::nullopt);
    for (std::uint64_t r = 0; r < 4096; ++r) {
      ASSERT_EQ(FirstMismatch(bytes.subspan((3u << 20) + r * 512, 512), kSeed, 5 + r * 1024), std::nullopt)
          << "row " << r;
    }
    const AgentStats st = (*a)->Stats();
    auto info = (*a)->DescribePeer(*peer);
    ASSERT_TRUE(info.ok());
    const std::uint64_t total = (2u << 20) + 3 + 4096 * 512;
    // kAuto: the kernel copies into local huge pages, and from a child region this
    // process cannot map (private memory); a 4 KiB-page local region reads a child's
    // shared memory through its mapping.
    const bool local_huge =
        rc.local_memory == ArenaMemory::kPrivateHugePages && transport::TransparentHugePagesAdvisable();
    const bool by_kernel = local_huge || rc.child_memory == ArenaMemory::kPrivateHugePages;
    if (rc.path == ReadPath::kMapped) {
      EXPECT_FALSE(info->kernel_copy);
      EXPECT_EQ(st.kernel_copy_bytes, 0u);
    } else if (!info->kernel_copy) {
      GTEST_LOG_(INFO) << "kernel copy not available here (ptrace access): checked bytes only";
    } else if (by_kernel) {
      EXPECT_EQ(st.kernel_copy_bytes, total);  // every byte by the kernel, none mapped or via UCX
      EXPECT_EQ(st.direct_copy_bytes + st.ucx_bytes, 0u);
    } else {
      EXPECT_EQ(st.kernel_copy_bytes, 0u);
      EXPECT_EQ(st.direct_copy_bytes, total);  // through this process's mapping of the child's memory
    }
    (void)(*a)->Release(*h);
  }
  (void)::write(fds[0], "x", 1);
  ::close(fds[0]);
  auto status = WaitPidFor(pid, 30);
  ASSERT_TRUE(status.has_value());
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0);
}

INSTANTIATE_TEST_SUITE_P(Transport, AgentKernelCopyRead,
                         ::testing::Values(ReadCase{ReadPath::kAuto, ArenaMemory::kShared},
                                           ReadCase{ReadPath::kAuto, ArenaMemory::kPrivateHugePages},
                                           ReadCase{ReadPath::kMapped, ArenaMemory::kShared},
                                           ReadCase{ReadPath::kMapped, ArenaMemory::kPrivateHugePages},
                                           ReadCase{ReadPath::kAuto, ArenaMemory::kShared, ArenaMemory::kShared},
                                           ReadCase{ReadPath::kAuto, ArenaMemory::kPrivateHugePages,
                                                    ArenaMemory::kShared}),
                         [](const ::testing::TestParamInfo<ReadCase>& i) {
                           return std::string(i.param.path == ReadPath::kAuto ? "Auto" : "Mapped") + "From" +
                                  (i.param.child_memory == ArenaMemory::kShared ? "Shared" : "Private") +
                                  (i.param.local_memory == ArenaMemory::kShared ? "IntoShared" : "");
                         });

}  // namespace
}  // namespace shardwire
