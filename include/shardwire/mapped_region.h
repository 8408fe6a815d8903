// A peer's registered region mapped into this process: the "direct-mapped destination"
// capability of the transport (Agent::MapPeerRegion).
//
// On one host, UCX can map a region that a peer allocated with Agent::AllocateArena (UCX-allocated
// sysv / posix shared memory) into this process (ucp_rkey_ptr on the unpacked rkey). The agent's
// lanes already copy WRITEs through that mapping; a MappedRegion hands the same mapping to the
// caller, so a producer (e.g. the FP8 quantiser of a converting push) can write its output straight
// into the peer's buffer instead of into a staging buffer that a transfer then copies again. It is
// what a GPU kernel writing through an NVLink peer mapping / CUDA IPC handle does on a real node.
// RDMA NICs, TCP peers and caller-registered memory (emulated puts on UCX 1.13.1) have no such
// mapping: Agent::MapPeerRegion says kUnsupported, and the caller keeps its staging path.
//
// Lifetime: the mapping belongs to the peer's connection (the rkey unpacked on the agent's lane 0).
// It is revoked when the peer fails (UCX error or the same-host liveness check), is invalidated or
// re-imported, or the Agent is destroyed; after that Acquire returns kPeerDisconnected, so a dead
// peer's mapping is never used (writing into it would at best be lost, at worst touch unmapped
// memory). Revocation waits for an Access that is held (the mapping stays valid while any Access
// lives), so the bytes written under an Access never hit an unmapped page.
//
// Completion: bytes written through the mapping are visible to the peer once the writer's stores
// are (x86-64: program order; elsewhere a release fence, which Access's destructor issues). A
// caller that tells the peer "the data is there" (a notification) must do so after the Access that
// wrote them ended.
//
// Thread-safety: a MappedRegion may be copied and used from any thread; Accesses of one region may
// be held by several threads at once (shared). While holding an Access, do not call methods of the
// Agent that owns the mapping (revocation by the agent would wait for the Access: a deadlock).
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <span>
#include <string>

#include "shardwire/status.h"
#include "shardwire/transfer_descriptor.h"

namespace shardwire {

class MappedRegion {
 public:
  /// Internal state shared with the Agent (defined in src/transport/agent.cc).
  struct Lease;

  /// A held mapping: the bytes stay mapped until it is destroyed. Move-constructible only.
  class Access {
   public:
    Access(Access&&) noexcept = default;
    Access& operator=(Access&&) = delete;  // would drop the lease before unlocking it
    ~Access();
    /// The whole region (size() bytes) in this process.
    std::span<std::byte> bytes() const { return bytes_; }
    /// Bytes [offset, offset + length) of the region. Errors: kInvalidArgument when the range
    /// leaves the region (overflow-safe; the message names region and range).
    Result<std::span<std::byte>> Range(std::uint64_t offset, std::uint64_t length) const;

   private:
    friend class MappedRegion;
    Access(std::shared_ptr<Lease> lease, std::span<std::byte> bytes);
    std::shared_ptr<Lease> lease_;
    std::shared_lock<std::shared_mutex> lock_;
    std::span<std::byte> bytes_;
  };

  MappedRegion() = default;

  /// The peer's name and region id this maps (a default-constructed MappedRegion: "", 0, 0).
  const std::string& peer() const;
  RegionId region() const;
  /// Bytes of the region (its registered length).
  std::uint64_t size() const;

  /// Holds the mapping for writing or reading. Errors: kPeerDisconnected when the mapping was
  /// revoked (the peer failed, was invalidated or re-imported, or the Agent is gone; the message
  /// says which), kInvalidArgument for a default-constructed MappedRegion.
  Result<Access> Acquire() const;

  /// Touches, through this mapping, every page of bytes [offset, offset + length) with an access
  /// that changes no byte (a locked add of 0; safe while the owner writes the same pages), so the
  /// first real write pays no page fault (and, under a shadow-paging hypervisor, no hypervisor
  /// fault: docs/transport.md "Pre-faulting"). Returns the pages touched. Errors: as Acquire and
  /// Access::Range.
  Result<std::uint64_t> PrefaultForWrite(std::uint64_t offset, std::uint64_t length) const;

 private:
  friend class Agent;
  explicit MappedRegion(std::shared_ptr<Lease> lease) : lease_(std::move(lease)) {}
  std::shared_ptr<Lease> lease_;
};

}  // namespace shardwire
