#include "transport/metadata_blob.h"

#include <gtest/gtest.h>
#include <xxhash.h>

#include <string>

namespace shardwire {
namespace {

// Two backend sections ("ucx" with a 40-byte connection, "inproc" with 8), one
// remote key per region in each.
transport::AgentMetadata Sample(int regions = 3) {
  transport::AgentMetadata m;
  m.name = "trainer-rank-0";
  m.process = {"0f1e2d3c-boot/pid:[4026531836]", 4242, 987654321};
  transport::BackendSection ucx{"ucx", {}, {}};
  for (int i = 0; i < 40; ++i) ucx.connection.push_back(static_cast<std::byte>(i * 7));
  transport::BackendSection inproc{"inproc", std::vector<std::byte>(8, std::byte{3}), {}};
  for (int r = 0; r < regions; ++r) {
    transport::RegionRecord rec;
    rec.id = static_cast<RegionId>(r + 1);
    rec.base = 0x7f0000000000ull + static_cast<std::uint64_t>(r) * 0x100000;
    rec.length = 4096u * static_cast<std::uint64_t>(r + 1);
    m.regions.push_back(rec);
    std::vector<std::byte> key;
    for (int k = 0; k < 20 + r; ++k) key.push_back(static_cast<std::byte>(k + r));
    ucx.region_keys.push_back(key);
    inproc.region_keys.push_back(std::vector<std::byte>(8, static_cast<std::byte>(r)));
  }
  m.sections = {ucx, inproc};
  return m;
}

void PutLe(std::vector<std::byte>& b, std::size_t at, std::uint64_t v, int n) {
  for (int i = 0; i < n; ++i) b[at + static_cast<std::size_t>(i)] = static_cast<std::byte>((v >> (8 * i)) & 0xFF);
}

// Recomputes the trailing checksum so a deliberate body edit reaches the
// body-level checks.
void Reseal(std::vector<std::byte>& b) {
  const std::size_t summed = b.size() - transport::kMetadataChecksumSize;
  PutLe(b, summed, XXH64(b.data(), summed, 0), 8);
}

void ExpectCorrupt(const std::vector<std::byte>& blob, const std::string& needle) {
  auto r = transport::DecodeAgentMetadata(blob);
  ASSERT_FALSE(r.ok()) << "expected failure mentioning '" << needle << "'";
  EXPECT_EQ(r.status().code(), ErrorCode::kCorruptData) << r.status().ToString();
  EXPECT_NE(r.status().message().find(needle), std::string::npos) << r.status().ToString();
}

// Body offsets for Sample(): name length field at 16, name at 20.
constexpr std::size_t kNameLenAt = transport::kMetadataHeaderSize;
std::size_t HostLenAt(const transport::AgentMetadata& m) { return kNameLenAt + 4 + m.name.size(); }
std::size_t CountAt(const transport::AgentMetadata& m) { return HostLenAt(m) + 4 + m.process.host.size() + 4 + 8; }
std::size_t SectionCountAt(const transport::AgentMetadata& m) { return CountAt(m) + 4 + 20 * m.regions.size(); }
// The first section's tag length field, connection length field and first key length field.
std::size_t TagLenAt(const transport::AgentMetadata& m) { return SectionCountAt(m) + 4; }
std::size_t ConnLenAt(const transport::AgentMetadata& m) { return TagLenAt(m) + 4 + m.sections[0].backend.size(); }
std::size_t FirstKeyLenAt(const transport::AgentMetadata& m) { return ConnLenAt(m) + 4 + m.sections[0].connection.size(); }

TEST(MetadataBlob, RoundTrips) {
  const transport::AgentMetadata m = Sample();
  const auto blob = transport::EncodeAgentMetadata(m);
  auto r = transport::DecodeAgentMetadata(blob);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(*r, m);
}

TEST(MetadataBlob, RoundTripsWithNoRegions) {
  const transport::AgentMetadata m = Sample(0);
  auto r = transport::DecodeAgentMetadata(transport::EncodeAgentMetadata(m));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(*r, m);
}

TEST(MetadataBlob, SizeGrowsLinearlyWithRegions) {
  transport::AgentMetadata m = Sample(0);
  const std::size_t empty = transport::EncodeAgentMetadata(m).size();
  for (int i = 0; i < 100; ++i) {
    m.regions.push_back(transport::RegionRecord{static_cast<RegionId>(i + 1), 0x1000, 4096});
    m.sections[0].region_keys.push_back(std::vector<std::byte>(32));
    m.sections[1].region_keys.push_back(std::vector<std::byte>(8));
  }
  // Per region: id, base, length (20 bytes) and in each section a u32 length and the key.
  EXPECT_EQ(transport::EncodeAgentMetadata(m).size(), empty + 100 * (20 + (4 + 32) + (4 + 8)));
}

TEST(MetadataBlob, TruncatedBelowHeader) {
  auto blob = transport::EncodeAgentMetadata(Sample());
  blob.resize(transport::kMetadataHeaderSize + transport::kMetadataChecksumSize - 1);
  ExpectCorrupt(blob, "truncated");
  ExpectCorrupt({}, "truncated");
}

TEST(MetadataBlob, TruncatedBody) {
  auto blob = transport::EncodeAgentMetadata(Sample());
  blob.resize(blob.size() - 5);
  ExpectCorrupt(blob, "truncated");
}

TEST(MetadataBlob, TrailingBytes) {
  auto blob = transport::EncodeAgentMetadata(Sample());
  blob.push_back(std::byte{0});
  ExpectCorrupt(blob, "trailing bytes");
}

TEST(MetadataBlob, BadMagic) {
  auto blob = transport::EncodeAgentMetadata(Sample());
  blob[0] = std::byte{'X'};
  ExpectCorrupt(blob, "bad magic");
}

TEST(MetadataBlob, WrongVersion) {
  auto blob = transport::EncodeAgentMetadata(Sample());
  PutLe(blob, 4, transport::kMetadataVersion + 1, 2);
  ExpectCorrupt(blob, "unsupported version");
}

TEST(MetadataBlob, BadChecksum) {
  auto blob = transport::EncodeAgentMetadata(Sample());
  blob[kNameLenAt + 6] ^= std::byte{0x01};  // a byte of the name
  ExpectCorrupt(blob, "checksum mismatch");
  auto blob2 = transport::EncodeAgentMetadata(Sample());
  blob2.back() ^= std::byte{0x80};  // the checksum itself
  ExpectCorrupt(blob2, "checksum mismatch");
}

TEST(MetadataBlob, NameLengthOverrunsBuffer) {
  auto blob = transport::EncodeAgentMetadata(Sample());
  PutLe(blob, kNameLenAt, 0xFFFFFF, 4);
  Reseal(blob);
  ExpectCorrupt(blob, "name length 16777215 overruns");
}

TEST(MetadataBlob, ConnectionLengthOverrunsBuffer) {
  const transport::AgentMetadata m = Sample();
  auto blob = transport::EncodeAgentMetadata(m);
  PutLe(blob, ConnLenAt(m), 1u << 30, 4);
  Reseal(blob);
  ExpectCorrupt(blob, "section 0 (ucx) connection length 1073741824 overruns");
}

TEST(MetadataBlob, SectionCountChecks) {
  const transport::AgentMetadata m = Sample();
  auto zero = transport::EncodeAgentMetadata(m);
  PutLe(zero, SectionCountAt(m), 0, 4);
  Reseal(zero);
  ExpectCorrupt(zero, "no backend section");
  auto many = transport::EncodeAgentMetadata(m);
  PutLe(many, SectionCountAt(m), transport::kMaxMetadataSections + 1, 4);
  Reseal(many);
  ExpectCorrupt(many, "too many sections");
  transport::AgentMetadata one = Sample();
  one.sections.resize(1);
  auto r = transport::DecodeAgentMetadata(transport::EncodeAgentMetadata(one));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(*r, one);
}

TEST(MetadataBlob, BackendTagChecks) {
  transport::AgentMetadata empty = Sample();
  empty.sections[0].backend.clear();
  ExpectCorrupt(transport::EncodeAgentMetadata(empty), "section 0 has an empty backend tag");
  transport::AgentMetadata dup = Sample();
  dup.sections[1].backend = "ucx";
  ExpectCorrupt(transport::EncodeAgentMetadata(dup), "duplicate backend section \"ucx\"");
  transport::AgentMetadata longer = Sample();
  longer.sections[1].backend = std::string(transport::kMaxBackendTag + 1, 'b');
  ExpectCorrupt(transport::EncodeAgentMetadata(longer), "backend tag too long");
}

TEST(MetadataBlob, MissingRegionKeysAreTruncation) {
  transport::AgentMetadata m = Sample();
  m.sections[1].region_keys.pop_back();  // one key fewer than regions in the last section
  auto r = transport::DecodeAgentMetadata(transport::EncodeAgentMetadata(m));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kCorruptData);
}

// Found by fuzz/metadata_blob_fuzzer.cc: reserved flags used to be ignored,
// so two different blobs decoded to the same metadata.
TEST(MetadataBlob, ReservedFlagsAreRejected) {
  auto blob = transport::EncodeAgentMetadata(Sample());
  PutLe(blob, 6, 0x2f00, 2);
  Reseal(blob);
  ExpectCorrupt(blob, "unsupported flags 0x2f00");
}

TEST(MetadataBlob, Versions1And2AreRejected) {
  auto blob = transport::EncodeAgentMetadata(Sample());
  PutLe(blob, 4, 1, 2);
  ExpectCorrupt(blob, "unsupported version 1");
  PutLe(blob, 4, 2, 2);
  ExpectCorrupt(blob, "unsupported version 2");
}

TEST(MetadataBlob, HostLengthOverrunsBuffer) {
  const transport::AgentMetadata m = Sample();
  auto blob = transport::EncodeAgentMetadata(m);
  PutLe(blob, HostLenAt(m), 5000, 4);
  Reseal(blob);
  ExpectCorrupt(blob, "host length 5000 overruns");
}

TEST(MetadataBlob, RegionCountOverrunsBuffer) {
  const transport::AgentMetadata m = Sample();
  auto blob = transport::EncodeAgentMetadata(m);
  const std::size_t count_at = CountAt(m);
  PutLe(blob, count_at, 1000000, 4);
  Reseal(blob);
  ExpectCorrupt(blob, "region count 1000000 overruns");
}

TEST(MetadataBlob, RegionKeyLengthOverrunsBuffer) {
  const transport::AgentMetadata m = Sample();
  auto blob = transport::EncodeAgentMetadata(m);
  PutLe(blob, FirstKeyLenAt(m), 999999, 4);  // section 0's key of region 1
  Reseal(blob);
  ExpectCorrupt(blob, "section 0 (ucx) region 1 key length 999999 overruns");
}

TEST(MetadataBlob, DuplicateRegionId) {
  transport::AgentMetadata m = Sample();
  m.regions[2].id = m.regions[0].id;
  ExpectCorrupt(transport::EncodeAgentMetadata(m), "duplicate region id");
}

TEST(MetadataBlob, EmptyName) {
  transport::AgentMetadata m = Sample();
  m.name.clear();
  ExpectCorrupt(transport::EncodeAgentMetadata(m), "empty agent name");
}

}  // namespace
}  // namespace shardwire
