#include "transport/metadata_blob.h"

#include <xxhash.h>

#include <cstring>
#include <set>

#include <fmt/format.h>

namespace shardwire::transport {
namespace {

// Per-region fixed part: id u32, base u64, length u64.
constexpr std::size_t kRegionFixedSize = 4 + 8 + 8;

// Writes into a buffer sized up front (one allocation, no growth).
class Writer {
 public:
  explicit Writer(std::size_t size) : out_(size) {}
  void U16(std::uint16_t v) { Int(v, 2); }
  void U32(std::uint32_t v) { Int(v, 4); }
  void U64(std::uint64_t v) { Int(v, 8); }
  void Bytes(const void* p, std::size_t n) {
    if (n == 0) return;
    std::memcpy(out_.data() + pos_, p, n);
    pos_ += n;
  }
  std::size_t pos() const { return pos_; }
  std::vector<std::byte>& out() { return out_; }

 private:
  void Int(std::uint64_t v, int n) {
    for (int i = 0; i < n; ++i) out_[pos_++] = static_cast<std::byte>((v >> (8 * i)) & 0xFF);
  }
  std::vector<std::byte> out_;
  std::size_t pos_ = 0;
};

std::uint64_t LoadLe(const std::byte* p, int n) {
  std::uint64_t v = 0;
  for (int i = 0; i < n; ++i) v |= static_cast<std::uint64_t>(p[i]) << (8 * i);
  return v;
}

// Bounds-checked reader over the body; every failure names the field.
class Reader {
 public:
  explicit Reader(std::span<const std::byte> b) : b_(b) {}
  std::size_t left() const { return b_.size() - pos_; }

  Result<std::uint64_t> Int(int n, std::string_view what) {
    if (left() < static_cast<std::size_t>(n))
      return CorruptData(fmt::format("metadata blob: {} overruns buffer at body offset {} ({} bytes left)",
                                     what, pos_, left()));
    std::uint64_t v = LoadLe(b_.data() + pos_, n);
    pos_ += static_cast<std::size_t>(n);
    return v;
  }
  Result<std::span<const std::byte>> Bytes(std::uint64_t n, std::string_view what) {
    if (n > left())
      return CorruptData(fmt::format("metadata blob: {} {} overruns buffer at body offset {} ({} bytes left)",
                                     what, n, pos_, left()));
    auto s = b_.subspan(pos_, static_cast<std::size_t>(n));
    pos_ += static_cast<std::size_t>(n);
    return s;
  }

 private:
  std::span<const std::byte> b_;
  std::size_t pos_ = 0;
};

}  // namespace

std::vector<std::byte> EncodeAgentMetadata(const AgentMetadata& m) {
  std::size_t body = 4 + m.name.size() + 4 + m.process.host.size() + 4 + 8 + 4 + 4;
  body += m.regions.size() * kRegionFixedSize;
  for (const BackendSection& sec : m.sections) {
    body += 4 + sec.backend.size() + 4 + sec.connection.size();
    for (const auto& k : sec.region_keys) body += 4 + k.size();
  }
  Writer w(kMetadataHeaderSize + body + kMetadataChecksumSize);
  w.U32(kMetadataMagic);
  w.U16(kMetadataVersion);
  w.U16(0);
  w.U64(body);
  w.U32(static_cast<std::uint32_t>(m.name.size()));
  w.Bytes(m.name.data(), m.name.size());
  w.U32(static_cast<std::uint32_t>(m.process.host.size()));
  w.Bytes(m.process.host.data(), m.process.host.size());
  w.U32(m.process.pid);
  w.U64(m.process.start_time);
  w.U32(static_cast<std::uint32_t>(m.regions.size()));
  for (const RegionRecord& r : m.regions) {
    w.U32(r.id);
    w.U64(r.base);
    w.U64(r.length);
  }
  w.U32(static_cast<std::uint32_t>(m.sections.size()));
  for (const BackendSection& sec : m.sections) {
    w.U32(static_cast<std::uint32_t>(sec.backend.size()));
    w.Bytes(sec.backend.data(), sec.backend.size());
    w.U32(static_cast<std::uint32_t>(sec.connection.size()));
    w.Bytes(sec.connection.data(), sec.connection.size());
    for (const auto& k : sec.region_keys) {
      w.U32(static_cast<std::uint32_t>(k.size()));
      w.Bytes(k.data(), k.size());
    }
  }
  w.U64(XXH64(w.out().data(), w.pos(), 0));
  return std::move(w.out());
}

Result<AgentMetadata> DecodeAgentMetadata(std::span<const std::byte> blob) {
  constexpr std::size_t kMin = kMetadataHeaderSize + kMetadataChecksumSize;
  if (blob.size() < kMin)
    return CorruptData(fmt::format("metadata blob truncated: {} bytes, header and checksum alone need {}",
                                   blob.size(), kMin));
  const auto magic = static_cast<std::uint32_t>(LoadLe(blob.data(), 4));
  if (magic != kMetadataMagic)
    return CorruptData(fmt::format("metadata blob has bad magic 0x{:08x} (expected 0x{:08x})", magic,
                                   kMetadataMagic));
  const auto version = static_cast<std::uint16_t>(LoadLe(blob.data() + 4, 2));
  if (version != kMetadataVersion)
    return CorruptData(fmt::format("metadata blob has unsupported version {} (this build reads {})", version,
                                   kMetadataVersion));
  const auto flags = static_cast<std::uint16_t>(LoadLe(blob.data() + 6, 2));
  if (flags != 0)
    return CorruptData(fmt::format("metadata blob has unsupported flags 0x{:04x} (reserved, must be 0)", flags));
  const std::uint64_t body_length = LoadLe(blob.data() + 8, 8);
  const std::size_t available = blob.size() - kMin;
  if (body_length > available)
    return CorruptData(fmt::format("metadata blob truncated: header announces a {}-byte body, {} bytes present",
                                   body_length, available));
  if (body_length < available)
    return CorruptData(fmt::format("metadata blob has {} trailing bytes after its {}-byte body and checksum",
                                   available - body_length, body_length));
  const std::size_t summed = kMetadataHeaderSize + static_cast<std::size_t>(body_length);
  const std::uint64_t stored = LoadLe(blob.data() + summed, 8);
  const std::uint64_t computed = XXH64(blob.data(), summed, 0);
  if (stored != computed)
    return CorruptData(fmt::format("metadata blob checksum mismatch: stored 0x{:016x}, computed 0x{:016x}",
                                   stored, computed));

  Reader r(blob.subspan(kMetadataHeaderSize, static_cast<std::size_t>(body_length)));
  AgentMetadata m;
  SW_ASSIGN_OR_RETURN(std::uint64_t name_len, r.Int(4, "name length field"));
  SW_ASSIGN_OR_RETURN(auto name, r.Bytes(name_len, "name length"));
  if (name.empty()) return CorruptData("metadata blob has an empty agent name");
  m.name.assign(reinterpret_cast<const char*>(name.data()), name.size());
  SW_ASSIGN_OR_RETURN(std::uint64_t host_len, r.Int(4, "host length field"));
  SW_ASSIGN_OR_RETURN(auto host, r.Bytes(host_len, "host length"));
  m.process.host.assign(reinterpret_cast<const char*>(host.data()), host.size());
  SW_ASSIGN_OR_RETURN(std::uint64_t pid, r.Int(4, "pid"));
  m.process.pid = static_cast<std::uint32_t>(pid);
  SW_ASSIGN_OR_RETURN(m.process.start_time, r.Int(8, "process start time"));
  SW_ASSIGN_OR_RETURN(std::uint64_t count, r.Int(4, "region count field"));
  if (count > r.left() / kRegionFixedSize)
    return CorruptData(fmt::format("metadata blob region count {} overruns buffer ({} bytes left, {} per region "
                                   "at least)",
                                   count, r.left(), kRegionFixedSize));
  m.regions.reserve(static_cast<std::size_t>(count));
  std::set<RegionId> seen;
  for (std::uint64_t i = 0; i < count; ++i) {
    RegionRecord rec;
    SW_ASSIGN_OR_RETURN(std::uint64_t id, r.Int(4, "region id"));
    rec.id = static_cast<RegionId>(id);
    SW_ASSIGN_OR_RETURN(rec.base, r.Int(8, "region base"));
    SW_ASSIGN_OR_RETURN(rec.length, r.Int(8, "region length"));
    if (!seen.insert(rec.id).second)
      return CorruptData(fmt::format("metadata blob has duplicate region id {} (index {})", rec.id, i));
    m.regions.push_back(rec);
  }
  SW_ASSIGN_OR_RETURN(std::uint64_t sections, r.Int(4, "section count field"));
  if (sections == 0) return CorruptData("metadata blob has no backend section (section count 0)");
  if (sections > kMaxMetadataSections)
    return CorruptData(fmt::format("metadata blob has too many sections: {} (at most {})", sections,
                                   kMaxMetadataSections));
  for (std::uint64_t s = 0; s < sections; ++s) {
    BackendSection sec;
    SW_ASSIGN_OR_RETURN(std::uint64_t tag_len, r.Int(4, "backend tag length field"));
    if (tag_len == 0) return CorruptData(fmt::format("metadata blob section {} has an empty backend tag", s));
    if (tag_len > kMaxBackendTag)
      return CorruptData(fmt::format("metadata blob section {}: backend tag too long ({} bytes, at most {})", s,
                                     tag_len, kMaxBackendTag));
    SW_ASSIGN_OR_RETURN(auto tag, r.Bytes(tag_len, fmt::format("section {} backend tag length", s)));
    sec.backend.assign(reinterpret_cast<const char*>(tag.data()), tag.size());
    for (const BackendSection& other : m.sections)
      if (other.backend == sec.backend)
        return CorruptData(fmt::format("metadata blob has a duplicate backend section \"{}\"", sec.backend));
    SW_ASSIGN_OR_RETURN(std::uint64_t conn_len, r.Int(4, "connection length field"));
    SW_ASSIGN_OR_RETURN(auto conn,
                        r.Bytes(conn_len, fmt::format("section {} ({}) connection length", s, sec.backend)));
    sec.connection.assign(conn.begin(), conn.end());
    if (count > r.left() / 4)
      return CorruptData(fmt::format("metadata blob section {} ({}): {} region keys overrun buffer ({} bytes left)",
                                     s, sec.backend, count, r.left()));
    sec.region_keys.reserve(static_cast<std::size_t>(count));
    for (std::uint64_t i = 0; i < count; ++i) {
      SW_ASSIGN_OR_RETURN(std::uint64_t key_len, r.Int(4, "region key length field"));
      SW_ASSIGN_OR_RETURN(auto key, r.Bytes(key_len, fmt::format("section {} ({}) region {} key length", s,
                                                                 sec.backend, m.regions[i].id)));
      sec.region_keys.emplace_back(key.begin(), key.end());
    }
    m.sections.push_back(std::move(sec));
  }
  if (r.left() != 0)
    return CorruptData(fmt::format("metadata blob body has {} trailing bytes after its last section", r.left()));
  return m;
}

}  // namespace shardwire::transport
