// WriteSafetensors / WriteSafetensorsStreaming, read back by SafetensorsFile and by the
// independent Python oracle.
#include <unistd.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "model/test_util.h"
#include "shardwire/safetensors.h"

namespace shardwire {
namespace {

using testing::Fnv1a64;
using testing::Hex16;
using testing::RunOracle;
using testing::TempDir;

std::vector<std::byte> Pattern(std::size_t n, int salt) {
  std::vector<std::byte> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<std::byte>((i * 31 + static_cast<std::size_t>(salt)) & 0xFF);
  return v;
}

std::uint64_t LeadingU64(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  unsigned char b[8] = {};
  in.read(reinterpret_cast<char*>(b), 8);
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | b[i];
  return v;
}

TEST(SafetensorsRoundTrip, WriteThenRead) {
  TempDir dir;
  const auto w = Pattern(3 * 5 * 2, 1);  // BF16 [3,5]
  const auto b = Pattern(7, 2);          // U8 [7]: odd size, next tensor unaligned
  const auto s = Pattern(8, 3);          // F64 scalar
  const std::vector<TensorView> tensors = {
      {{"z.weight", DType::kBF16, {3, 5}}, w},
      {{"a.bias", DType::kU8, {7}}, b},
      {{"empty", DType::kF32, {0, 4}}, {}},
      {{"scalar", DType::kF64, {}}, s},
  };
  const std::string path = dir.File("rt.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, tensors, {{"format", "pt"}, {"step", "7"}}).ok());
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp." + std::to_string(getpid())));
  EXPECT_EQ(LeadingU64(path) % 8, 0u);  // header padded to a multiple of 8

  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  EXPECT_EQ(file->data_offset(), 8 + LeadingU64(path));
  EXPECT_EQ(file->metadata(), (std::map<std::string, std::string>{{"format", "pt"}, {"step", "7"}}));
  // Written in the given order, so data-offset order is the given order (the zero-size
  // tensor sits at the same offset as the scalar after it and sorts first).
  ASSERT_EQ(file->tensors().size(), 4u);
  EXPECT_EQ(file->tensors()[0].name, "z.weight");
  EXPECT_EQ(file->tensors()[1].name, "a.bias");
  EXPECT_EQ(file->tensors()[2].name, "empty");
  EXPECT_EQ(file->tensors()[3].name, "scalar");
  EXPECT_EQ(file->data_size(), w.size() + b.size() + s.size());
  for (const auto& t : tensors) {
    auto got = file->Get(t.spec.name);
    ASSERT_TRUE(got.ok()) << t.spec.name;
    EXPECT_EQ(got->spec, t.spec);
    ASSERT_EQ(got->data.size(), t.data.size());
    // std::ranges::equal, not memcmp: a zero-size tensor has data() == nullptr, and memcmp
    // with a null pointer is undefined even for length 0 (UBSan reports it).
    EXPECT_TRUE(std::ranges::equal(got->data, t.data)) << t.spec.name;
  }

  // The independent reader agrees.
  const auto oracle = RunOracle(path);
  ASSERT_EQ(oracle.size(), 5u);
  EXPECT_EQ(oracle[1], "z.weight BF16 3,5 0 30 " + Hex16(Fnv1a64(w)));
  EXPECT_EQ(oracle[2], "a.bias U8 7 30 37 " + Hex16(Fnv1a64(b)));
  EXPECT_EQ(oracle[3], "empty F32 0,4 37 37 " + Hex16(Fnv1a64({})));
  EXPECT_EQ(oracle[4], "scalar F64 - 37 45 " + Hex16(Fnv1a64(s)));
}

TEST(SafetensorsRoundTrip, OverwritesAtomically) {
  TempDir dir;
  const std::string path = dir.File("x.safetensors");
  const auto one = Pattern(4, 9);
  ASSERT_TRUE(WriteSafetensors(path, {{{"a", DType::kF32, {1}}, one}}).ok());
  ASSERT_TRUE(WriteSafetensors(path, {{{"b", DType::kI16, {2}}, one}}).ok());
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok());
  EXPECT_FALSE(file->Contains("a"));
  EXPECT_TRUE(file->Contains("b"));
}

TEST(SafetensorsRoundTrip, WriterRejectsBadInput) {
  TempDir dir;
  const std::string path = dir.File("bad.safetensors");
  const auto four = Pattern(4, 0);
  Status dup = WriteSafetensors(path, {{{"a", DType::kF32, {1}}, four}, {{"a", DType::kF32, {1}}, four}});
  EXPECT_EQ(dup.code(), ErrorCode::kInvalidArgument);
  EXPECT_MESSAGE_HAS(dup, "duplicate");
  Status size = WriteSafetensors(path, {{{"w", DType::kF32, {2}}, four}});
  EXPECT_EQ(size.code(), ErrorCode::kInvalidArgument);
  EXPECT_MESSAGE_HAS(size, "\"w\"");
  Status reserved = WriteSafetensors(path, {{{"__metadata__", DType::kF32, {1}}, four}});
  EXPECT_EQ(reserved.code(), ErrorCode::kInvalidArgument);
  EXPECT_FALSE(std::filesystem::exists(path));
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp." + std::to_string(getpid())));

  const std::string unwritable = dir.File("no/such/dir/x.safetensors");
  Status io = WriteSafetensors(unwritable, {{{"a", DType::kF32, {1}}, four}});
  EXPECT_EQ(io.code(), ErrorCode::kIoError);
  EXPECT_MESSAGE_HAS(io, unwritable);
}

TEST(SafetensorsRoundTrip, StreamingWriterFewMegabytes) {
  TempDir dir;
  const std::string path = dir.File("stream.safetensors");
  const std::vector<TensorSpec> specs = {
      {"big", DType::kBF16, {1024, 1536}},   // 3 MiB
      {"odd", DType::kU8, {12345}},          // not a multiple of the chunk
      {"none", DType::kF32, {0}},
      {"f32", DType::kF32, {300000}},        // 1.2 MB
  };
  constexpr std::size_t kChunk = 64 * 1024;
  std::map<std::string, std::uint64_t> next_offset;
  std::size_t calls = 0;
  auto byte_at = [](const std::string& name, std::uint64_t i) {
    return static_cast<std::byte>((i * 7 + name.size() * 13 + (i >> 9)) & 0xFF);
  };
  auto fill = [&](const TensorSpec& spec, std::uint64_t offset, std::span<std::byte> out) {
    ++calls;
    EXPECT_LE(out.size(), kChunk);
    EXPECT_EQ(offset, next_offset[spec.name]) << "chunks must arrive in order";
    next_offset[spec.name] = offset + out.size();
    for (std::size_t i = 0; i < out.size(); ++i) out[i] = byte_at(spec.name, offset + i);
    return Status::Ok();
  };
  ASSERT_TRUE(WriteSafetensorsStreaming(path, specs, fill, {}, kChunk).ok());
  EXPECT_EQ(calls, 48u + 1u + 0u + 19u);  // ceil(bytes / 64 KiB) per tensor, none when empty
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  for (const auto& spec : specs) {
    EXPECT_EQ(next_offset[spec.name], spec.nbytes()) << spec.name;
    auto view = file->Get(spec.name);
    ASSERT_TRUE(view.ok());
    EXPECT_EQ(view->spec, spec);
    std::size_t wrong = 0;
    for (std::size_t i = 0; i < view->data.size(); ++i) wrong += view->data[i] != byte_at(spec.name, i);
    EXPECT_EQ(wrong, 0u) << spec.name;
  }
  const auto oracle = RunOracle(path);
  ASSERT_EQ(oracle.size(), specs.size() + 1);
  EXPECT_EQ(oracle[1].substr(0, oracle[1].rfind(' ')), "big BF16 1024,1536 0 3145728");
}

TEST(SafetensorsRoundTrip, StreamingWriterErrors) {
  TempDir dir;
  const std::string path = dir.File("s.safetensors");
  const std::vector<TensorSpec> specs = {{"t", DType::kF32, {1000}}};
  auto ok_fill = [](const TensorSpec&, std::uint64_t, std::span<std::byte> out) {
    std::memset(out.data(), 0, out.size());
    return Status::Ok();
  };
  EXPECT_EQ(WriteSafetensorsStreaming(path, specs, ok_fill, {}, 12).code(), ErrorCode::kInvalidArgument);
  auto failing = [](const TensorSpec&, std::uint64_t offset, std::span<std::byte>) {
    return offset >= 1024 ? VerificationFailed("source gone") : Status::Ok();
  };
  Status s = WriteSafetensorsStreaming(path, specs, failing, {}, 1024);
  EXPECT_EQ(s.code(), ErrorCode::kVerificationFailed);
  EXPECT_MESSAGE_HAS(s, "source gone");
  EXPECT_MESSAGE_HAS(s, "\"t\"");
  EXPECT_FALSE(std::filesystem::exists(path));
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp." + std::to_string(getpid())));
}

}  // namespace
}  // namespace shardwire
