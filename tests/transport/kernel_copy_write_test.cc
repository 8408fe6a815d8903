// Kernel-copy WRITEs (process_vm_writev, PeerProcess::WriteRows in
// src/transport/kernel_copy.h) and the Agent's WRITE path that uses them
// (WritePath::kAuto into peers' regions this process cannot map, kKernelCopy
// for every region): real child processes, real UCX. Bytes are checked against
// PatternByte, computed independently of any buffer, and read back through a
// path the code under test does not use (/proc/<pid>/mem, or the child's own
// check of its memory).
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <climits>
#include <csignal>
#include <cstring>
#include <functional>

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

constexpr std::uint64_t kChildSeed = 91;   // what the child's memory holds before the writes
constexpr std::uint64_t kWriterSeed = 17;  // what the writer sends
using testing::PatternChild;
constexpr std::size_t kChildBytes = PatternChild::kBytes;


// A child process holding kChildSeed's pattern, opened for kernel-copy writes; a 4 MiB source
// holding kWriterSeed's; and `want`, the child's expected memory, which each test updates with
// memcpy beside every write (an oracle independent of WriteRows / WriteBatch) and compares
// against the child's memory read back through /proc/<pid>/mem.
class KernelCopyWriteIntoChild : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_GT(child_.pid, 0);
    ASSERT_NE(child_.addr, 0u);
    auto peer = transport::PeerProcess::Open(child_.pid, child_.addr);
    ASSERT_TRUE(peer.ok()) << peer.status().ToString();
    peer_ = std::move(*peer);
    src_.resize(std::size_t{4} << 20);
    FillPattern(src_, kWriterSeed);
    want_.resize(kChildBytes);
    FillPattern(want_, kChildSeed);
  }
  // Every byte of the child equals `want_` (gaps keep the child's own pattern).
  void ExpectChildIsWant() {
    const std::vector<std::byte> got = child_.ReadBack();
    ASSERT_EQ(got.size(), kChildBytes) << "could not read " << child_.MemPath();
    for (std::size_t i = 0; i < kChildBytes; ++i) ASSERT_EQ(got[i], want_[i]) << "child byte " << i;
  }
  PatternChild child_ = PatternChild::Start(kChildSeed);  // initialised in place: it has no move
  transport::PeerProcess peer_;
  std::vector<std::byte> src_, want_;
};

TEST_F(KernelCopyWriteIntoChild, WritesContiguousAndStridedRows) {
  // Contiguous: 3 MiB + 5 bytes to child offset 4099, from src offset 7.
  const std::uint64_t n1 = (3u << 20) + 5;
  ASSERT_TRUE(peer_.WriteRows(src_.data() + 7, n1, child_.addr + 4099, n1, 1, n1).ok());
  std::memcpy(want_.data() + 4099, src_.data() + 7, n1);

  // 3000 rows (more than IOV_MAX remote iovecs) of 24 bytes, packed here, 56 apart
  // at the child from offset 4 MiB: a contiguous source, strided destination.
  static_assert(3000 > IOV_MAX);
  const std::uint64_t rows = 3000, len = 24, dst_stride = 56, at = 4u << 20;
  ASSERT_TRUE(peer_.WriteRows(src_.data(), len, child_.addr + at, dst_stride, rows, len).ok());
  for (std::uint64_t r = 0; r < rows; ++r) std::memcpy(want_.data() + at + r * dst_stride, src_.data() + r * len, len);

  // Strided on both sides: 1500 rows of 100 bytes, 128 apart here, 300 apart there.
  const std::uint64_t r2 = 1500, l2 = 100, s2 = 128, d2 = 300, at2 = 5u << 20;
  ASSERT_TRUE(peer_.WriteRows(src_.data() + 1000, s2, child_.addr + at2, d2, r2, l2).ok());
  for (std::uint64_t r = 0; r < r2; ++r) std::memcpy(want_.data() + at2 + r * d2, src_.data() + 1000 + r * s2, l2);
  ExpectChildIsWant();
}

// WriteBatch: many copies of every shape in shared system calls, 64 KiB rows as the Agent's
// small posts send them, single contiguous runs that touch (merged into one iovec), and strided
// copies whose rows together pass IOV_MAX (the batch is flushed mid-copy).
TEST_F(KernelCopyWriteIntoChild, WriteBatchOfManyCopiesMatchesTheOracle) {
  std::vector<transport::RowCopy> batch;
  auto add = [&](std::uint64_t from, std::uint64_t ls, std::uint64_t at, std::uint64_t rs, std::uint64_t count,
                 std::uint64_t len) {
    batch.push_back({src_.data() + from, ls, child_.addr + at, rs, count, len});
    for (std::uint64_t r = 0; r < count; ++r) std::memcpy(want_.data() + at + r * rs, src_.data() + from + r * ls, len);
  };
  // 20 x 64 KiB, reversed at the target (distinct, non-touching iovecs).
  for (std::uint64_t i = 0; i < 20; ++i) add(i * 65536, 65536, (19 - i) * 65536 + 4096, 65536, 1, 65536);
  // Two runs that touch on both sides: merged into one segment each.
  add(2000000, 5000, 2000000, 5000, 1, 5000);
  add(2005000, 5000, 2005000, 5000, 1, 5000);
  // 700 + 600 strided rows: together more than IOV_MAX (1024) iovecs, so the batch flushes inside.
  static_assert(700 + 600 > IOV_MAX);
  add(3000000, 40, 4u << 20, 96, 700, 40);
  add(3100000, 64, 5u << 20, 200, 600, 33);
  // A zero-row and a zero-length copy change nothing.
  batch.push_back({src_.data(), 1, child_.addr, 1, 0, 1});
  batch.push_back({src_.data(), 1, child_.addr, 1, 3, 0});
  ASSERT_TRUE(peer_.WriteBatch(batch).ok());
  ExpectChildIsWant();
}

TEST(KernelCopyWrite, UnmappedRemoteRangeIsATransportError) {
  PatternChild child = PatternChild::Start(kChildSeed);
  ASSERT_GT(child.pid, 0);
  auto peer = transport::PeerProcess::Open(child.pid, child.addr);
  ASSERT_TRUE(peer.ok()) << peer.status().ToString();
  std::vector<std::byte> src(4096, std::byte{1});
  // The child's mapping ends at addr + kChildBytes; a write running past it faults.
  const Status st = peer->WriteRows(src.data(), src.size(), child.addr + kChildBytes - 100, src.size(), 1, src.size());
  EXPECT_EQ(st.code(), ErrorCode::kTransportError) << st.ToString();
}

TEST(KernelCopyWrite, ExitedPeerIsDisconnectedAndNotWritten) {
  PatternChild child = PatternChild::Start(kChildSeed);
  ASSERT_GT(child.pid, 0);
  auto peer = transport::PeerProcess::Open(child.pid, child.addr);
  ASSERT_TRUE(peer.ok()) << peer.status().ToString();
  // Killed but not reaped: the pid still names the (zombie) child, so only the
  // pidfd check before the system call stands between the write and the pid.
  ASSERT_EQ(::kill(child.pid, SIGKILL), 0);
  for (int i = 0; i < 3000 && !peer->Exited(); ++i) ::usleep(10'000);  // 30 s at most
  ASSERT_TRUE(peer->Exited());
  std::vector<std::byte> src(64, std::byte{1});
  EXPECT_EQ(peer->WriteRows(src.data(), 64, child.addr, 64, 1, 64).code(), ErrorCode::kPeerDisconnected);
  EXPECT_EQ(transport::PeerProcess().WriteRows(src.data(), 64, child.addr, 64, 1, 64).code(),
            ErrorCode::kInvalidArgument);
}

// The Agent's WRITE into a child's arena. The child checks its own arena after the
// notification (the oracle runs in the target, from PatternByte only) and exits 0
// when every byte is right, 20 when not; the parent checks which path the stats say
// the bytes took.
struct WriteCase {
  WritePath path;
  ArenaMemory child_memory;
};

constexpr std::size_t kArena = std::size_t{8} << 20;
constexpr std::uint64_t kContiguous = (2u << 20) + 3;  // local offset 11 -> remote offset 0
constexpr std::uint64_t kRows = 4096, kRowLen = 512, kRemoteStride = 1024;
constexpr std::uint64_t kRowsLocal = 3u << 20, kRowsRemote = (3u << 20) + 5;  // packed here, strided there

std::byte ExpectedChildByte(std::uint64_t o) {
  if (o < kContiguous) return PatternByte(kWriterSeed, 11 + o);
  if (o >= kRowsRemote) {
    const std::uint64_t r = (o - kRowsRemote) / kRemoteStride, k = (o - kRowsRemote) % kRemoteStride;
    if (r < kRows && k < kRowLen) return PatternByte(kWriterSeed, kRowsLocal + r * kRowLen + k);
  }
  return PatternByte(kChildSeed, o);
}

class AgentKernelCopyWrite : public ::testing::TestWithParam<WriteCase> {};

TEST_P(AgentKernelCopyWrite, BytesAndPath) {
  const WriteCase wc = GetParam();
  int fds[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
  const pid_t test_pid = ::getpid();
  const pid_t pid = ::fork();
  if (pid == 0) {  // the target: an arena with its own pattern, checked after the notification
    shardwire::testing_util::DieWithTestProcess(test_pid);
    ::close(fds[0]);
    auto a = Agent::Create({.name = "engine"});
    if (!a.ok()) ::_exit(10);
    auto region = (*a)->AllocateArena(kArena, wc.child_memory);
    if (!region.ok()) ::_exit(11);
    FillPattern((*a)->RegionBytes(*region), kChildSeed);
    auto blob = (*a)->ExportMetadata();
    if (!blob.ok() || !SendFrame(fds[1], *blob)) ::_exit(12);
    const RegionId id = *region;
    if (!SendFrame(fds[1], {reinterpret_cast<const std::byte*>(&id), sizeof(id)})) ::_exit(13);
    auto note = (*a)->WaitNotification(60);
    if (!note.ok()) ::_exit(14);
    const auto bytes = (*a)->RegionBytes(*region);
    for (std::uint64_t o = 0; o < bytes.size(); ++o) {
      if (bytes[o] != ExpectedChildByte(o)) ::_exit(20);
    }
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
    auto a = Agent::Create({.name = "trainer", .write_path = wc.path});
    ASSERT_TRUE(a.ok()) << a.status().ToString();
    auto local = (*a)->AllocateArena(kArena, ArenaMemory::kPrivateHugePages);
    ASSERT_TRUE(local.ok()) << local.status().ToString();
    FillPattern((*a)->RegionBytes(*local), kWriterSeed);
    auto peer = (*a)->ImportMetadata(*blob);
    ASSERT_TRUE(peer.ok()) << peer.status().ToString();
    // The strided descriptor is 2 MiB: cut into 1 MiB slices of 2048 rows, each more
    // than IOV_MAX remote iovecs.
    const std::vector<TransferDescriptor> descs = {{.local_region = *local,
                                                    .local_offset = 11,
                                                    .remote_region = remote,
                                                    .remote_offset = 0,
                                                    .length = kContiguous},
                                                   {.local_region = *local,
                                                    .local_offset = kRowsLocal,
                                                    .remote_region = remote,
                                                    .remote_offset = kRowsRemote,
                                                    .length = kRowLen,
                                                    .count = kRows,
                                                    .local_stride = kRowLen,
                                                    .remote_stride = kRemoteStride}};
    const std::string note = "done";
    auto h = (*a)->PrepareTransfer(TransferOp::kWrite, *peer, descs,
                                   std::vector<std::byte>(reinterpret_cast<const std::byte*>(note.data()),
                                                          reinterpret_cast<const std::byte*>(note.data()) + note.size()));
    ASSERT_TRUE(h.ok()) << h.status().ToString();
    ASSERT_TRUE((*a)->Post(*h).ok());
    const Status waited = (*a)->Wait(*h, 60);
    ASSERT_TRUE(waited.ok()) << waited.ToString();
    const AgentStats st = (*a)->Stats();
    auto info = (*a)->DescribePeer(*peer);
    ASSERT_TRUE(info.ok());
    const std::uint64_t total = kContiguous + kRows * kRowLen;
    const bool remote_mapped = wc.child_memory == ArenaMemory::kShared && !info->mapped_regions.empty();
    const bool expect_kernel =
        info->kernel_copy_writes && (wc.path == WritePath::kKernelCopy || (wc.path == WritePath::kAuto && !remote_mapped));
    if (!info->kernel_copy_writes) GTEST_LOG_(INFO) << "kernel copy not available here (ptrace access): checked bytes only";
    if (expect_kernel) {
      EXPECT_EQ(st.kernel_copy_bytes, total);  // every byte by the kernel, none mapped or via UCX
      EXPECT_EQ(st.direct_copy_bytes + st.ucx_bytes, 0u);
      EXPECT_EQ(st.prefaulted_pages, 0u);  // nothing of the peer is mapped here
    } else {
      EXPECT_EQ(st.kernel_copy_bytes, 0u);
      EXPECT_EQ(st.direct_copy_bytes + st.ucx_bytes, total);
    }
    (void)(*a)->Release(*h);
  }
  (void)::write(fds[0], "x", 1);
  ::close(fds[0]);
  auto status = WaitPidFor(pid, 60);
  ASSERT_TRUE(status.has_value());
  ASSERT_TRUE(WIFEXITED(*status)) << "target did not exit: status " << *status;
  EXPECT_EQ(WEXITSTATUS(*status), 0) << "20: a byte in the target's arena is wrong";
}

INSTANTIATE_TEST_SUITE_P(Transport, AgentKernelCopyWrite,
                         ::testing::Values(WriteCase{WritePath::kAuto, ArenaMemory::kPrivateHugePages},
                                           WriteCase{WritePath::kAuto, ArenaMemory::kShared},
                                           WriteCase{WritePath::kKernelCopy, ArenaMemory::kShared},
                                           WriteCase{WritePath::kKernelCopy, ArenaMemory::kPrivateHugePages},
                                           WriteCase{WritePath::kPut, ArenaMemory::kPrivateHugePages}),
                         [](const ::testing::TestParamInfo<WriteCase>& i) {
                           return std::string(i.param.path == WritePath::kAuto         ? "Auto"
                                              : i.param.path == WritePath::kKernelCopy ? "KernelCopy"
                                                                                       : "Put") +
                                  "Into" + (i.param.child_memory == ArenaMemory::kShared ? "Shared" : "Private");
                         });

// A target that dies after exporting: the WRITE into its private arena fails with
// kPeerDisconnected (typed), within the wait's bound, and nothing hangs.
TEST(AgentKernelCopyWriteDeadPeer, PostToAKilledTargetIsPeerDisconnected) {
  int fds[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
  const pid_t test_pid = ::getpid();
  const pid_t pid = ::fork();
  if (pid == 0) {
    shardwire::testing_util::DieWithTestProcess(test_pid);
    ::close(fds[0]);
    auto a = Agent::Create({.name = "engine"});
    if (!a.ok()) ::_exit(10);
    auto region = (*a)->AllocateArena(kArena, ArenaMemory::kPrivateHugePages);
    if (!region.ok()) ::_exit(11);
    auto blob = (*a)->ExportMetadata();
    if (!blob.ok() || !SendFrame(fds[1], *blob)) ::_exit(12);
    const RegionId id = *region;
    if (!SendFrame(fds[1], {reinterpret_cast<const std::byte*>(&id), sizeof(id)})) ::_exit(13);
    for (;;) ::pause();
  }
  ::close(fds[1]);
  auto blob = RecvFrame(fds[0], 30);
  auto rid = RecvFrame(fds[0], 30);
  ASSERT_TRUE(blob && rid && rid->size() == sizeof(RegionId));
  RegionId remote = 0;
  std::memcpy(&remote, rid->data(), sizeof(remote));
  auto a = Agent::Create({.name = "trainer"});
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  auto local = (*a)->AllocateArena(kArena, ArenaMemory::kPrivateHugePages);
  ASSERT_TRUE(local.ok());
  auto peer = (*a)->ImportMetadata(*blob);
  ASSERT_TRUE(peer.ok()) << peer.status().ToString();
  auto info = (*a)->DescribePeer(*peer);
  ASSERT_TRUE(info.ok());
  if (!info->kernel_copy_writes) GTEST_SKIP() << "kernel copy not available here (ptrace access)";
  auto h = (*a)->PrepareTransfer(
      TransferOp::kWrite, *peer,
      {{.local_region = *local, .local_offset = 0, .remote_region = remote, .remote_offset = 0, .length = kArena}},
      std::nullopt);
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  ASSERT_EQ(::kill(pid, SIGKILL), 0);
  ASSERT_TRUE(WaitPidFor(pid, 30).has_value());  // reaped: its pid may now be reused
  const Status posted = (*a)->Post(*h);
  const Status st = posted.ok() ? (*a)->Wait(*h, 30) : posted;
  EXPECT_EQ(st.code(), ErrorCode::kPeerDisconnected) << st.ToString();
  EXPECT_EQ((*a)->Stats().kernel_copy_bytes, 0u);  // not one byte went to the (possibly reused) pid
  ::close(fds[0]);
}

}  // namespace
}  // namespace shardwire
