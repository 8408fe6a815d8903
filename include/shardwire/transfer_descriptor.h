// Vocabulary of the transport layer: regions, descriptors, transfer handles.
//
// A *region* is a registered memory range of one Agent, named by a RegionId that
// is unique within that Agent for its lifetime (ids are never reused). A
// *descriptor* names one contiguous byte move between a local region and a
// region of a peer. A *transfer* is a prepared list of descriptors against one
// peer, posted any number of times (NIXL's "prepare once, post many").
//
// Thread-safety: plain value types.
#pragma once

#include <cstdint>

namespace shardwire {

/// Names a region registered with one Agent (see Agent::RegisterMemory and
/// Agent::AllocateArena). Ids start at 1 and are never reused by an Agent; 0 is
/// never a valid id. A RegionId is only meaningful together with the Agent that
/// issued it (locally) or the peer name whose metadata carried it (remotely).
using RegionId = std::uint32_t;

/// Direction of a transfer, seen from the Agent that posts it (the initiator).
enum class TransferOp : std::uint8_t {
  kWrite,  ///< one-sided put: local region bytes -> peer region (ucp_put_nbx)
  kRead,   ///< one-sided get: peer region bytes -> local region (ucp_get_nbx)
};

/// One contiguous move of `length` bytes between
/// [local_offset, local_offset + length) of the local region `local_region` and
/// [remote_offset, remote_offset + length) of the peer's region `remote_region`.
/// Offsets and length are in bytes, relative to the start of each region.
/// A zero-length descriptor is accepted and moves nothing.
struct TransferDescriptor {
  RegionId local_region = 0;
  std::uint64_t local_offset = 0;   ///< bytes from the start of the local region
  RegionId remote_region = 0;
  std::uint64_t remote_offset = 0;  ///< bytes from the start of the remote region
  std::uint64_t length = 0;         ///< bytes to move

  bool operator==(const TransferDescriptor&) const = default;
};

/// Names a prepared transfer inside the Agent that prepared it. A plain,
/// copyable value: the Agent owns the transfer's state until Agent::Release.
/// Ids start at 1 and are never reused by an Agent, so a stale handle (after
/// Release) is reported as kNotFound instead of aliasing a newer transfer.
struct TransferHandle {
  std::uint64_t id = 0;

  bool operator==(const TransferHandle&) const = default;
};

}  // namespace shardwire
