// Messages of the P2P loading protocol (model_loading.h), carried as transport
// notifications between a ModelLoader and a ModelSource. Wire format: "SWP1", one
// kind byte, then the kind's fields, integers little-endian, strings and byte lists
// as u32 length + bytes. Every request carries a request id the reply echoes.
#pragma once

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
  kDigest = 3,       ///< loader -> source: id, ranges (offset, length) of one move, in order
  kDigestReply = 4,  ///< source -> loader: id, xxh3-64 of the ranges' bytes, status
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
  bool flag = false;                                            ///< kHello: want fingerprint inputs
  std::string text;                                             ///< kHelloAck: fingerprint; then `lines`
  std::vector<std::string> lines;                               ///< kHelloAck: fingerprint inputs
  std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges;  ///< kDigest
  std::uint64_t value = 0;                                      ///< kDigestReply: digest; kLease: bytes
  DigestStatus status = DigestStatus::kOk;                      ///< kDigestReply
  double seconds = 0;                                           ///< kGrant
  std::uint64_t priority = 0;                                   ///< kLease: lower is served first
};

std::vector<std::byte> EncodeP2p(const P2pMessage& message);
/// nullopt for anything that is not a well-formed P2P message.
std::optional<P2pMessage> DecodeP2p(std::span<const std::byte> payload);

}  // namespace shardwire::workflows
