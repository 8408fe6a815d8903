// Checkpoint::Open on hand-built single files, indexes and directories.
#include <gtest/gtest.h>

#include <filesystem>

#include "model/test_util.h"
#include "shardwire/checkpoint.h"

namespace shardwire {
namespace {

using testing::RawSafetensors;
using testing::TempDir;
using testing::WriteBytes;

// A one-dimensional F32 safetensors file holding `names`, each of 2 elements.
std::string ShardBytes(const std::vector<std::string>& names) {
  std::string header = "{";
  int offset = 0;
  for (const auto& n : names) {
    if (header.size() > 1) header += ",";
    header += "\"" + n + "\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[" +
              std::to_string(offset) + "," + std::to_string(offset + 8) + "]}";
    offset += 8;
  }
  header += "}";
  std::string data;
  for (int i = 0; i < offset; ++i) data.push_back(static_cast<char>(i));
  return RawSafetensors(header, data);
}

// Writes shards a.safetensors {x, y} and b.safetensors {z} plus an index with `index_json`.
void WriteShardSet(const TempDir& dir, const std::string& index_json) {
  WriteBytes(dir.File("a.safetensors"), ShardBytes({"x", "y"}));
  WriteBytes(dir.File("b.safetensors"), ShardBytes({"z"}));
  WriteBytes(dir.File("model.safetensors.index.json"), index_json);
}

TEST(Checkpoint, IndexOpensAndResolvesShards) {
  TempDir dir;
  WriteShardSet(dir, R"({"metadata":{"total_size":24},"weight_map":{"x":"a.safetensors",
                       "y":"a.safetensors","z":"b.safetensors"}})");
  auto cp = Checkpoint::Open(dir.File("model.safetensors.index.json"));
  ASSERT_TRUE(cp.ok()) << cp.status().ToString();
  ASSERT_EQ(cp->tensors().size(), 3u);
  EXPECT_EQ(cp->tensors()[0].name, "x");
  EXPECT_EQ(cp->tensors()[2].name, "z");
  EXPECT_EQ(cp->total_bytes(), 24u);
  EXPECT_EQ(cp->files().size(), 2u);
  auto z = cp->Get("z");
  ASSERT_TRUE(z.ok());
  EXPECT_EQ(z->data.data(), cp->files()[1].Get("z")->data.data());
  EXPECT_TRUE(cp->Contains("y"));
  EXPECT_FALSE(cp->Contains("w"));
  auto missing = cp->Get("w");
  EXPECT_EQ(missing.status().code(), ErrorCode::kNotFound);
  EXPECT_MESSAGE_HAS(missing.status(), "\"w\"");
}

TEST(Checkpoint, IndexNamesMissingFile) {
  TempDir dir;
  WriteShardSet(dir, R"({"weight_map":{"x":"a.safetensors","y":"a.safetensors",
                       "z":"c-00002.safetensors"}})");
  auto cp = Checkpoint::Open(dir.File("model.safetensors.index.json"));
  EXPECT_EQ(cp.status().code(), ErrorCode::kNotFound);
  EXPECT_MESSAGE_HAS(cp.status(), "model.safetensors.index.json");
  EXPECT_MESSAGE_HAS(cp.status(), "c-00002.safetensors");
}

// An index is untrusted: a shard name that leaves the index's folder is rejected before
// any file is opened, even when the file it names exists and is a valid shard (a sibling
// folder's shard here; without the check, Open would succeed).
TEST(Checkpoint, IndexShardNameOutsideTheFolderIsRejected) {
  TempDir outer;
  std::filesystem::create_directory(outer.File("ckpt"));
  WriteBytes(outer.File("other.safetensors"), ShardBytes({"z"}));
  WriteBytes(outer.File("ckpt/a.safetensors"), ShardBytes({"x", "y"}));
  for (const std::string& shard :
       {std::string("../other.safetensors"), outer.File("other.safetensors"), std::string("")}) {
    WriteBytes(outer.File("ckpt/model.safetensors.index.json"),
               R"({"weight_map":{"x":"a.safetensors","y":"a.safetensors","z":")" + shard + R"("}})");
    auto cp = Checkpoint::Open(outer.File("ckpt/model.safetensors.index.json"));
    EXPECT_EQ(cp.status().code(), ErrorCode::kCorruptData) << shard;
    EXPECT_MESSAGE_HAS(cp.status(), "not a file inside the index's folder");
  }
  // A subfolder below the index stays allowed.
  std::filesystem::create_directory(outer.File("ckpt/sub"));
  WriteBytes(outer.File("ckpt/sub/b.safetensors"), ShardBytes({"z"}));
  WriteBytes(outer.File("ckpt/model.safetensors.index.json"),
             R"({"weight_map":{"x":"a.safetensors","y":"a.safetensors","z":"sub/b.safetensors"}})");
  EXPECT_TRUE(Checkpoint::Open(outer.File("ckpt/model.safetensors.index.json")).ok());
}

// An index whose weight_map is empty opened as a checkpoint of no tensors, so `convert` wrote an
// empty checkpoint with exit 0 while the shard beside it held tensors.
TEST(Checkpoint, AnIndexThatMapsNoTensorsIsCorrupt) {
  TempDir dir;
  WriteShardSet(dir, R"({"weight_map":{}})");
  auto cp = Checkpoint::Open(dir.File("model.safetensors.index.json"));
  EXPECT_EQ(cp.status().code(), ErrorCode::kCorruptData);
  EXPECT_MESSAGE_HAS(cp.status(), "index maps no tensors");
  EXPECT_MESSAGE_HAS(cp.status(), "model.safetensors.index.json");
}

TEST(Checkpoint, IndexNamesTensorTheShardLacks) {
  TempDir dir;
  WriteShardSet(dir, R"({"weight_map":{"x":"a.safetensors","y":"a.safetensors",
                       "z":"b.safetensors","model.norm.weight":"b.safetensors"}})");
  auto cp = Checkpoint::Open(dir.File("model.safetensors.index.json"));
  EXPECT_EQ(cp.status().code(), ErrorCode::kNotFound);
  EXPECT_MESSAGE_HAS(cp.status(), "model.norm.weight");
  EXPECT_MESSAGE_HAS(cp.status(), "b.safetensors");
}

TEST(Checkpoint, ShardHoldsUnmappedTensor) {
  TempDir dir;
  WriteShardSet(dir, R"({"weight_map":{"x":"a.safetensors","z":"b.safetensors"}})");
  auto cp = Checkpoint::Open(dir.File("model.safetensors.index.json"));
  EXPECT_EQ(cp.status().code(), ErrorCode::kCorruptData);
  EXPECT_MESSAGE_HAS(cp.status(), "\"y\"");
  EXPECT_MESSAGE_HAS(cp.status(), "a.safetensors");
}

TEST(Checkpoint, TensorInTwoShards) {
  TempDir dir;
  WriteBytes(dir.File("a.safetensors"), ShardBytes({"x", "y"}));
  WriteBytes(dir.File("b.safetensors"), ShardBytes({"y", "z"}));
  WriteBytes(dir.File("model.safetensors.index.json"),
             R"({"weight_map":{"x":"a.safetensors","y":"a.safetensors","z":"b.safetensors"}})");
  auto cp = Checkpoint::Open(dir.File("model.safetensors.index.json"));
  EXPECT_EQ(cp.status().code(), ErrorCode::kCorruptData);
  EXPECT_MESSAGE_HAS(cp.status(), "\"y\"");
  EXPECT_MESSAGE_HAS(cp.status(), "b.safetensors");
}

TEST(Checkpoint, TotalSizeMismatch) {
  TempDir dir;
  WriteShardSet(dir, R"({"metadata":{"total_size":25},"weight_map":{"x":"a.safetensors",
                       "y":"a.safetensors","z":"b.safetensors"}})");
  auto cp = Checkpoint::Open(dir.File("model.safetensors.index.json"));
  EXPECT_EQ(cp.status().code(), ErrorCode::kCorruptData);
  EXPECT_MESSAGE_HAS(cp.status(), "25");
  EXPECT_MESSAGE_HAS(cp.status(), "24");
}

TEST(Checkpoint, IndexWithoutWeightMapOrNotJson) {
  TempDir dir;
  WriteShardSet(dir, R"({"metadata":{}})");
  auto cp = Checkpoint::Open(dir.File("model.safetensors.index.json"));
  EXPECT_EQ(cp.status().code(), ErrorCode::kCorruptData);
  EXPECT_MESSAGE_HAS(cp.status(), "weight_map");
  WriteBytes(dir.File("model.safetensors.index.json"), "{\"weight_map\":");
  cp = Checkpoint::Open(dir.File("model.safetensors.index.json"));
  EXPECT_EQ(cp.status().code(), ErrorCode::kCorruptData);
  EXPECT_MESSAGE_HAS(cp.status(), "model.safetensors.index.json");
}

TEST(Checkpoint, ShardErrorsCarryTheIndexName) {
  TempDir dir;
  WriteShardSet(dir, R"({"weight_map":{"x":"a.safetensors","y":"a.safetensors","z":"b.safetensors"}})");
  WriteBytes(dir.File("b.safetensors"), "1234");  // truncated shard
  auto cp = Checkpoint::Open(dir.File("model.safetensors.index.json"));
  EXPECT_EQ(cp.status().code(), ErrorCode::kCorruptData);
  EXPECT_MESSAGE_HAS(cp.status(), "model.safetensors.index.json");
  EXPECT_MESSAGE_HAS(cp.status(), "b.safetensors");
}

TEST(Checkpoint, DirectoryPrefersIndexOverSingleCopy) {
  TempDir dir;
  WriteShardSet(dir, R"({"weight_map":{"x":"a.safetensors","y":"a.safetensors","z":"b.safetensors"}})");
  WriteBytes(dir.File("single.safetensors"), ShardBytes({"x", "y", "z"}));
  auto cp = Checkpoint::Open(dir.path());
  ASSERT_TRUE(cp.ok()) << cp.status().ToString();
  EXPECT_EQ(cp->path(), dir.File("model.safetensors.index.json"));
  EXPECT_EQ(cp->files().size(), 2u);
}

TEST(Checkpoint, DirectoryWithSeveralFilesAndNoIndex) {
  TempDir dir;
  WriteBytes(dir.File("a.safetensors"), ShardBytes({"x"}));
  WriteBytes(dir.File("b.safetensors"), ShardBytes({"y"}));
  auto cp = Checkpoint::Open(dir.path());
  EXPECT_EQ(cp.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_MESSAGE_HAS(cp.status(), "a.safetensors");
  EXPECT_MESSAGE_HAS(cp.status(), "b.safetensors");
}

TEST(Checkpoint, DirectoryWithSeveralIndexes) {
  TempDir dir;
  WriteShardSet(dir, R"({"weight_map":{"x":"a.safetensors","y":"a.safetensors","z":"b.safetensors"}})");
  WriteBytes(dir.File("other.safetensors.index.json"), R"({"weight_map":{}})");
  auto cp = Checkpoint::Open(dir.path());
  EXPECT_EQ(cp.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_MESSAGE_HAS(cp.status(), "other.safetensors.index.json");
  EXPECT_MESSAGE_HAS(cp.status(), "model.safetensors.index.json");
}

TEST(Checkpoint, EmptyDirectoryAndMissingPath) {
  TempDir dir;
  auto cp = Checkpoint::Open(dir.path());
  EXPECT_EQ(cp.status().code(), ErrorCode::kNotFound);
  EXPECT_MESSAGE_HAS(cp.status(), dir.path());
  cp = Checkpoint::Open(dir.File("absent"));
  EXPECT_EQ(cp.status().code(), ErrorCode::kNotFound);
  EXPECT_MESSAGE_HAS(cp.status(), "absent");
}

TEST(Checkpoint, ConfigPathRules) {
  TempDir dir;
  WriteBytes(dir.File("m.safetensors"), ShardBytes({"x"}));
  {
    auto cp = Checkpoint::Open(dir.File("m.safetensors"));
    ASSERT_TRUE(cp.ok());
    EXPECT_EQ(cp->config_path(), "");  // none
  }
  WriteBytes(dir.File("generation_config.json"), "{}");
  WriteBytes(dir.File("tiny_config.json"), "{}");
  {
    auto cp = Checkpoint::Open(dir.path());
    ASSERT_TRUE(cp.ok());
    EXPECT_EQ(cp->config_path(), dir.File("tiny_config.json"));  // generation_config ignored
  }
  WriteBytes(dir.File("other_config.json"), "{}");
  {
    auto cp = Checkpoint::Open(dir.path());
    ASSERT_TRUE(cp.ok());
    EXPECT_EQ(cp->config_path(), "");  // ambiguous
  }
  WriteBytes(dir.File("config.json"), "{}");
  {
    auto cp = Checkpoint::Open(dir.path());
    ASSERT_TRUE(cp.ok());
    EXPECT_EQ(cp->config_path(), dir.File("config.json"));  // config.json wins
  }
}

}  // namespace
}  // namespace shardwire
