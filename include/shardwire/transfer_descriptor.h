// Vocabulary of the transport layer: regions, descriptors, transfer handles.
//
// A *region* is a registered memory range of one Agent, named by a RegionId that
// is unique within that Agent for its lifetime (ids are never reused). A
// *descriptor* names one byte move (contiguous, or `count` equally strided rows)
// between a local region and a region of a peer. A *transfer* is a prepared list of descriptors against one
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

/// One move between the local region `local_region` and the peer's region
/// `remote_region`: `count` rows of `length` bytes each. Row i (0 <= i < count)
/// moves [local_offset + i * local_stride, + length) of the local region to or
/// from [remote_offset + i * remote_stride, + length) of the remote region.
/// Offsets, strides and length are in bytes, relative to the start of each region.
///
/// The default (`count` 1) is one contiguous move; the strides are then ignored.
/// A strided descriptor (`count` > 1) is how a row-parallel shard moves: one
/// descriptor for all of its rows instead of one per row (the shape of NIXL's
/// strided descriptors, of an RDMA scatter-gather list and of cudaMemcpy2D).
///
/// Rules, checked by Agent::PrepareTransfer (kInvalidArgument naming the
/// descriptor index and the field): with `count` > 1 and `length` > 0 both strides
/// must be >= `length` (rows never overlap, so no row's bytes depend on the order
/// in which rows are moved; a zero stride is therefore rejected too), and the last
/// row must end inside its region (computed without overflow). A descriptor with
/// `count` 0 or `length` 0 is accepted and moves nothing.
struct TransferDescriptor {
  RegionId local_region = 0;
  std::uint64_t local_offset = 0;   ///< bytes from the start of the local region
  RegionId remote_region = 0;
  std::uint64_t remote_offset = 0;  ///< bytes from the start of the remote region
  std::uint64_t length = 0;         ///< bytes per row
  std::uint64_t count = 1;          ///< rows
  std::uint64_t local_stride = 0;   ///< bytes between the starts of consecutive local rows
  std::uint64_t remote_stride = 0;  ///< bytes between the starts of consecutive remote rows

  /// Bytes this descriptor moves: count * length (callers keep it below 2^64;
  /// PrepareTransfer rejects a product that overflows).
  std::uint64_t bytes() const { return count * length; }

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
