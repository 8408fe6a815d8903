// Messages of the P2P loading protocol (model_loading.h), carried as transport
// notifications between a ModelLoader and a ModelSource. Wire format: "SWP1", one
// kind byte, then the kind's fields, integers little-endian, strings and byte lists
// as u32 length + bytes. Every request carries a request id the reply echoes.
#pragma once

#include <algorithm>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace shardwire::workflows {

enum class P2pKind : std::uint8_t {
  kHello = 1,        ///< loader -> source: id, loader metadata blob, want fingerprint inputs
  kHelloAck = 2,     ///< source -> loader: id, layout fingerprint, fingerprint inputs (maybe empty)
  kDigest = 3,       ///< loader -> source: id, ranges (offset, length) of one move, in order, verify flag
  kDigestReply = 4,  ///< source -> loader: id, MoveDigest of the ranges, status
  kLease = 5,        ///< loader -> source: id, bytes it will read, loader instance id, priority
  kQueued = 6,       ///< source -> loader: id (lease request received, waiting for a grant)
  kGrant = 7,        ///< source -> loader: id, seconds the grant lasts
  kRelease = 8,      ///< loader -> source: id (grant no longer needed)
  kBye = 9,          ///< loader -> source: forget me
};

/// Status of a digest reply.
enum class DigestStatus : std::uint8_t {
  kOk = 0,
  kCorrupt = 1,     ///< a served block differs from the content the source committed
  kOutOfRange = 2,  ///< a range lies outside the source's buffer
};

struct P2pMessage {
  P2pKind kind = P2pKind::kHello;
  std::uint64_t id = 0;
  std::vector<std::byte> blob;                                  ///< kHello: loader metadata
  bool flag = false;  ///< kHello: want fingerprint inputs; kDigest: verify (see MoveDigest)
  std::string text;                                             ///< kHelloAck: fingerprint; then `lines`
  std::vector<std::string> lines;                               ///< kHelloAck: fingerprint inputs
  std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges;  ///< kDigest
  std::uint64_t value = 0;                                      ///< kDigestReply: digest; kLease: bytes
  DigestStatus status = DigestStatus::kOk;                      ///< kDigestReply
  double seconds = 0;                                           ///< kGrant
  std::uint64_t priority = 0;                                   ///< kLease: lower is served first
};

/// Granularity (bytes of a source's buffer) of the digests a source records of its
/// committed content when it starts serving, and of the segments of a move digest.
inline constexpr std::uint64_t kSourceBlockBytes = std::uint64_t{1} << 20;

/// The digest of one move, the same on both sides: its ranges (source buffer offset,
/// length; in request order) are cut into segments at multiples of kSourceBlockBytes of
/// the source offset; each segment's xxh3-64 is fed, as 8 little-endian bytes, to one
/// xxh3-64 (streaming). Why segments: a segment that is a whole block has the digest the
/// source recorded of that block at commit, so a source answers a request for whole
/// blocks without reading them (one pass over the bytes saved per move; the source
/// shares the host's cores and memory bandwidth with same-host loaders), and the loader
/// compares what landed with the committed content itself. Segments that are parts of a
/// block (row-parallel shards, a move's ends) the source hashes from its buffer, after
/// checking their blocks against the recorded digests. A request with the verify flag
/// makes the source hash every segment from its buffer and check every block touched (a
/// loader sends it after a mismatch, to tell a source whose bytes changed since commit
/// from bytes corrupted on the way).
class MoveDigest {
 public:
  MoveDigest();
  ~MoveDigest();
  MoveDigest(const MoveDigest&) = delete;
  MoveDigest& operator=(const MoveDigest&) = delete;
  /// Adds the next segment's xxh3-64.
  void Add(std::uint64_t segment_digest);
  std::uint64_t Value() const;

  /// Calls fn(src_offset, length) for each segment of the range [src_offset, +length).
  template <typename Fn>
  static void ForEachSegment(std::uint64_t src_offset, std::uint64_t length, Fn&& fn) {
    while (length > 0) {
      const std::uint64_t block_end = (src_offset / kSourceBlockBytes + 1) * kSourceBlockBytes;
      const std::uint64_t take = std::min(length, block_end - src_offset);
      fn(src_offset, take);
      src_offset += take;
      length -= take;
    }
  }

 private:
  void* state_;  // XXH3_state_t
};

std::vector<std::byte> EncodeP2p(const P2pMessage& message);
/// nullopt for anything that is not a well-formed P2P message.
std::optional<P2pMessage> DecodeP2p(std::span<const std::byte> payload);

}  // namespace shardwire::workflows
