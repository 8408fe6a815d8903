// The metadata blob one Agent exports and its peers import.
//
// It carries everything a peer needs to reach this Agent and address its
// regions: the agent name, its process identity, per region its id, base
// address and length, and one opaque section per transport backend, tagged with
// the backend's name (AgentOptions::backend: "ucx", "inproc"): the backend's
// connection information (UCX: one worker address per lane) and one remote key
// per region (UCX: the packed rkey). Only the backend that wrote a section reads
// its bytes (an agent importing a blob without a section of its own backend gets
// kUnsupported naming both). Its size grows with the number of regions (and
// lanes), never with the number of tensors or descriptors a peer will later
// prepare.
//
// Wire format (all integers little-endian):
//
//   offset  size  field
//   0       4     magic            0x444D5753 ("SWMD" read as bytes S W M D)
//   4       2     version          kMetadataVersion (3; versions 1 and 2 carried
//                                  UCX worker addresses and rkeys directly and are
//                                  rejected)
//   6       2     flags            0 (reserved; anything else is rejected)
//   8       8     body_length      bytes of body that follow the 16-byte header
//   16      ...   body:
//                   u32 name_length, name bytes (UTF-8, not terminated)
//                   u32 host_length, host identity bytes (see ProcessIdentity)
//                   u32 pid, u64 start_time
//                   u32 region_count, then per region: u32 id, u64 base, u64 length
//                   u32 section_count (1..kMaxMetadataSections), then per section:
//                     u32 tag_length (1..kMaxBackendTag), tag bytes (backend name)
//                     u32 connection_length, connection bytes
//                     per region (region_count of them, region order):
//                       u32 key_length, key bytes
//   16+body 8     checksum         XXH64 (seed 0) of bytes [0, 16 + body_length)
//
// Internal to the transport (namespace shardwire::transport): callers pass the blob
// as opaque bytes (Agent::ExportMetadata, Agent::ImportMetadata); only the agent, its
// backends, their tests and the fuzzer read it.
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

namespace shardwire::transport {

inline constexpr std::uint32_t kMetadataMagic = 0x444D5753u;  // bytes "SWMD"
inline constexpr std::uint16_t kMetadataVersion = 3;
/// Most backend sections a blob may carry.
inline constexpr std::uint32_t kMaxMetadataSections = 8;
/// Longest backend tag (name), bytes.
inline constexpr std::uint32_t kMaxBackendTag = 64;
/// Bytes of the fixed header (magic, version, flags, body_length).
inline constexpr std::size_t kMetadataHeaderSize = 16;
/// Bytes of the trailing checksum.
inline constexpr std::size_t kMetadataChecksumSize = 8;

/// One exported region: where it lives in the exporter's address space. Its
/// remote keys are in the backend sections (BackendSection::region_keys).
struct RegionRecord {
  RegionId id = 0;
  std::uint64_t base = 0;    ///< virtual address in the exporting process
  std::uint64_t length = 0;  ///< bytes

  bool operator==(const RegionRecord&) const = default;
};

/// One backend's opaque part of the blob: written and read only by that backend.
struct BackendSection {
  std::string backend;                 ///< its tag: the backend's name, 1..kMaxBackendTag bytes
  std::vector<std::byte> connection;   ///< what a peer's backend needs to connect (UCX: worker addresses)
  /// One remote key per region, in AgentMetadata::regions order (UCX: the packed rkey).
  std::vector<std::vector<std::byte>> region_keys;

  bool operator==(const BackendSection&) const = default;
};

/// Which process exported the blob. Lets a peer on the same host (same kernel
/// boot and pid namespace) check that the exporter is still alive without UCX's
/// help (see UcxOptions::failure_detection).
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
  std::string name;  ///< the exporting Agent's name
  ProcessIdentity process;
  std::vector<RegionRecord> regions;
  std::vector<BackendSection> sections;  ///< at least one; tags distinct

  bool operator==(const AgentMetadata&) const = default;
};

/// Serialises `metadata` in the format above (version kMetadataVersion) and
/// appends the XXH64 checksum. Never fails; the caller keeps the invariants the
/// decoder checks (each section has one key per region).
std::vector<std::byte> EncodeAgentMetadata(const AgentMetadata& metadata);

/// Parses and validates a blob. Every failure is kCorruptData and the message
/// names the check that failed: "truncated" (shorter than header + checksum,
/// or shorter than the header's body_length says), "bad magic", "unsupported
/// version", "unsupported flags" (reserved bits set), "trailing bytes" (longer
/// than body_length says), "checksum mismatch", a length or count that
/// "overruns" the buffer (name, host, region count, section count, a tag, a
/// connection, a region key), "duplicate region id", "empty agent name", "no
/// backend section" (count 0), "too many sections" (above kMaxMetadataSections),
/// "empty backend tag" / "backend tag too long" and "duplicate backend section".
/// Never reads outside `blob` (fuzzed: fuzz/metadata_blob_fuzzer.cc).
Result<AgentMetadata> DecodeAgentMetadata(std::span<const std::byte> blob);

}  // namespace shardwire::transport
