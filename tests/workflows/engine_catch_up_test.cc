// Catch-up of a restarted engine rank from live engines (engine_catch_up.h), in one process:
// engine ranks serve committed versions of their own buffers, a new rank loads the newest
// complete one with the P2P loader into its own buffer. The expected bytes are computed
// independently: the rank's shards read from the checkpoint (LoadShardsFromCheckpoint), then
// changed by the test's per-version update.
#include "shardwire/engine_catch_up.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <vector>

#include "fake_source_registry.h"
#include "shardwire/checkpoint.h"
#include "shardwire/checkpoint_generator.h"
#include "shardwire/model_config.h"
#include "shardwire/model_layouts.h"
#include "shardwire/shard_io.h"

namespace shardwire {
namespace {

namespace fs = std::filesystem;
using testing::FakeSourceRegistry;

constexpr const char* kLlama = R"({"model_type": "llama", "hidden_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 8, "num_key_value_heads": 8, "intermediate_size": 256, "vocab_size": 512,
    "torch_dtype": "bfloat16"})";
constexpr const char* kJob = "catch";

class EngineCatchUpTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / fmt::format("sw_catch_up_{}", ::getpid());
    auto config = ParseModelConfig(kLlama, "test");
    ASSERT_TRUE(config.ok()) << config.status().ToString();
    auto model = DescribeModel(*config);
    ASSERT_TRUE(model.ok()) << model.status().ToString();
    model_ = *model;
    ASSERT_TRUE(GenerateCheckpointDirectory(model_, dir_.string(), {.seed = 11}).ok());
    auto checkpoint = Checkpoint::Open(dir_.string());
    ASSERT_TRUE(checkpoint.ok());
    checkpoint_.emplace(std::move(*checkpoint));
    replica_layout_ = MakeLayoutFromString(model_, "tp=2").value();
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  // Replica rank `rank`'s buffer at `version`: its checkpoint shards, every shard byte then
  // changed by a pattern of (version, byte index): what a trainer's update would have written.
  std::vector<std::byte> Expected(int rank, std::uint64_t version) {
    std::vector<std::byte> buffer(replica_layout_.rank(rank).buffer_bytes);
    EXPECT_TRUE(LoadShardsFromCheckpoint(*checkpoint_, replica_layout_, rank, buffer).ok());
    for (const ShardRef& shard : replica_layout_.rank(rank).shards) {
      const std::size_t bytes =
          static_cast<std::size_t>(shard.box.numel()) * DTypeSize(replica_layout_.tensors()[shard.tensor].dtype);
      for (std::size_t i = 0; i < bytes; ++i) {
        buffer[shard.byte_offset + i] ^= static_cast<std::byte>((version * 31 + i * 7) & 0xFF);
      }
    }
    return buffer;
  }

  fs::path dir_;
  ModelDescription model_;
  std::optional<Checkpoint> checkpoint_;
  Layout replica_layout_;
  FakeSourceRegistry registry_;
};

TEST_F(EngineCatchUpTest, LocatesEngineRanksInTheirReplicas) {
  auto where = LocateEngineRank(model_, kJob, "tp=2,dp=3", 5);
  ASSERT_TRUE(where.ok()) << where.status().ToString();
  EXPECT_EQ(where->layout, "tp=2");
  EXPECT_EQ(where->replica, 2);
  EXPECT_EQ(where->rank, 1);
  EXPECT_EQ(LocateEngineRank(model_, kJob, "tp=2,dp=3", 6).status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(LocateEngineRank(model_, kJob, "tp=3", 0).status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(CommittedVersionRevision(kJob, 17), "catch@v17");
}

TEST_F(EngineCatchUpTest, ARestartedRankLoadsTheNewestCompleteVersionFromLiveEngines) {
  // Nobody serves anything yet: nothing to catch up from, nothing loaded.
  const EngineReplica restarted = LocateEngineRank(model_, kJob, "tp=2,dp=2", 3).value();  // replica 1, rank 1
  std::vector<std::byte> mine(replica_layout_.rank(1).buffer_bytes, std::byte{0x5A});
  auto none = CatchUpFromLiveEngines(registry_, model_, restarted, 2, mine);
  ASSERT_TRUE(none.ok()) << none.status().ToString();
  EXPECT_EQ(none->version, 0u);
  EXPECT_EQ(none->attempts, 0);
  EXPECT_EQ(mine, std::vector<std::byte>(mine.size(), std::byte{0x5A})) << "nothing written";

  // Replica 0 (ranks 0 and 1) committed v5 and v6, double-buffered: both are served.
  std::vector<std::byte> v5[2] = {Expected(0, 5), Expected(1, 5)};
  std::vector<std::byte> v6[2] = {Expected(0, 6), Expected(1, 6)};
  std::vector<std::unique_ptr<CommittedVersionSources>> live;
  for (int r = 0; r < 2; ++r) {
    live.push_back(std::make_unique<CommittedVersionSources>(registry_, model_,
                                                             LocateEngineRank(model_, kJob, "tp=2,dp=2", r).value()));
    ASSERT_TRUE(live[r]->Publish(5, v5[r]).ok());
    ASSERT_TRUE(live[r]->Publish(6, v6[r]).ok());
    EXPECT_EQ(live[r]->versions(), (std::vector<std::uint64_t>{5, 6}));
  }
  // Rank 0 alone also committed v7 (rank 1 has not yet): v7 has no complete replica.
  std::vector<std::byte> v7 = Expected(0, 7);
  ASSERT_TRUE(live[0]->Publish(7, v7).ok());
  EXPECT_EQ(live[0]->versions(), (std::vector<std::uint64_t>{6, 7})) << "two versions at most";

  // A long stall timeout: one attempt, however slowly this runs (no source here stalls).
  auto caught = CatchUpFromLiveEngines(registry_, model_, restarted, 2, mine, {.stall_timeout_s = 20});
  ASSERT_TRUE(caught.ok()) << caught.status().ToString();
  EXPECT_EQ(caught->version, 6u) << "v7 is incomplete; v6 is the newest whole version";
  EXPECT_EQ(caught->attempts, 1) << "an incomplete version is skipped, not tried";
  EXPECT_FALSE(caught->held) << "no subscriber given: no hold";
  ASSERT_EQ(caught->failures.size(), 1u);
  EXPECT_NE(caught->failures[0].find("v7: skipped, 1 of 2 ranks of catch/replica-0 serve it"), std::string::npos)
      << caught->failures[0];
  EXPECT_EQ(caught->load.bytes_from_disk, 0u) << "never from disk";
  EXPECT_EQ(caught->load.bytes_per_instance.count("catch/replica-0"), 1u);
  EXPECT_TRUE(mine == Expected(1, 6)) << "every byte equals v6 of rank 1";

  // Rank 1's next update writes v6's buffer: withdrawn. Rank 0 serves v6 and v7, rank 1 only v5:
  // no version is whole, and the catch-up says so for each.
  live[1]->Withdraw(v6[1]);
  EXPECT_EQ(live[1]->versions(), (std::vector<std::uint64_t>{5}));
  auto nothing_whole = CatchUpFromLiveEngines(registry_, model_, restarted, 3, mine, {.wait_s = 0.3});
  ASSERT_FALSE(nothing_whole.ok());
  EXPECT_EQ(nothing_whole.status().code(), ErrorCode::kUnavailable);
  for (const char* v : {"v5: never whole", "v6: never whole", "v7: never whole"}) {
    EXPECT_NE(nothing_whole.status().message().find(v), std::string::npos) << nothing_whole.status().ToString();
  }
  // Rank 1 commits v7 into the withdrawn buffer: v7 is whole and is what a restart gets.
  std::vector<std::byte>& v7_rank1 = v6[1];
  v7_rank1 = Expected(1, 7);
  ASSERT_TRUE(live[1]->Publish(7, v7_rank1).ok());
  std::fill(mine.begin(), mine.end(), std::byte{0});
  auto newest = CatchUpFromLiveEngines(registry_, model_, restarted, 3, mine, {.stall_timeout_s = 20});
  ASSERT_TRUE(newest.ok()) << newest.status().ToString();
  EXPECT_EQ(newest->version, 7u);
  EXPECT_EQ(newest->attempts, 1);
  EXPECT_TRUE(mine == Expected(1, 7)) << "every byte equals v7 of rank 1";
}

}  // namespace
}  // namespace shardwire
