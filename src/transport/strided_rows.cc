#include "transport/strided_rows.h"

#include <algorithm>
#include <cstring>

#include <fmt/format.h>

#include "core/streaming_store.h"

namespace shardwire::transport {

Status CheckRows(std::uint64_t offset, std::uint64_t stride, std::uint64_t count, std::uint64_t length,
                 std::uint64_t region_length, const std::string& what) {
  if (count == 0 || length == 0) return Status::Ok();
  if (count > 1 && stride < length)
    return InvalidArgument(fmt::format("{} stride {} is shorter than the row length {} ({} rows would overlap)", what,
                                       stride, length, count));
  if (length > UINT64_MAX / count)
    return InvalidArgument(fmt::format("{} {} rows of {} bytes overflow 64 bits", what, count, length));
  // Last row starts at offset + (count - 1) * stride and ends length bytes later.
  const std::uint64_t steps = count - 1;
  if (offset > region_length || length > region_length - offset ||
      (steps > 0 && stride > (region_length - offset - length) / steps))
    return InvalidArgument(fmt::format("{} rows [{} + i * {}, + {}) for i < {} exceed the region of {} bytes", what,
                                       offset, stride, length, count, region_length));
  return Status::Ok();
}

void CutIntoBlocks(const TransferDescriptor& d, std::uint64_t slice_bytes, bool one_row_per_block,
                   std::vector<RowBlock>& out) {
  if (d.count == 0 || d.length == 0) return;
  slice_bytes = std::max<std::uint64_t>(slice_bytes, 1);
  const bool contiguous = d.count == 1 || (d.local_stride == d.length && d.remote_stride == d.length);
  if (contiguous && !(one_row_per_block && d.count > 1)) {
    // One contiguous range: cut at slice boundaries.
    const std::uint64_t total = d.count * d.length;
    for (std::uint64_t done = 0; done < total; done += slice_bytes)
      out.push_back({d.local_offset + done, d.remote_offset + done, std::min(slice_bytes, total - done), 1, 0, 0});
    return;
  }
  if (d.length > slice_bytes || one_row_per_block) {
    for (std::uint64_t r = 0; r < d.count; ++r) {
      const std::uint64_t lo = d.local_offset + r * d.local_stride;
      const std::uint64_t ro = d.remote_offset + r * d.remote_stride;
      for (std::uint64_t done = 0; done < d.length; done += slice_bytes)
        out.push_back({lo + done, ro + done, std::min(slice_bytes, d.length - done), 1, 0, 0});
    }
    return;
  }
  const std::uint64_t rows_per_block = slice_bytes / d.length;  // >= 1
  for (std::uint64_t r = 0; r < d.count; r += rows_per_block) {
    const std::uint64_t n = std::min(rows_per_block, d.count - r);
    out.push_back({d.local_offset + r * d.local_stride, d.remote_offset + r * d.remote_stride, d.length, n,
                   n > 1 ? d.local_stride : 0, n > 1 ? d.remote_stride : 0});
  }
}

void AppendRowPages(std::uintptr_t addr, std::uint64_t count, std::uint64_t length, std::uint64_t stride,
                    std::uintptr_t page, std::vector<PageRange>& out) {
  if (count == 0 || length == 0) return;
  const std::uintptr_t mask = ~(page - 1);
  if (count == 1 || stride - length < page) {
    const std::uintptr_t end = addr + (count - 1) * stride + length;
    out.push_back({addr & mask, (end + page - 1) & mask});
    return;
  }
  for (std::uint64_t r = 0; r < count; ++r) {
    const std::uintptr_t a = addr + r * stride;
    out.push_back({a & mask, (a + length + page - 1) & mask});
  }
}

void MergePageRanges(std::vector<PageRange>& ranges) {
  std::sort(ranges.begin(), ranges.end(), [](const PageRange& x, const PageRange& y) { return x.begin < y.begin; });
  std::size_t k = 0;
  for (const PageRange& r : ranges) {
    if (k > 0 && r.begin <= ranges[k - 1].end) {
      ranges[k - 1].end = std::max(ranges[k - 1].end, r.end);
    } else {
      ranges[k++] = r;
    }
  }
  ranges.resize(k);
}

void CopyRows(std::byte* dst, std::uint64_t dst_stride, const std::byte* src, std::uint64_t src_stride,
              std::uint64_t count, std::uint64_t length) {
  if (count == 0 || length == 0) return;
  if (count == 1 || (dst_stride == length && src_stride == length)) {
    std::memcpy(dst, src, count * length);
    return;
  }
  for (std::uint64_t r = 0; r < count; ++r) std::memcpy(dst + r * dst_stride, src + r * src_stride, length);
}

void CopyRowsStreaming(std::byte* dst, std::uint64_t dst_stride, const std::byte* src, std::uint64_t src_stride,
                       std::uint64_t count, std::uint64_t length) {
  if (count == 0 || length == 0) return;
  if (count == 1 || (dst_stride == length && src_stride == length)) {
    length *= count;
    count = 1;
  }
  if (length < kMinStreamingRowBytes || count * length < kMinStreamingCopyBytes) {
    CopyRows(dst, dst_stride, src, src_stride, count, length);
    return;
  }
  for (std::uint64_t r = 0; r < count; ++r) StreamCopy(dst + r * dst_stride, src + r * src_stride, length);
  StreamFence();  // streaming stores are weakly ordered: visible before the caller signals completion
}

}  // namespace shardwire::transport
