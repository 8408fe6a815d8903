// Internal: the hot loops of the FP8 block quantiser, one function per source dtype, plain
// non-template functions so that they can be compiled several times for different CPUs.
#pragma once

#include <cstddef>
#include <cstdint>

namespace shardwire::convert {

/// Largest magnitude bit pattern (x & 0x7FFF) of a block of 16-bit floats (bf16 or fp16): `nrows`
/// rows of `ncols` elements, rows `stride` elements apart. Integer order equals |x| order.
std::uint32_t MaxMagnitude16(const std::byte* src, std::int64_t stride, std::int64_t nrows, std::int64_t ncols);
/// The same for fp32 (x & 0x7FFFFFFF).
std::uint32_t MaxMagnitude32(const std::byte* src, std::int64_t stride, std::int64_t nrows, std::int64_t ncols);

/// out[c] = e4m3_rne(fp32(src[c]) * mul) for c < n, src in bf16 / fp16 / fp32 (finite).
void ScaleToE4m3Bf16(const std::byte* src, std::uint8_t* out, std::size_t n, float mul);
void ScaleToE4m3F16(const std::byte* src, std::uint8_t* out, std::size_t n, float mul);
void ScaleToE4m3F32(const std::byte* src, std::uint8_t* out, std::size_t n, float mul);

}  // namespace shardwire::convert
