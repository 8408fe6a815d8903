#include "workflows/p2p_messages.h"

#include <xxhash.h>

#include <cstring>

namespace shardwire::workflows {
namespace {

constexpr char kMagic[4] = {'S', 'W', 'P', '1'};
// Upper bounds that keep a malformed message from allocating much.
constexpr std::uint32_t kMaxItems = 1u << 24;

class Writer {
 public:
  void U8(std::uint8_t v) { out_.push_back(static_cast<std::byte>(v)); }
  void U32(std::uint32_t v) { Fixed(v, 4); }
  void U64(std::uint64_t v) { Fixed(v, 8); }
  void Bytes(std::span<const std::byte> b) {
    U32(static_cast<std::uint32_t>(b.size()));
    out_.insert(out_.end(), b.begin(), b.end());
  }
  void Str(const std::string& s) { Bytes(std::as_bytes(std::span(s.data(), s.size()))); }
  std::vector<std::byte> Take() { return std::move(out_); }

 private:
  void Fixed(std::uint64_t v, int n) {
    for (int i = 0; i < n; ++i) out_.push_back(static_cast<std::byte>((v >> (8 * i)) & 0xff));
  }
  std::vector<std::byte> out_;
};

class Reader {
 public:
  explicit Reader(std::span<const std::byte> in) : in_(in) {}
  bool U8(std::uint8_t& v) {
    if (pos_ + 1 > in_.size()) return false;
    v = static_cast<std::uint8_t>(in_[pos_++]);
    return true;
  }
  bool U32(std::uint32_t& v) {
    std::uint64_t w = 0;
    if (!Fixed(w, 4)) return false;
    v = static_cast<std::uint32_t>(w);
    return true;
  }
  bool U64(std::uint64_t& v) { return Fixed(v, 8); }
  bool Bytes(std::vector<std::byte>& b) {
    std::uint32_t n = 0;
    if (!U32(n) || n > in_.size() - pos_) return false;
    b.assign(in_.begin() + static_cast<std::ptrdiff_t>(pos_), in_.begin() + static_cast<std::ptrdiff_t>(pos_ + n));
    pos_ += n;
    return true;
  }
  bool Str(std::string& s) {
    std::vector<std::byte> b;
    if (!Bytes(b)) return false;
    s.assign(reinterpret_cast<const char*>(b.data()), b.size());
    return true;
  }
  bool done() const { return pos_ == in_.size(); }
  /// Bytes not read yet: a count of items is checked against it before anything is allocated.
  std::size_t remaining() const { return in_.size() - pos_; }

 private:
  bool Fixed(std::uint64_t& v, int n) {
    if (pos_ + static_cast<std::size_t>(n) > in_.size()) return false;
    v = 0;
    for (int i = 0; i < n; ++i) v |= static_cast<std::uint64_t>(in_[pos_ + static_cast<std::size_t>(i)]) << (8 * i);
    pos_ += static_cast<std::size_t>(n);
    return true;
  }
  std::span<const std::byte> in_;
  std::size_t pos_ = 0;
};

}  // namespace

std::vector<std::byte> EncodeP2p(const P2pMessage& m) {
  Writer w;
  for (char c : kMagic) w.U8(static_cast<std::uint8_t>(c));
  w.U8(static_cast<std::uint8_t>(m.kind));
  w.U64(m.id);
  switch (m.kind) {
    case P2pKind::kHello:
      w.Bytes(m.blob);
      w.U8(m.flag ? 1 : 0);
      break;
    case P2pKind::kHelloAck:
      w.Str(m.text);
      w.U32(static_cast<std::uint32_t>(m.lines.size()));
      for (const std::string& l : m.lines) w.Str(l);
      break;
    case P2pKind::kDigest:
      w.U32(static_cast<std::uint32_t>(m.ranges.size()));
      for (const auto& [off, len] : m.ranges) {
        w.U64(off);
        w.U64(len);
      }
      w.U8(m.flag ? 1 : 0);
      break;
    case P2pKind::kDigestReply:
      w.U64(m.value);
      w.U8(static_cast<std::uint8_t>(m.status));
      break;
    case P2pKind::kLease:
      w.U64(m.value);
      w.Str(m.text);
      w.U64(m.priority);
      break;
    case P2pKind::kGrant: {
      std::uint64_t bits = 0;
      std::memcpy(&bits, &m.seconds, 8);
      w.U64(bits);
      break;
    }
    case P2pKind::kQueued:
    case P2pKind::kRelease:
    case P2pKind::kBye:
      break;
  }
  return w.Take();
}

std::optional<P2pMessage> DecodeP2p(std::span<const std::byte> payload) {
  Reader r(payload);
  for (char c : kMagic) {
    std::uint8_t b = 0;
    if (!r.U8(b) || b != static_cast<std::uint8_t>(c)) return std::nullopt;
  }
  P2pMessage m;
  std::uint8_t kind = 0;
  if (!r.U8(kind) || kind < 1 || kind > 9 || !r.U64(m.id)) return std::nullopt;
  m.kind = static_cast<P2pKind>(kind);
  std::uint8_t u8 = 0;
  std::uint32_t n = 0;
  switch (m.kind) {
    case P2pKind::kHello:
      if (!r.Bytes(m.blob) || !r.U8(u8)) return std::nullopt;
      m.flag = u8 != 0;
      break;
    case P2pKind::kHelloAck:
      // Each line takes at least its 4-byte length: a count the payload cannot hold is refused
      // before 2^24 empty strings (512 MiB) are made for it.
      if (!r.Str(m.text) || !r.U32(n) || n > kMaxItems || n > r.remaining() / 4) return std::nullopt;
      m.lines.resize(n);
      for (std::string& l : m.lines) {
        if (!r.Str(l)) return std::nullopt;
      }
      break;
    case P2pKind::kDigest:
      if (!r.U32(n) || n > kMaxItems || n > r.remaining() / 16) return std::nullopt;
      m.ranges.resize(n);
      for (auto& [off, len] : m.ranges) {
        if (!r.U64(off) || !r.U64(len)) return std::nullopt;
      }
      if (!r.U8(u8) || u8 > 1) return std::nullopt;
      m.flag = u8 != 0;
      break;
    case P2pKind::kDigestReply:
      if (!r.U64(m.value) || !r.U8(u8) || u8 > 2) return std::nullopt;
      m.status = static_cast<DigestStatus>(u8);
      break;
    case P2pKind::kLease:
      if (!r.U64(m.value) || !r.Str(m.text) || !r.U64(m.priority)) return std::nullopt;
      break;
    case P2pKind::kGrant: {
      std::uint64_t bits = 0;
      if (!r.U64(bits)) return std::nullopt;
      std::memcpy(&m.seconds, &bits, 8);
      if (!(m.seconds >= 0 && m.seconds < 1e9)) return std::nullopt;
      break;
    }
    case P2pKind::kQueued:
    case P2pKind::kRelease:
    case P2pKind::kBye:
      break;
  }
  if (!r.done()) return std::nullopt;
  return m;
}

MoveDigest::MoveDigest() : state_(XXH3_createState()) { XXH3_64bits_reset(static_cast<XXH3_state_t*>(state_)); }
MoveDigest::~MoveDigest() { XXH3_freeState(static_cast<XXH3_state_t*>(state_)); }

void MoveDigest::Add(std::uint64_t segment_digest) {
  std::uint8_t le[8];
  for (int i = 0; i < 8; ++i) le[i] = static_cast<std::uint8_t>(segment_digest >> (8 * i));
  XXH3_64bits_update(static_cast<XXH3_state_t*>(state_), le, sizeof le);
}

std::uint64_t MoveDigest::Value() const { return XXH3_64bits_digest(static_cast<const XXH3_state_t*>(state_)); }

}  // namespace shardwire::workflows
