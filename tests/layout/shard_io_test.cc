// Reading a rank's shards from a checkpoint: all of them, or only some byte intervals (a P2P
// load's disk fallback), and stopping when the interrupt hook says so. The oracle is the
// synthetic checkpoint's own generator (FillSyntheticTensor), element by element, so a read
// that puts a byte in the wrong place or writes one it was not asked for fails.
#include "shardwire/shard_io.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "box_element_index.h"
#include "describe_model.h"
#include "shardwire/checkpoint_generator.h"
#include "shardwire/model_config.h"
#include "shardwire/model_identity.h"
#include "shardwire/model_layouts.h"

namespace shardwire {
namespace {

constexpr std::byte kUntouched{0xa5};
constexpr std::uint64_t kSeed = 7;

using layout_test::Describe;

// A small Llama, BF16: every projection is split by tp=2, the norms are replicated.
ModelDescription SmallLlama() {
  return Describe(R"({"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2,
      "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 96, "vocab_size": 128,
      "torch_dtype": "bfloat16"})");
}

// A Llama whose (tied) embedding is 80 MiB of BF16, more than kInterruptCheckBytes.
ModelDescription BigEmbedding() {
  return Describe(R"({"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 1,
      "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 96, "vocab_size": 655360,
      "tie_word_embeddings": true, "torch_dtype": "bfloat16"})");
}

class ShardIoTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::path(::testing::TempDir()) /
           fmt::format("shard_io_{}_{}", ::getpid(), ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  Checkpoint Write(const ModelDescription& model) {
    const std::string path = (dir_ / "model.safetensors").string();
    GeneratedCheckpointOptions o;
    o.seed = kSeed;
    EXPECT_TRUE(GenerateCheckpoint(model, path, o).ok());
    auto ck = Checkpoint::Open(path);
    EXPECT_TRUE(ck.ok()) << ck.status().ToString();
    return std::move(*ck);
  }

  // The oracle: rank `rank`'s buffer built from the generator, element by element. Shares no
  // placement code with shard_io.cc (which cuts boxes into runs with ForEachContiguousRun):
  // each element's global row-major index is computed from its index within the box.
  static std::vector<std::byte> Expected(const Layout& layout, int rank) {
    const RankShards& shards = layout.rank(rank);
    std::vector<std::byte> out(shards.buffer_bytes, std::byte{0});
    for (const ShardRef& shard : shards.shards) {
      const TensorSpec& spec = layout.tensors()[shard.tensor];
      const std::size_t esize = DTypeSize(spec.dtype);
      std::int64_t numel = 1;
      for (std::int64_t e : spec.shape) numel *= e;
      std::vector<std::byte> whole(static_cast<std::size_t>(numel) * esize);
      EXPECT_TRUE(FillSyntheticTensor(spec, kSeed, 0, whole).ok());
      for (std::int64_t local = 0; local < shard.box.numel(); ++local) {
        const std::int64_t global = testing_util::GlobalIndexOfBoxElement(shard.box, spec.shape, local);
        std::memcpy(out.data() + shard.byte_offset + static_cast<std::size_t>(local) * esize,
                    whole.data() + static_cast<std::size_t>(global) * esize, esize);
      }
    }
    return out;
  }

  std::filesystem::path dir_;
};

TEST_F(ShardIoTest, TheWholeRankMatchesTheGenerator) {
  const ModelDescription model = SmallLlama();
  const Checkpoint ck = Write(model);
  auto layout = MakeLayoutFromString(model, "tp=2");
  ASSERT_TRUE(layout.ok());
  for (int rank = 0; rank < 2; ++rank) {
    std::vector<std::byte> buffer(layout->rank(rank).buffer_bytes, std::byte{0});
    ASSERT_TRUE(LoadShardsFromCheckpoint(ck, *layout, rank, buffer).ok());
    EXPECT_EQ(buffer, Expected(*layout, rank)) << "rank " << rank;
  }
}

// Intervals that start and end inside shards and inside rows of a column-split (dim 1) shard:
// exactly those bytes are written, every other byte keeps what it held.
TEST_F(ShardIoTest, OnlyTheIntervalsAskedForAreWritten) {
  const ModelDescription model = SmallLlama();
  const Checkpoint ck = Write(model);
  auto layout = MakeLayoutFromString(model, "tp=2");
  ASSERT_TRUE(layout.ok());
  const int rank = 1;
  const std::vector<std::byte> expected = Expected(*layout, rank);
  const std::uint64_t size = expected.size();
  ASSERT_GT(size, 40000u);
  // A shard split along dim 1 (o_proj, down_proj: each row of it is a run of its own): one
  // interval from inside its first row to inside its third.
  const ShardRef* split = nullptr;
  for (const ShardRef& shard : layout->rank(rank).shards) {
    const TensorSpec& spec = layout->tensors()[shard.tensor];
    if (spec.shape.size() == 2 && shard.box.shape[1] < spec.shape[1]) split = &shard;
  }
  ASSERT_NE(split, nullptr);
  const std::uint64_t row =
      static_cast<std::uint64_t>(split->box.shape[1]) * DTypeSize(layout->tensors()[split->tensor].dtype);
  const BufferInterval rows{split->byte_offset + 5, split->byte_offset + 2 * row + 7};
  std::vector<BufferInterval> only = {{0, 3}, {17, 4099}, {10001, 10002}, rows, {size - 5, size}};
  std::sort(only.begin(), only.end(),
            [](const BufferInterval& a, const BufferInterval& b) { return a.begin < b.begin; });
  for (std::size_t i = 1; i < only.size(); ++i) ASSERT_LT(only[i - 1].end, only[i].begin) << "the test's own intervals";
  std::vector<std::byte> buffer(size, kUntouched);
  ShardReadOptions read;
  read.only = std::span<const BufferInterval>(only);
  ASSERT_TRUE(LoadShardsFromCheckpoint(ck, *layout, rank, buffer, read).ok());
  std::size_t k = 0, written = 0;
  for (std::uint64_t i = 0; i < size; ++i) {
    while (k < only.size() && only[k].end <= i) ++k;
    const bool wanted = k < only.size() && only[k].begin <= i;
    if (wanted) {
      ++written;
      ASSERT_EQ(buffer[i], expected[i]) << "byte " << i << " was asked for";
    } else {
      ASSERT_EQ(buffer[i], kUntouched) << "byte " << i << " was not asked for";
    }
  }
  EXPECT_EQ(written, 3u + 4082u + 1u + (2 * row + 2) + 5u);
  // No interval: nothing written.
  std::vector<std::byte> none(size, kUntouched);
  read.only = std::span<const BufferInterval>();
  ASSERT_TRUE(LoadShardsFromCheckpoint(ck, *layout, rank, none, read).ok());
  EXPECT_EQ(none, std::vector<std::byte>(size, kUntouched));
}

TEST_F(ShardIoTest, BadIntervalsAreRefusedBeforeAnyByteIsWritten) {
  const ModelDescription model = SmallLlama();
  const Checkpoint ck = Write(model);
  auto layout = MakeLayoutFromString(model, "tp=2");
  ASSERT_TRUE(layout.ok());
  const std::uint64_t size = layout->rank(0).buffer_bytes;
  const std::vector<std::vector<BufferInterval>> bad = {
      {{10, 20}, {5, 8}},      // not sorted
      {{10, 20}, {15, 30}},    // overlapping
      {{10, 10}},              // empty
      {{size - 4, size + 1}},  // beyond the buffer
  };
  for (const auto& only : bad) {
    std::vector<std::byte> buffer(size, kUntouched);
    ShardReadOptions read;
    read.only = std::span<const BufferInterval>(only);
    const Status s = LoadShardsFromCheckpoint(ck, *layout, 0, buffer, read);
    EXPECT_EQ(s.code(), ErrorCode::kInvalidArgument) << s.ToString();
    EXPECT_NE(s.message().find("rank 0"), std::string::npos) << s.ToString();
    EXPECT_EQ(buffer, std::vector<std::byte>(size, kUntouched)) << s.ToString();
  }
}

// A tensor of another shape anywhere in the rank fails the read before its first byte.
TEST_F(ShardIoTest, AMismatchedTensorIsFoundBeforeAnyByteIsWritten) {
  ModelDescription model = SmallLlama();
  const Checkpoint ck = Write(model);
  model.tensors.back().spec.shape[0] += 2;  // the checkpoint's last tensor is now "wrong"
  auto layout = MakeLayoutFromString(model, "tp=1");
  ASSERT_TRUE(layout.ok());
  std::vector<std::byte> buffer(layout->rank(0).buffer_bytes, kUntouched);
  const Status s = LoadShardsFromCheckpoint(ck, *layout, 0, buffer);
  EXPECT_EQ(s.code(), ErrorCode::kLayoutMismatch) << s.ToString();
  EXPECT_NE(s.message().find(model.tensors.back().spec.name), std::string::npos) << s.ToString();
  EXPECT_EQ(buffer, std::vector<std::byte>(buffer.size(), kUntouched));
}

// The hook is asked before the first byte and after every kInterruptCheckBytes, also inside one
// large tensor; its first non-OK status ends the read with no byte written after it.
TEST_F(ShardIoTest, TheInterruptStopsAReadAndAHashInsideALargeTensor) {
  const ModelDescription model = BigEmbedding();
  const Checkpoint ck = Write(model);
  auto layout = MakeLayoutFromString(model, "tp=1");
  ASSERT_TRUE(layout.ok());
  const std::uint64_t size = layout->rank(0).buffer_bytes;
  ASSERT_GT(size, kInterruptCheckBytes + 4096);

  int calls = 0;
  ShardReadOptions read;
  read.interrupt = [&]() -> Status { return ++calls == 2 ? Unavailable("stop here") : Status::Ok(); };
  std::vector<std::byte> buffer(size, kUntouched);
  const Status s = LoadShardsFromCheckpoint(ck, *layout, 0, buffer, read);
  EXPECT_EQ(s.code(), ErrorCode::kUnavailable) << s.ToString();
  EXPECT_EQ(s.message(), "stop here");
  EXPECT_EQ(calls, 2);
  const std::vector<std::byte> expected = Expected(*layout, 0);
  const auto cut = static_cast<std::ptrdiff_t>(kInterruptCheckBytes);
  ASSERT_EQ(layout->rank(0).shards[0].byte_offset, 0u);
  ASSERT_GT(layout->tensors()[layout->rank(0).shards[0].tensor].nbytes(), kInterruptCheckBytes);
  EXPECT_TRUE(std::equal(buffer.begin(), buffer.begin() + cut, expected.begin())) << "the first 64 MiB";
  EXPECT_TRUE(std::all_of(buffer.begin() + cut, buffer.end(), [](std::byte b) { return b == kUntouched; }))
      << "bytes written after the interrupt";

  // Never stopped: every byte, the hook asked once before and once per 64 MiB.
  calls = 0;
  read.interrupt = [&] {
    ++calls;
    return Status::Ok();
  };
  ASSERT_TRUE(LoadShardsFromCheckpoint(ck, *layout, 0, buffer, read).ok());
  EXPECT_EQ(buffer, expected);
  EXPECT_EQ(calls, 1 + static_cast<int>(size / kInterruptCheckBytes));

  // The same hook stops CheckpointRevision; asked or not, the revision is the same.
  auto plain = CheckpointRevision(ck);
  ASSERT_TRUE(plain.ok());
  calls = 0;
  auto asked = CheckpointRevision(ck, [&] {
    ++calls;
    return Status::Ok();
  });
  ASSERT_TRUE(asked.ok());
  EXPECT_EQ(*asked, *plain);
  std::uint64_t data_bytes = 0;
  for (const TensorSpec& t : ck.tensors()) data_bytes += t.nbytes();
  EXPECT_EQ(calls, static_cast<int>(ck.tensors().size() + data_bytes / kInterruptCheckBytes))
      << "before each tensor and at each 64 MiB hashed";
  auto stopped = CheckpointRevision(ck, [] { return TimedOut("deadline"); });
  EXPECT_EQ(stopped.status().code(), ErrorCode::kTimedOut) << stopped.status().ToString();
}

}  // namespace
}  // namespace shardwire
