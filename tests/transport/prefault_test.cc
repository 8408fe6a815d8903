// Pre-faulting a second mapping of shared memory (the view a writer has of a
// peer's arena): page faults are counted with getrusage(ru_minflt), not timed.
// A fresh mapping written without pre-faulting takes about one fault per page;
// after PrefaultForWrite (either method) almost none, and no byte changed.
#include <gtest/gtest.h>
#include <sys/ipc.h>
#include <sys/resource.h>
#include <sys/shm.h>
#include <unistd.h>

#include <cstring>

#include "shardwire/agent.h"
#include "transport/prefault.h"
#include "sanitizer_build.h"
#include "transport/transport_test_util.h"

namespace shardwire {
namespace {

using testing_support::kAddressSanitizer;

// The most page faults a pre-faulted range of `pages` pages may take when it is first written
// or read: a sixteenth of them. Without pre-faulting it takes one per page. Under
// AddressSanitizer the shadow memory (one byte per 8 application bytes) takes its own
// first-touch faults, one per 8 application pages, allowed on top: the bound (3/16 of the
// pages) still fails when pre-faulting does nothing.
std::uint64_t FaultBound(std::uint64_t pages) { return pages / 16 + (kAddressSanitizer ? pages / 8 : 0); }

using transport::PrefaultForWrite;
using transport::PrefaultMethod;

std::uint64_t MinorFaults() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  return static_cast<std::uint64_t>(u.ru_minflt);
}

constexpr std::size_t kBytes = 8u << 20;

// A System V segment (what UCX's sysv transport allocates an arena in) whose
// owner has written a pattern through its own mapping.
class SharedSegment {
 public:
  SharedSegment() {
    id_ = ::shmget(IPC_PRIVATE, kBytes, IPC_CREAT | 0600);
    if (id_ < 0) return;
    owner_ = static_cast<std::byte*>(::shmat(id_, nullptr, 0));
    if (owner_ == reinterpret_cast<std::byte*>(-1)) owner_ = nullptr;
    if (owner_ != nullptr) testing::FillPattern({owner_, kBytes}, 21);
  }
  ~SharedSegment() {
    for (std::byte* v : views_) ::shmdt(v);
    if (owner_ != nullptr) ::shmdt(owner_);
    if (id_ >= 0) ::shmctl(id_, IPC_RMID, nullptr);
  }
  bool ok() const { return owner_ != nullptr; }
  // Another mapping of the same pages: its page tables start empty.
  std::byte* NewView() {
    auto* v = static_cast<std::byte*>(::shmat(id_, nullptr, 0));
    if (v == reinterpret_cast<std::byte*>(-1)) return nullptr;
    views_.push_back(v);
    return v;
  }

 private:
  int id_ = -1;
  std::byte* owner_ = nullptr;
  std::vector<std::byte*> views_;
};

// Faults taken while writing one byte per page through `view`.
std::uint64_t FaultsWhileWriting(std::byte* view) {
  const std::size_t page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  const std::uint64_t before = MinorFaults();
  for (std::size_t k = 0; k < kBytes; k += page) view[k] = testing::PatternByte(21, k);  // same value: unchanged
  return MinorFaults() - before;
}

TEST(Prefault, ASecondMappingTakesAboutOneFaultPerPageWithoutIt) {
  SharedSegment seg;
  ASSERT_TRUE(seg.ok()) << "shmget/shmat failed: " << std::strerror(errno);
  std::byte* view = seg.NewView();
  ASSERT_NE(view, nullptr);
  const std::uint64_t pages = kBytes / static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  EXPECT_GE(FaultsWhileWriting(view), pages / 2) << "the control: a fresh mapping must fault";
}

class PrefaultMethods : public ::testing::TestWithParam<PrefaultMethod> {};

TEST_P(PrefaultMethods, RemovesTheFaultsAndChangesNoByte) {
  SharedSegment seg;
  ASSERT_TRUE(seg.ok()) << "shmget/shmat failed: " << std::strerror(errno);
  std::byte* view = seg.NewView();
  ASSERT_NE(view, nullptr);
  const std::uint64_t pages = kBytes / static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  const transport::PrefaultResult r = PrefaultForWrite(view + 1, kBytes - 1, GetParam());  // unaligned start
  if (GetParam() == PrefaultMethod::kMadvise && !r.madvise_ok)
    GTEST_SKIP() << "madvise(MADV_POPULATE_WRITE) refused here (errno " << r.madvise_errno << ", needs Linux 5.14)";
  if (GetParam() != PrefaultMethod::kMadvise) {
    // kAuto touches every page (shadow-paging hypervisors), without madvise.
    EXPECT_EQ(r.touched_pages, pages);
  } else {
    EXPECT_EQ(r.touched_pages, 0u);
  }
  EXPECT_LT(FaultsWhileWriting(view), FaultBound(pages));
  EXPECT_FALSE(testing::FirstMismatch({view, kBytes}, 21).has_value()) << "pre-faulting changed a byte";
}

INSTANTIATE_TEST_SUITE_P(Methods, PrefaultMethods,
                         ::testing::Values(PrefaultMethod::kAuto, PrefaultMethod::kMadvise, PrefaultMethod::kTouch),
                         [](const auto& param_info) {
                           switch (param_info.param) {
                             case PrefaultMethod::kAuto:
                               return std::string("auto");
                             case PrefaultMethod::kMadvise:
                               return std::string("madvise");
                             case PrefaultMethod::kTouch:
                               return std::string("touch");
                           }
                           return std::string("unknown");
                         });

// The agent pre-faults its view of a peer's arena at PrepareTransfer: the first
// post of a WRITE into a fresh arena then takes (almost) no page faults; with
// prefault_remote off it takes about one per page (the control).
class AgentPrefault : public ::testing::TestWithParam<bool> {};

TEST_P(AgentPrefault, FirstWriteIntoAPeerArenaTakesNoFaultPerPage) {
  const bool prefault = GetParam();
  auto a = Agent::Create({.name = "writer", .prefault_remote = prefault});
  auto b = Agent::Create({.name = "target"});
  ASSERT_TRUE(a.ok() && b.ok());
  auto ra = (*a)->AllocateArena(kBytes);
  auto rb = (*b)->AllocateArena(kBytes);
  ASSERT_TRUE(ra.ok() && rb.ok());
  testing::FillPattern((*a)->RegionBytes(*ra), 5);
  std::memset((*b)->RegionBytes(*rb).data(), 0, kBytes);  // the owner's pages exist
  auto ma = (*a)->ExportMetadata();
  auto mb = (*b)->ExportMetadata();
  ASSERT_TRUE((*b)->ImportMetadata(*ma).ok());
  ASSERT_TRUE((*a)->ImportMetadata(*mb).ok());
  auto info = (*a)->DescribePeer("target");
  ASSERT_TRUE(info.ok());
  auto h = (*a)->PrepareTransfer(TransferOp::kWrite, "target", {{*ra, 0, *rb, 0, kBytes}}, std::nullopt);
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  const std::uint64_t before = MinorFaults();
  ASSERT_TRUE((*a)->Post(*h).ok());
  ASSERT_TRUE((*a)->Wait(*h, 60).ok());
  const std::uint64_t faults = MinorFaults() - before;
  EXPECT_FALSE(testing::FirstMismatch((*b)->RegionBytes(*rb), 5).has_value());
  const std::uint64_t pages = kBytes / static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  if (prefault) {
    EXPECT_LT(faults, FaultBound(pages)) << "first post faulted " << faults << " times for " << pages << " pages";
  } else {
    EXPECT_GE(faults, pages / 2) << "control: without pre-faulting the first post must fault";
  }
  EXPECT_TRUE((*a)->Release(*h).ok());
}

INSTANTIATE_TEST_SUITE_P(PrefaultRemote, AgentPrefault, ::testing::Bool(),
                         [](const auto& param_info) { return std::string(param_info.param ? "on" : "off"); });

// Faults taken while reading one byte per page through `view`; returns whether every
// byte read had the owner's pattern.
std::uint64_t FaultsWhileReading(const std::byte* view, bool* pattern_ok) {
  const std::size_t page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  const std::uint64_t before = MinorFaults();
  bool ok = true;
  for (std::size_t k = 0; k < kBytes; k += page) {
    ok &= *reinterpret_cast<const volatile std::byte*>(view + k) == testing::PatternByte(21, k);
  }
  *pattern_ok = ok;
  return MinorFaults() - before;
}

TEST_P(PrefaultMethods, ForReadRemovesTheReadFaultsAndChangesNoByte) {
  SharedSegment seg;
  ASSERT_TRUE(seg.ok()) << "shmget/shmat failed: " << std::strerror(errno);
  std::byte* control = seg.NewView();
  std::byte* view = seg.NewView();
  ASSERT_TRUE(control != nullptr && view != nullptr);
  const std::uint64_t pages = kBytes / static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  bool ok = false;
  EXPECT_GE(FaultsWhileReading(control, &ok), pages / 2) << "the control: a fresh mapping must fault";
  EXPECT_TRUE(ok);
  const transport::PrefaultResult r = transport::PrefaultForRead(view + 1, kBytes - 1, GetParam());
  if (GetParam() == PrefaultMethod::kMadvise && !r.madvise_ok)
    GTEST_SKIP() << "madvise(MADV_POPULATE_READ) refused here (errno " << r.madvise_errno << ", needs Linux 5.14)";
  if (GetParam() == PrefaultMethod::kTouch) {
    EXPECT_EQ(r.touched_pages, pages);
  }
  EXPECT_LT(FaultsWhileReading(view, &ok), FaultBound(pages));
  EXPECT_TRUE(ok);
  EXPECT_FALSE(testing::FirstMismatch({view, kBytes}, 21).has_value()) << "pre-faulting changed a byte";
}

// The same for a READ: PrepareTransfer populates the reader's view of the ranges it
// will read, so the first post takes (almost) no fault per page; with prefault_remote
// off it takes about one per page (the control).
TEST_P(AgentPrefault, FirstReadFromAPeerArenaTakesNoFaultPerPage) {
  const bool prefault = GetParam();
  auto a = Agent::Create({.name = "reader", .prefault_remote = prefault});
  auto b = Agent::Create({.name = "source"});
  ASSERT_TRUE(a.ok() && b.ok());
  auto ra = (*a)->AllocateArena(kBytes);
  auto rb = (*b)->AllocateArena(kBytes);
  ASSERT_TRUE(ra.ok() && rb.ok());
  std::memset((*a)->RegionBytes(*ra).data(), 0, kBytes);  // the reader's own pages exist
  testing::FillPattern((*b)->RegionBytes(*rb), 6);
  auto ma = (*a)->ExportMetadata();
  auto mb = (*b)->ExportMetadata();
  ASSERT_TRUE((*b)->ImportMetadata(*ma).ok());
  ASSERT_TRUE((*a)->ImportMetadata(*mb).ok());
  auto h = (*a)->PrepareTransfer(TransferOp::kRead, "source", {{*ra, 0, *rb, 0, kBytes}}, std::nullopt);
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  const std::uint64_t before = MinorFaults();
  ASSERT_TRUE((*a)->Post(*h).ok());
  ASSERT_TRUE((*a)->Wait(*h, 60).ok());
  const std::uint64_t faults = MinorFaults() - before;
  EXPECT_FALSE(testing::FirstMismatch((*a)->RegionBytes(*ra), 6).has_value());
  const std::uint64_t pages = kBytes / static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  if (prefault) {
    EXPECT_LT(faults, FaultBound(pages)) << "first READ faulted " << faults << " times for " << pages << " pages";
  } else {
    EXPECT_GE(faults, pages / 2) << "control: without pre-faulting the first READ must fault";
  }
  EXPECT_TRUE((*a)->Release(*h).ok());
}

}  // namespace
}  // namespace shardwire
