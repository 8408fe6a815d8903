// The metadata blob one Agent exports and its peers import.
//
// It carries everything a peer needs to reach this Agent and address its
// regions: the agent name, one UCX worker address (ucp_worker_get_address) per
// lane (an Agent runs one ucp_worker per lane, see AgentOptions::lanes) and,
// per region, its id, base address, length and packed remote key
// (ucp_rkey_pack). Its size grows with the number of regions (and lanes), never
// with the number of tensors or descriptors a peer will later prepare.
//
// Wire format (all integers little-endian):
//
//   offset  size  field
//   0       4     magic            0x444D5753 ("SWMD" read as bytes S W M D)
//   4       2     version          kMetadataVersion (2; version 1 had a single
//                                  worker address and is rejected)
//   6       2     flags            0 (reserved; anything else is rejected)
//   8       8     body_length      bytes of body that follow the 16-byte header
//   16      ...   body:
//                   u32 name_length, name bytes (UTF-8, not terminated)
//                   u32 lane_count (1..kMaxMetadataLanes), per lane:
//                     u32 address_length, worker address bytes
//                   u32 host_length, host identity bytes (see ProcessIdentity)
//                   u32 pid, u64 start_time
//                   u32 region_count, then per region:
//                     u32 id, u64 base, u64 length, u32 rkey_length, rkey bytes
//   16+body 8     checksum         XXH64 (seed 0) of bytes [0, 16 + body_length)
//
// Thread-safety: pure functions, thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "shardwire/status.h"
#include "shardwire/transfer_descriptor.h"

namespace shardwire {

inline constexpr std::uint32_t kMetadataMagic = 0x444D5753u;  // bytes "SWMD"
inline constexpr std::uint16_t kMetadataVersion = 2;
/// Most worker addresses (lanes) a blob may carry.
inline constexpr std::uint32_t kMaxMetadataLanes = 64;
/// Bytes of the fixed header (magic, version, flags, body_length).
inline constexpr std::size_t kMetadataHeaderSize = 16;
/// Bytes of the trailing checksum.
inline constexpr std::size_t kMetadataChecksumSize = 8;

/// One exported region: where it lives in the exporter's address space and the
/// packed UCX remote key a peer unpacks with ucp_ep_rkey_unpack.
struct RegionRecord {
  RegionId id = 0;
  std::uint64_t base = 0;    ///< virtual address in the exporting process
  std::uint64_t length = 0;  ///< bytes
  std::vector<std::byte> packed_rkey;

  bool operator==(const RegionRecord&) const = default;
};

/// Which process exported the blob. Lets a peer on the same host (same kernel
/// boot and pid namespace) check that the exporter is still alive without UCX's
/// help (see AgentOptions::failure_detection).
struct ProcessIdentity {
  /// "<kernel boot id>/<pid namespace>", e.g.
  /// "6f1c...e2/pid:[4026531836]"; empty when unknown (never matches).
  std::string host;
  std::uint32_t pid = 0;
  /// Start time of `pid` in clock ticks after boot (/proc/<pid>/stat field 22),
  /// so a reused pid is not mistaken for the exporter; 0 when unknown.
  std::uint64_t start_time = 0;

  bool operator==(const ProcessIdentity&) const = default;
};

/// The decoded content of a metadata blob.
struct AgentMetadata {
  std::string name;                     ///< the exporting Agent's name
  /// One opaque ucp_address_t per lane (ucp_worker_get_address), lane 0 first.
  std::vector<std::vector<std::byte>> worker_addresses;
  ProcessIdentity process;
  std::vector<RegionRecord> regions;

  bool operator==(const AgentMetadata&) const = default;
};

/// Serialises `metadata` in the format above (version kMetadataVersion) and
/// appends the XXH64 checksum. Never fails.
std::vector<std::byte> EncodeAgentMetadata(const AgentMetadata& metadata);

/// Parses and validates a blob. Every failure is kCorruptData and the message
/// names the check that failed: "truncated" (shorter than header + checksum,
/// or shorter than the header's body_length says), "bad magic", "unsupported
/// version", "unsupported flags" (reserved bits set), "trailing bytes" (longer
/// than body_length says), "checksum mismatch", a length or count that
/// "overruns" the buffer (name, lane count, a worker address, host, region
/// count, a region's rkey), "no worker address" (lane count 0), "too many
/// lanes" (above kMaxMetadataLanes), "duplicate region id" and "empty agent
/// name". Never reads outside `blob` (fuzzed: fuzz/metadata_blob_fuzzer.cc).
Result<AgentMetadata> DecodeAgentMetadata(std::span<const std::byte> blob);

}  // namespace shardwire
