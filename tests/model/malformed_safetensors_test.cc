// SafetensorsFile::Open on hand-built broken files: each error has its code and a
// message naming the file and (where there is one) the tensor.
#include <gtest/gtest.h>

#include "model/test_util.h"
#include "shardwire/safetensors.h"

namespace shardwire {
namespace {

using testing::RawSafetensors;
using testing::TempDir;
using testing::WriteBytes;

// Opens a file holding `bytes` and returns the error (fails the test if it opened).
Status OpenBroken(const TempDir& dir, const std::string& bytes, std::string* path_out) {
  *path_out = dir.File("broken.safetensors");
  WriteBytes(*path_out, bytes);
  auto file = SafetensorsFile::Open(*path_out);
  EXPECT_FALSE(file.ok()) << "opened a broken file";
  return file.ok() ? Status::Ok() : file.status();
}

std::string F32Entry(const std::string& name, const std::string& shape, int begin, int end) {
  return "\"" + name + "\":{\"dtype\":\"F32\",\"shape\":" + shape + ",\"data_offsets\":[" +
         std::to_string(begin) + "," + std::to_string(end) + "]}";
}

TEST(MalformedSafetensors, ShorterThanEightBytes) {
  TempDir dir;
  std::string path;
  Status s = OpenBroken(dir, std::string("\x10\x00\x00", 3), &path);
  EXPECT_EQ(s.code(), ErrorCode::kCorruptData);
  EXPECT_MESSAGE_HAS(s, path);
  EXPECT_MESSAGE_HAS(s, "truncated");
}

// A shape nested 100,000 levels deep: printing it in the error message recursed once per level
// and overflowed the stack (SIGSEGV). Refused while parsing, naming the file.
TEST(MalformedSafetensors, AHeaderNestedDeeperThanAnyRealOneIsRefusedWithoutCrashing) {
  TempDir dir;
  std::string path;
  const std::string deep = std::string(100'000, '[') + std::string(100'000, ']');
  Status s = OpenBroken(dir, RawSafetensors("{" + F32Entry("w", deep, 0, 0) + "}", ""), &path);
  EXPECT_EQ(s.code(), ErrorCode::kCorruptData);
  EXPECT_MESSAGE_HAS(s, path);
  EXPECT_MESSAGE_HAS(s, "nested deeper than 64 levels");
}

TEST(MalformedSafetensors, EmptyFile) {
  TempDir dir;
  std::string path;
  Status s = OpenBroken(dir, "", &path);
  EXPECT_EQ(s.code(), ErrorCode::kCorruptData);
  EXPECT_MESSAGE_HAS(s, path);
}

TEST(MalformedSafetensors, HeaderLengthPastEndOfFile) {
  TempDir dir;
  std::string path;
  const std::string header = "{\"a\":1}";
  Status s = OpenBroken(dir, RawSafetensors(header, "", 1000), &path);
  EXPECT_EQ(s.code(), ErrorCode::kCorruptData);
  EXPECT_MESSAGE_HAS(s, path);
  EXPECT_MESSAGE_HAS(s, "1000");
}

TEST(MalformedSafetensors, HeaderLengthAbsurd) {
  TempDir dir;
  std::string path;
  Status s = OpenBroken(dir, RawSafetensors("{}", "", 100'000'001), &path);
  EXPECT_EQ(s.code(), ErrorCode::kCorruptData);
  EXPECT_MESSAGE_HAS(s, path);
  EXPECT_MESSAGE_HAS(s, "100000001");
}

TEST(MalformedSafetensors, InvalidJson) {
  TempDir dir;
  std::string path;
  Status s = OpenBroken(dir, RawSafetensors("{\"w\":{\"dtype\":\"F32\",", ""), &path);
  EXPECT_EQ(s.code(), ErrorCode::kCorruptData);
  EXPECT_MESSAGE_HAS(s, path);
  EXPECT_MESSAGE_HAS(s, "JSON");
}

TEST(MalformedSafetensors, HeaderNotAnObject) {
  TempDir dir;
  std::string path;
  Status s = OpenBroken(dir, RawSafetensors("[1,2,3]", ""), &path);
  EXPECT_EQ(s.code(), ErrorCode::kCorruptData);
  EXPECT_MESSAGE_HAS(s, path);
  EXPECT_MESSAGE_HAS(s, "not a JSON object");
}

TEST(MalformedSafetensors, EntryMissingDtype) {
  TempDir dir;
  std::string path;
  Status s = OpenBroken(
      dir, RawSafetensors("{\"model.norm.weight\":{\"shape\":[2],\"data_offsets\":[0,8]}}",
                          std::string(8, '\0')),
      &path);
  EXPECT_EQ(s.code(), ErrorCode::kCorruptData);
  EXPECT_MESSAGE_HAS(s, path);
  EXPECT_MESSAGE_HAS(s, "model.norm.weight");
  EXPECT_MESSAGE_HAS(s, "dtype");
}

TEST(MalformedSafetensors, ShapeOfWrongType) {
  TempDir dir;
  std::string path;
  Status s = OpenBroken(dir, RawSafetensors("{" + F32Entry("w", "\"2\"", 0, 8) + "}",
                                            std::string(8, '\0')),
                        &path);
  EXPECT_EQ(s.code(), ErrorCode::kCorruptData);
  EXPECT_MESSAGE_HAS(s, path);
  EXPECT_MESSAGE_HAS(s, "\"w\"");
  EXPECT_MESSAGE_HAS(s, "shape");
}

TEST(MalformedSafetensors, UnknownDtype) {
  TempDir dir;
  std::string path;
  Status s = OpenBroken(
      dir, RawSafetensors("{\"lm_head.weight\":{\"dtype\":\"F12\",\"shape\":[2],\"data_offsets\":[0,4]}}",
                          std::string(4, '\0')),
      &path);
  EXPECT_EQ(s.code(), ErrorCode::kCorruptData);
  EXPECT_MESSAGE_HAS(s, path);
  EXPECT_MESSAGE_HAS(s, "lm_head.weight");
  EXPECT_MESSAGE_HAS(s, "F12");
}

TEST(MalformedSafetensors, NegativeDimension) {
  TempDir dir;
  std::string path;
  Status s = OpenBroken(dir, RawSafetensors("{" + F32Entry("neg", "[-2,1]", 0, 8) + "}",
                                            std::string(8, '\0')),
                        &path);
  EXPECT_EQ(s.code(), ErrorCode::kCorruptData);
  EXPECT_MESSAGE_HAS(s, path);
  EXPECT_MESSAGE_HAS(s, "\"neg\"");
  EXPECT_MESSAGE_HAS(s, "negative");
}

// Valid safetensors, but more dimensions than any layout holds (kMaxTensorDims): refused at open,
// before rules inference or a layout meets it (a 64-dimension tensor crashed `seed`).
TEST(MalformedSafetensors, MoreDimensionsThanShardwireHandles) {
  TempDir dir;
  std::string path;
  Status s = OpenBroken(
      dir, RawSafetensors("{" + F32Entry("deep", "[1,1,1,1,1,1,2]", 0, 8) + "}", std::string(8, '\0')), &path);
  EXPECT_EQ(s.code(), ErrorCode::kInvalidArgument) << s.ToString();
  EXPECT_MESSAGE_HAS(s, path);
  EXPECT_MESSAGE_HAS(s, "\"deep\": 7 dimensions (Shardwire handles at most 6)");
  const std::string six = dir.File("six.safetensors");
  WriteBytes(six, RawSafetensors("{" + F32Entry("deep", "[1,1,1,1,1,2]", 0, 8) + "}", std::string(8, '\0')));
  EXPECT_TRUE(SafetensorsFile::Open(six).ok());
}

TEST(MalformedSafetensors, BeginAfterEnd) {
  TempDir dir;
  std::string path;
  Status s = OpenBroken(dir, RawSafetensors("{" + F32Entry("w", "[0]", 8, 4) + "}",
                                            std::string(8, '\0')),
                        &path);
  EXPECT_EQ(s.code(), ErrorCode::kCorruptData);
  EXPECT_MESSAGE_HAS(s, path);
  EXPECT_MESSAGE_HAS(s, "\"w\"");
  EXPECT_MESSAGE_HAS(s, "begin > end");
}

TEST(MalformedSafetensors, OffsetsPastDataSection) {
  TempDir dir;
  std::string path;
  // [4,2] F32 needs 32 bytes, offsets say [0,32] but only 16 bytes of data follow.
  Status s = OpenBroken(dir, RawSafetensors("{" + F32Entry("model.embed_tokens.weight", "[4,2]", 0, 32) + "}",
                                            std::string(16, '\0')),
                        &path);
  EXPECT_EQ(s.code(), ErrorCode::kCorruptData);
  EXPECT_MESSAGE_HAS(s, path);
  EXPECT_MESSAGE_HAS(s, "model.embed_tokens.weight");
  EXPECT_MESSAGE_HAS(s, "past the data section");
}

// A header naming a tensor twice: JSON parsers keep one of the two silently (nlohmann the
// last), so the file was read as holding one tensor where its writer meant two. With the same
// offsets twice nothing else noticed.
TEST(MalformedSafetensors, ATensorNamedTwiceIsCorrupt) {
  TempDir dir;
  std::string path;
  Status s = OpenBroken(dir,
                        RawSafetensors("{" + F32Entry("w", "[4]", 0, 16) + "," + F32Entry("w", "[4]", 0, 16) + "}",
                                       std::string(16, '\0')),
                        &path);
  EXPECT_EQ(s.code(), ErrorCode::kCorruptData) << s.ToString();
  EXPECT_MESSAGE_HAS(s, path);
  EXPECT_MESSAGE_HAS(s, "duplicate key \"w\"");
}

TEST(MalformedSafetensors, OverlappingTensors) {
  TempDir dir;
  std::string path;
  // a = [0,16), b = [8,24): both of the right size, overlapping by 8 bytes.
  Status s = OpenBroken(dir, RawSafetensors("{" + F32Entry("a", "[4]", 0, 16) + "," +
                                                F32Entry("b", "[4]", 8, 24) + "}",
                                            std::string(24, '\0')),
                        &path);
  EXPECT_EQ(s.code(), ErrorCode::kCorruptData);
  EXPECT_MESSAGE_HAS(s, path);
  EXPECT_MESSAGE_HAS(s, "overlaps");
  EXPECT_MESSAGE_HAS(s, "\"a\"");
  EXPECT_MESSAGE_HAS(s, "\"b\"");
}

TEST(MalformedSafetensors, SizeDisagreesWithDtypeTimesShape) {
  TempDir dir;
  std::string path;
  // F32 [3] is 12 bytes, offsets span 16.
  Status s = OpenBroken(dir, RawSafetensors("{" + F32Entry("model.norm.weight", "[3]", 0, 16) + "}",
                                            std::string(16, '\0')),
                        &path);
  EXPECT_EQ(s.code(), ErrorCode::kCorruptData);
  EXPECT_MESSAGE_HAS(s, path);
  EXPECT_MESSAGE_HAS(s, "model.norm.weight");
  EXPECT_MESSAGE_HAS(s, "12 bytes");
}

TEST(MalformedSafetensors, HoleBetweenTensors) {
  TempDir dir;
  std::string path;
  Status s = OpenBroken(dir, RawSafetensors("{" + F32Entry("a", "[1]", 0, 4) + "," +
                                                F32Entry("b", "[1]", 8, 12) + "}",
                                            std::string(12, '\0')),
                        &path);
  EXPECT_EQ(s.code(), ErrorCode::kCorruptData);
  EXPECT_MESSAGE_HAS(s, path);
  EXPECT_MESSAGE_HAS(s, "\"b\"");
  EXPECT_MESSAGE_HAS(s, "holes");
}

TEST(MalformedSafetensors, TrailingBytes) {
  TempDir dir;
  std::string path;
  Status s = OpenBroken(dir, RawSafetensors("{" + F32Entry("a", "[1]", 0, 4) + "}",
                                            std::string(6, '\0')),
                        &path);
  EXPECT_EQ(s.code(), ErrorCode::kCorruptData);
  EXPECT_MESSAGE_HAS(s, path);
  EXPECT_MESSAGE_HAS(s, "trailing");
}

TEST(MalformedSafetensors, MetadataValueNotString) {
  TempDir dir;
  std::string path;
  Status s = OpenBroken(dir, RawSafetensors("{\"__metadata__\":{\"format\":1}}", ""), &path);
  EXPECT_EQ(s.code(), ErrorCode::kCorruptData);
  EXPECT_MESSAGE_HAS(s, path);
  EXPECT_MESSAGE_HAS(s, "format");
}

// nlohmann's lexer takes a NUL byte for the end of the input: a header of valid JSON followed by
// "\0GARBAGE" (inside the declared length) was accepted.
TEST(MalformedSafetensors, ANulByteInTheHeaderIsCorrupt) {
  TempDir dir;
  std::string path;
  const std::string header = "{" + F32Entry("x", "[2]", 0, 8) + "}" + std::string("\0GARBAGE{[[", 11);
  Status s = OpenBroken(dir, RawSafetensors(header, std::string(8, '\0')), &path);
  EXPECT_EQ(s.code(), ErrorCode::kCorruptData) << s.ToString();
  EXPECT_MESSAGE_HAS(s, path);
  EXPECT_MESSAGE_HAS(s, "a NUL byte at offset " + std::to_string(header.find('\0')));
}

// A header of 250,000 tensors (a 19 MB header, well under kMaxSafetensorsHeaderBytes) opens, with
// every tensor. The callback parser used before rescanned the object's members each time one
// ended: 40,000 tensors took 32 s, 250,000 would take over 20 minutes (past ctest's timeout).
TEST(HandBuiltSafetensors, AHeaderOfAQuarterMillionTensorsOpens) {
  TempDir dir;
  constexpr int kTensors = 250'000;
  std::string header = "{";
  for (int i = 0; i < kTensors; ++i) {
    if (i > 0) header += ",";
    header += F32Entry("t" + std::to_string(i), "[1]", 4 * i, 4 * i + 4);
  }
  header += "}";
  const std::string path = dir.File("many.safetensors");
  WriteBytes(path, RawSafetensors(header, std::string(4 * kTensors, '\0')));
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  EXPECT_EQ(file->tensors().size(), static_cast<std::size_t>(kTensors));
  auto last = file->Get("t" + std::to_string(kTensors - 1));
  ASSERT_TRUE(last.ok()) << last.status().ToString();
  EXPECT_EQ(last->data.size(), 4u);
}

// A 99 MB header of empty objects (under kMaxSafetensorsHeaderBytes) is 33 million JSON values:
// the DOM built for it peaked at 3.2 GB before the reader saw it was no header. The bounds pass
// refuses it at 8 Mi values, before any DOM exists.
TEST(MalformedSafetensors, AHeaderOfMillionsOfEmptyValuesIsRefusedBeforeItIsBuilt) {
  TempDir dir;
  std::string header = "[{}";
  header.reserve(3 * 9'000'000);
  for (int i = 1; i < 9'000'000; ++i) header += ",{}";
  header += "]";
  std::string path;
  Status s = OpenBroken(dir, RawSafetensors(header, ""), &path);
  EXPECT_EQ(s.code(), ErrorCode::kCorruptData) << s.ToString();
  EXPECT_MESSAGE_HAS(s, path);
  EXPECT_MESSAGE_HAS(s, "more than 8388608 values");
}

TEST(MalformedSafetensors, MissingFileAndDirectory) {
  TempDir dir;
  auto missing = SafetensorsFile::Open(dir.File("nope.safetensors"));
  EXPECT_EQ(missing.status().code(), ErrorCode::kNotFound);
  EXPECT_MESSAGE_HAS(missing.status(), "nope.safetensors");
  auto directory = SafetensorsFile::Open(dir.path());
  EXPECT_EQ(directory.status().code(), ErrorCode::kIoError);
  EXPECT_MESSAGE_HAS(directory.status(), dir.path());
}

// The accepted corner cases: unaligned header (odd length, no padding), zero-size and
// 0-d tensors, null __metadata__, and Get of a missing name.
TEST(HandBuiltSafetensors, UnalignedHeaderZeroSizeAndScalar) {
  TempDir dir;
  const std::string header =
      "{\"__metadata__\":null,"
      "\"empty\":{\"dtype\":\"BF16\",\"shape\":[0,7],\"data_offsets\":[0,0]},"
      "\"x\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[0,3]},"
      "\"s\":{\"dtype\":\"I16\",\"shape\":[],\"data_offsets\":[3,5]}}";
  ASSERT_NE(header.size() % 8, 0u);
  const std::string path = dir.File("odd.safetensors");
  WriteBytes(path, RawSafetensors(header, std::string("\x01\x02\x03\x34\x12", 5)));
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  EXPECT_EQ(file->data_offset(), 8 + header.size());
  ASSERT_EQ(file->tensors().size(), 3u);
  EXPECT_EQ(file->tensors()[0].name, "empty");  // data-offset order: [0,0), [0,3), [3,5)
  EXPECT_EQ(file->tensors()[1].name, "x");
  EXPECT_EQ(file->tensors()[2].name, "s");
  EXPECT_TRUE(file->metadata().empty());

  auto empty = file->Get("empty");
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(empty->data.size(), 0u);
  EXPECT_EQ(empty->spec.shape, (std::vector<std::int64_t>{0, 7}));
  auto x = file->Get("x");
  ASSERT_TRUE(x.ok());
  ASSERT_EQ(x->data.size(), 3u);
  EXPECT_EQ(x->data[2], std::byte{3});
  auto s = file->Get("s");
  ASSERT_TRUE(s.ok());
  EXPECT_TRUE(s->spec.shape.empty());
  ASSERT_EQ(s->data.size(), 2u);
  EXPECT_EQ(s->data[0], std::byte{0x34});
  EXPECT_EQ(s->data[1], std::byte{0x12});

  auto missing = file->Get("model.layers.9.mlp.up_proj.weight");
  EXPECT_EQ(missing.status().code(), ErrorCode::kNotFound);
  EXPECT_MESSAGE_HAS(missing.status(), "model.layers.9.mlp.up_proj.weight");
  EXPECT_MESSAGE_HAS(missing.status(), path);
}

TEST(HandBuiltSafetensors, MoveTransfersTheMapping) {
  TempDir dir;
  const std::string path = dir.File("m.safetensors");
  WriteBytes(path, RawSafetensors("{" + F32Entry("w", "[1]", 0, 4) + "}", std::string("abcd")));
  auto opened = SafetensorsFile::Open(path);
  ASSERT_TRUE(opened.ok());
  SafetensorsFile a = std::move(opened).value();
  SafetensorsFile b = std::move(a);
  EXPECT_TRUE(a.tensors().empty());  // NOLINT(bugprone-use-after-move): documented state
  ASSERT_TRUE(b.Get("w").ok());
  EXPECT_EQ(b.Get("w")->data[3], std::byte{'d'});
}

}  // namespace
}  // namespace shardwire
