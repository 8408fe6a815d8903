// The direct-mapped destination capability (Agent::MapPeerRegion, shardwire/mapped_region.h):
// which regions map, bounds, bytes written through the mapping landing in the peer's arena, and
// the mapping's lifetime (revoked on invalidation, re-import, agent destruction and a dead peer:
// a typed error, never a crash).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#include "die_with_test_process.h"
#include "shardwire/agent.h"
#include "transport/transport_test_util.h"

namespace shardwire {
namespace {

using testing::FillPattern;
using testing::FirstMismatch;
using testing::RecvFrame;
using testing::SendFrame;
using testing::WaitPidFor;

constexpr std::size_t kArena = std::size_t{1} << 20;

struct Pair {
  std::unique_ptr<Agent> a, b;
  RegionId arena = 0, registered = 0;
  std::vector<std::byte> caller_memory = std::vector<std::byte>(64 << 10);
};

// b owns an arena and a caller-registered region; a imports b.
Pair MakePair() {
  Pair p;
  auto a = Agent::Create({.name = "writer"});
  auto b = Agent::Create({.name = "owner"});
  EXPECT_TRUE(a.ok() && b.ok());
  p.a = std::move(*a);
  p.b = std::move(*b);
  p.arena = *p.b->AllocateArena(kArena);
  p.registered = *p.b->RegisterMemory(p.caller_memory.data(), p.caller_memory.size());
  auto blob = p.b->ExportMetadata();
  EXPECT_TRUE(p.a->ImportMetadata(*blob).ok());
  return p;
}

TEST(MappedRegion, ArenaMapsWritesLandAndBoundsAreChecked) {
  Pair p = MakePair();
  auto info = p.a->DescribePeer("owner");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->mapped_regions, std::vector<RegionId>{p.arena}) << "only the UCX-allocated arena maps";

  auto view = p.a->MapPeerRegion("owner", p.arena);
  ASSERT_TRUE(view.ok()) << view.status().ToString();
  EXPECT_EQ(view->size(), kArena);
  EXPECT_EQ(view->peer(), "owner");
  EXPECT_EQ(view->region(), p.arena);
  {
    auto access = view->Acquire();
    ASSERT_TRUE(access.ok()) << access.status().ToString();
    EXPECT_EQ(access->bytes().size(), kArena);
    EXPECT_TRUE(access->Range(0, kArena).ok());
    EXPECT_TRUE(access->Range(kArena, 0).ok());
    EXPECT_EQ(access->Range(kArena, 1).status().code(), ErrorCode::kInvalidArgument);
    EXPECT_EQ(access->Range(kArena - 4, 8).status().code(), ErrorCode::kInvalidArgument);
    EXPECT_EQ(access->Range(8, UINT64_MAX).status().code(), ErrorCode::kInvalidArgument) << "overflow-safe";
    EXPECT_EQ(access->Range(UINT64_MAX, 2).status().code(), ErrorCode::kInvalidArgument);
    // Bytes written through the mapping are the owner's bytes.
    auto range = access->Range(4096, kArena - 8192);
    ASSERT_TRUE(range.ok());
    FillPattern(p.b->RegionBytes(p.arena), 1);
    FillPattern(*range, 2, 4096);
  }
  const std::span<std::byte> owner = p.b->RegionBytes(p.arena);
  EXPECT_FALSE(FirstMismatch(owner.first(4096), 1).has_value()) << "bytes before the range untouched";
  EXPECT_FALSE(FirstMismatch(owner.subspan(4096, kArena - 8192), 2, 4096).has_value());
  EXPECT_FALSE(FirstMismatch(owner.subspan(kArena - 4096), 1, kArena - 4096).has_value()) << "bytes after untouched";

  // Pre-faulting touches every page of the range, changes no byte, and is counted in the
  // mapping agent's stats.
  const std::uint64_t counted_before = p.a->Stats().prefaulted_pages;
  auto pages = view->PrefaultForWrite(0, kArena);
  ASSERT_TRUE(pages.ok()) << pages.status().ToString();
  EXPECT_EQ(*pages, kArena / static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE)));
  EXPECT_EQ(p.a->Stats().prefaulted_pages - counted_before, *pages);
  EXPECT_FALSE(FirstMismatch(owner.subspan(4096, kArena - 8192), 2, 4096).has_value());
  EXPECT_EQ(view->PrefaultForWrite(kArena, 1).status().code(), ErrorCode::kInvalidArgument);

  // The same region twice: the same mapping. The Accesses end before the next call of the
  // agent (mapped_region.h: an agent revoking the mapping would wait for them; TSan saw the
  // cycle once a destroyed owner was reported by its message link's hang-up).
  auto again = p.a->MapPeerRegion("owner", p.arena);
  ASSERT_TRUE(again.ok());
  {
    auto x = again->Acquire();
    auto y = view->Acquire();
    ASSERT_TRUE(x.ok() && y.ok());
    EXPECT_EQ(x->bytes().data(), y->bytes().data());
  }

  EXPECT_EQ(p.a->MapPeerRegion("owner", p.registered).status().code(), ErrorCode::kUnsupported)
      << "caller-registered memory has no mapping (emulated puts on UCX 1.13.1)";
  EXPECT_EQ(p.a->MapPeerRegion("owner", 999).status().code(), ErrorCode::kNotFound);
  EXPECT_EQ(p.a->MapPeerRegion("nobody", p.arena).status().code(), ErrorCode::kNotFound);
  EXPECT_EQ(MappedRegion().Acquire().status().code(), ErrorCode::kInvalidArgument);
}

TEST(MappedRegion, RevokedOnInvalidateReimportAndAgentDestruction) {
  Pair p = MakePair();
  auto view = p.a->MapPeerRegion("owner", p.arena);
  ASSERT_TRUE(view.ok());
  ASSERT_TRUE(p.a->InvalidatePeer("owner").ok());
  auto gone = view->Acquire();
  EXPECT_EQ(gone.status().code(), ErrorCode::kPeerDisconnected);
  EXPECT_NE(gone.status().message().find("owner"), std::string::npos) << gone.status().ToString();
  EXPECT_EQ(view->PrefaultForWrite(0, 4096).status().code(), ErrorCode::kPeerDisconnected);

  // Re-imported: the old mapping stays revoked, a new one works.
  ASSERT_TRUE(p.a->ImportMetadata(*p.b->ExportMetadata()).ok());
  EXPECT_EQ(view->Acquire().status().code(), ErrorCode::kPeerDisconnected);
  auto fresh = p.a->MapPeerRegion("owner", p.arena);
  ASSERT_TRUE(fresh.ok()) << fresh.status().ToString();
  ASSERT_TRUE(fresh->Acquire().ok());
  ASSERT_TRUE(p.a->ImportMetadata(*p.b->ExportMetadata()).ok());  // re-import again
  EXPECT_EQ(fresh->Acquire().status().code(), ErrorCode::kPeerDisconnected);

  auto last = p.a->MapPeerRegion("owner", p.arena);
  ASSERT_TRUE(last.ok());
  p.a.reset();  // the agent that owns the mapping is destroyed; the MappedRegion outlives it
  EXPECT_EQ(last->Acquire().status().code(), ErrorCode::kPeerDisconnected);
}

// A real peer process: its arena is mapped and written, then it is SIGKILLed. An Access held
// across the death keeps the mapping valid (writes do not crash); afterwards Acquire reports
// kPeerDisconnected naming the peer, and MapPeerRegion refuses the failed peer.
TEST(MappedRegion, DeadPeersMappingIsNotUsedAfterFailure) {
  int fds[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
  const pid_t test_pid = ::getpid();
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    shardwire::testing_util::DieWithTestProcess(test_pid);
    ::close(fds[0]);
    int code = 0;
    {
      auto agent = Agent::Create({.name = "engine"});
      if (!agent.ok()) ::_exit(2);
      auto arena = (*agent)->AllocateArena(kArena);
      if (!arena.ok()) ::_exit(3);
      auto blob = (*agent)->ExportMetadata();
      const RegionId id = *arena;
      if (!SendFrame(fds[1], *blob) ||
          !SendFrame(fds[1], std::span<const std::byte>(reinterpret_cast<const std::byte*>(&id), sizeof(id))))
        ::_exit(4);
      if (!RecvFrame(fds[1], 30)) ::_exit(5);  // "written"
      code = FirstMismatch((*agent)->RegionBytes(id), 7).has_value() ? 6 : 0;
      const auto verdict = static_cast<std::byte>(code);
      SendFrame(fds[1], std::span<const std::byte>(&verdict, 1));
      std::this_thread::sleep_for(std::chrono::seconds(60));  // killed by the parent
    }
    ::_exit(code);
  }
  ::close(fds[1]);
  auto agent = Agent::Create({.name = "trainer"});
  ASSERT_TRUE(agent.ok());
  auto blob = RecvFrame(fds[0], 30);
  auto id_frame = RecvFrame(fds[0], 30);
  ASSERT_TRUE(blob && id_frame && id_frame->size() == sizeof(RegionId));
  RegionId id = 0;
  std::memcpy(&id, id_frame->data(), sizeof(id));
  ASSERT_TRUE((*agent)->ImportMetadata(*blob).ok());
  auto view = (*agent)->MapPeerRegion("engine", id);
  ASSERT_TRUE(view.ok()) << view.status().ToString();
  {
    auto access = view->Acquire();
    ASSERT_TRUE(access.ok());
    FillPattern(access->bytes(), 7);
  }
  ASSERT_TRUE(SendFrame(fds[0], std::vector<std::byte>(1)));
  auto verdict = RecvFrame(fds[0], 30);
  ASSERT_TRUE(verdict && verdict->size() == 1);
  EXPECT_EQ(static_cast<int>((*verdict)[0]), 0) << "the engine saw every byte written through the mapping";

  {
    // Held across the death: the revocation waits for it, so these writes hit mapped memory.
    auto access = view->Acquire();
    ASSERT_TRUE(access.ok());
    ASSERT_EQ(::kill(pid, SIGKILL), 0);
    ASSERT_TRUE(WaitPidFor(pid, 10).has_value());
    std::this_thread::sleep_for(std::chrono::milliseconds(300));  // the liveness check runs meanwhile
    FillPattern(access->bytes(), 8);
  }
  Status st;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (std::chrono::steady_clock::now() < deadline) {
    st = view->Acquire().status();
    if (!st.ok()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(st.code(), ErrorCode::kPeerDisconnected) << st.ToString();
  EXPECT_NE(st.message().find("engine"), std::string::npos) << st.ToString();
  EXPECT_EQ((*agent)->MapPeerRegion("engine", id).status().code(), ErrorCode::kPeerDisconnected);
  ::close(fds[0]);
}

}  // namespace
}  // namespace shardwire
