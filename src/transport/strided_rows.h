// Strided descriptors inside the transport: geometry checks, cutting a
// descriptor into blocks of rows that each fit one slice, the pages a block's
// rows touch (what PrepareTransfer pre-faults), and the 2-D copy a lane runs
// when the peer's region is mapped into this process.
//
// Pure functions (no UCX, no Agent state), unit-tested in
// tests/transport/strided_descriptor_test.cc. Thread-safety: none needed (no state).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/streaming_store.h"
#include "shardwire/status.h"
#include "shardwire/transfer_descriptor.h"

namespace shardwire::transport {

/// Checks the rows of one side of a descriptor against a region of
/// `region_length` bytes: rows start at `offset`, `offset + stride`, ...; each is
/// `length` bytes; there are `count` of them. Errors (kInvalidArgument, message
/// starts with `what`, e.g. "descriptor 3: local"): a stride shorter than
/// `length` while count > 1 and length > 0 (rows would overlap; zero stride
/// included), count * length overflowing 64 bits, or the last row ending beyond
/// the region (computed without overflow). count 0 or length 0 is always valid.
Status CheckRows(std::uint64_t offset, std::uint64_t stride, std::uint64_t count, std::uint64_t length,
                 std::uint64_t region_length, const std::string& what);

/// A run of rows of one descriptor that moves as one unit (one flow-control
/// credit): `count` rows of `length` bytes, starting at the two offsets and
/// advancing by the descriptor's strides. A block of one row has strides 0.
struct RowBlock {
  std::uint64_t local_offset = 0;
  std::uint64_t remote_offset = 0;
  std::uint64_t length = 0;
  std::uint64_t count = 1;
  std::uint64_t local_stride = 0;
  std::uint64_t remote_stride = 0;

  std::uint64_t bytes() const { return count * length; }
  bool operator==(const RowBlock&) const = default;
};

/// Cuts a (checked) descriptor into blocks of at most `slice_bytes` bytes
/// (slice_bytes >= 1): rows of at most slice_bytes are grouped,
/// floor(slice_bytes / length) rows per block (a contiguous descriptor, count 1,
/// is cut at slice boundaries as before); a row longer than slice_bytes becomes
/// single-row blocks of at most slice_bytes. When `one_row_per_block` is set
/// (paths that need one operation per row, e.g. active-message writes), every
/// block holds one row. Appends to `out`; adds nothing for 0 bytes.
void CutIntoBlocks(const TransferDescriptor& d, std::uint64_t slice_bytes, bool one_row_per_block,
                   std::vector<RowBlock>& out);

/// A range of whole pages [begin, end) (addresses, multiples of the page size).
struct PageRange {
  std::uintptr_t begin = 0;
  std::uintptr_t end = 0;
  bool operator==(const PageRange&) const = default;
};

/// Appends the pages that `count` rows of `length` bytes at `addr`, `addr +
/// stride`, ... touch (page = the page size in bytes, a power of two). When the
/// gap between rows (stride - length) is shorter than a page, no page lies
/// wholly inside a gap, so the pages are those of the whole span (one range);
/// otherwise one range per row. Appends nothing for 0 bytes.
void AppendRowPages(std::uintptr_t addr, std::uint64_t count, std::uint64_t length, std::uint64_t stride,
                    std::uintptr_t page, std::vector<PageRange>& out);

/// Sorts `ranges` and merges overlapping or adjacent ones in place.
void MergePageRanges(std::vector<PageRange>& ranges);

/// Copies `count` rows of `length` bytes from `src` (rows `src_stride` apart) to
/// `dst` (rows `dst_stride` apart): a 2-D memcpy. When both strides equal
/// `length` the rows form one contiguous range and are copied with one memcpy.
void CopyRows(std::byte* dst, std::uint64_t dst_stride, const std::byte* src, std::uint64_t src_stride,
              std::uint64_t count, std::uint64_t length);

/// CopyRows for a destination this thread will not read again soon (a peer's
/// buffer): rows by StreamCopy (core/streaming_store.h: non-temporal stores on
/// x86-64, no read-for-ownership), then StreamFence, so the bytes are globally
/// visible when it returns. On the Zen 3 development VM plain row copies into a
/// mapped peer buffer, and the kernel's page-by-page copies, ran at 0.54-0.62x of a
/// whole-buffer memcpy, this copy at 0.95-1.01x (bench/streaming_copy_bench;
/// docs/benchmarks_history.md, "Streaming stores into mapped engine buffers"). Copies of
/// fewer than kMinStreamingCopyBytes in all (they may stay in cache, where
/// streaming stores are slower: 4 KiB WRITEs fell from 9.4 to 2.5 M messages/s in
/// agent_transfer_bench --section small) and rows shorter than
/// kMinStreamingRowBytes go to CopyRows. Same arguments and result as CopyRows.
void CopyRowsStreaming(std::byte* dst, std::uint64_t dst_stride, const std::byte* src, std::uint64_t src_stride,
                       std::uint64_t count, std::uint64_t length);

/// Rows shorter than this (bytes) are not worth a streaming copy: memcpy them.
inline constexpr std::uint64_t kMinStreamingRowBytes = kMinStreamCopyBytes;
/// Copies (count x length) smaller than this (bytes; half the 512 KiB L2 of a
/// development VM core) go to CopyRows: they may be read back from cache.
inline constexpr std::uint64_t kMinStreamingCopyBytes = 256 << 10;

}  // namespace shardwire::transport
