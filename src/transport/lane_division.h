// Dividing a prepared transfer's slices among the agent's lanes. A pure
// function (no UCX, no Agent state), unit-tested in tests/transport/lane_division_test.cc
// together with the slicing it follows (CutIntoBlocks, strided_rows.h).
//
// Internal header (src/transport); not part of the public API. Thread-safety:
// none needed (no state).
#pragma once

#include <cstdint>
#include <span>
#include <utility>
#include <vector>

namespace shardwire::transport {

/// The most bytes a transfer may hold and still stay on one lane, for slices of at
/// most `slice_bytes` (AgentOptions::slice_bytes): half a slice, 512 KiB by default.
/// Why half: back-to-back posts of 64 x 16 KiB (1 MiB, distinct memory) copied by two lanes
/// at once ran at 3.6-4.2 M descriptors/s against 2.8-3.2 M on one lane (the posting thread),
/// while isolated posts (the second lane asleep) lost 15-25% to its wake-up
/// (docs/benchmarks_history.md, "Small transfers: a 1 MiB post over both lanes", session 34).
/// Transfers of at most 512 KiB (64 x 4 KiB posts, for one) stay on one lane as they did.
std::uint64_t OneLaneMaxBytes(std::uint64_t slice_bytes);

/// Assigns each slice of a transfer, in order, to one of `lanes` lanes (lanes >= 1;
/// slice_bytes[i] is slice i's size in bytes) and returns slice i's lane at index i.
///   * A transfer of at most `one_lane_max_bytes` bytes in all (PrepareTransfer
///     passes OneLaneMaxBytes) stays on one lane, `transfer_id % lanes`: splitting
///     it would only add a hand-off per lane, and consecutive transfers spread
///     over the lanes.
///   * A larger transfer is cut into contiguous runs (lanes never decrease along
///     the slices, which keeps locality) of about share = ceil(total / lanes)
///     bytes: a lane is left for the next once the bytes assigned so far reach
///     share * (lane + 1). Each lane then holds at most share + the largest
///     slice's bytes, and the last lane at most share. If that leaves every slice on
///     lane 0 (a single slice of more than one_lane_max_bytes, or slices that never
///     fill a share before the last), the transfer goes to lane `transfer_id % lanes`
///     instead, as a small one does, so back-to-back undividable transfers alternate.
/// The total must fit 64 bits (PrepareTransfer checks it first). No errors.
std::vector<std::uint32_t> DivideAmongLanes(std::span<const std::uint64_t> slice_bytes,
                                            std::uint64_t one_lane_max_bytes, std::uint32_t lanes,
                                            std::uint64_t transfer_id);

/// Whether any two of `ranges` share a byte: each is [begin, end) in one address space
/// (bytes; begin <= end, empty ranges share nothing). O(n log n); takes the ranges by value
/// (sorts them). PrepareTransfer asks it of the bytes a transfer's single-row slices write (the
/// remote ranges of a WRITE, the local ones of a READ; strided multi-row blocks, which come
/// from planned moves, are not checked): a transfer whose writes overlap stays on one lane
/// (DivideAmongLanes with no division), so two lanes never write the same cache lines at once
/// (64 x 16 KiB posts into one 16 KiB buffer ran at 0.14x ucx_perftest's rate over two lanes;
/// docs/benchmarks.md, "Small transfers"), and on the direct-copy and kernel-copy paths (one
/// lane copies its slices in order) the last descriptor's bytes win; UCX puts are not ordered
/// among themselves (no fence between them). No errors.
bool AnyRangesOverlap(std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges);

}  // namespace shardwire::transport
