// Internal: the hot loops of the FP8 block quantiser and of the casts, one function per source dtype, plain
// non-template functions so that they can be compiled several times for different CPUs. Each
// works on one whole row (contiguous, prefetch-friendly) split into column blocks of `bc`.
#pragma once

#include <cstddef>
#include <cstdint>

namespace shardwire::convert {

/// For every column block b of the row (`cols` elements, blocks of `bc`), raises maxes[b] to the
/// largest magnitude bit pattern in it: x & 0x7FFF for 16-bit floats (bf16, fp16), x & 0x7FFFFFFF
/// for fp32. Integer order equals |x| order (and Inf/NaN patterns are the largest).
void RowMaxMagnitude16(const std::byte* row, std::int64_t cols, std::int64_t bc, std::uint32_t* maxes);
void RowMaxMagnitude32(const std::byte* row, std::int64_t cols, std::int64_t bc, std::uint32_t* maxes);

/// out[c] = e4m3_rne(fp32(row[c]) * muls[c / bc]) for c < cols, row in bf16 / fp16 / fp32 (finite).
void RowToE4m3Bf16(const std::byte* row, std::uint8_t* out, std::int64_t cols, std::int64_t bc, const float* muls);
void RowToE4m3F16(const std::byte* row, std::uint8_t* out, std::int64_t cols, std::int64_t bc, const float* muls);
void RowToE4m3F32(const std::byte* row, std::uint8_t* out, std::int64_t cols, std::int64_t bc, const float* muls);

}  // namespace shardwire::convert

namespace shardwire::convert {

/// Element-wise casts of `n` elements (the CastElements loops), same cloning as above.
void CastBf16ToF32(const std::byte* src, std::byte* dst, std::size_t n);
void CastBf16ToF16(const std::byte* src, std::byte* dst, std::size_t n);
void CastF16ToF32(const std::byte* src, std::byte* dst, std::size_t n);
void CastF16ToBf16(const std::byte* src, std::byte* dst, std::size_t n);
void CastF32ToBf16(const std::byte* src, std::byte* dst, std::size_t n);
void CastF32ToF16(const std::byte* src, std::byte* dst, std::size_t n);

}  // namespace shardwire::convert
