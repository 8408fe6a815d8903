// Element-wise casts between the floating-point formats a trainer and an engine hold:
// bf16, fp16 and fp32, in any direction.
//
// Rounding: round-to-nearest, ties-to-even (IEEE 754 roundTiesToEven), as torch's
// `Tensor.to(dtype)` and numpy's `astype` do. Widening casts (bf16 -> fp32, fp16 -> fp32) are
// exact. Narrowing casts overflow to +-infinity (IEEE behaviour): fp32 -> fp16 for |x| >= 65520,
// fp32 -> bf16 past the largest bf16 midpoint. Subnormals are kept (no flush to zero) in every
// direction. bf16 <-> fp16 goes through fp32, which is exact on the way in, so the result is
// the single correctly rounded value. NaN stays NaN with its sign; its payload keeps the top
// bits that fit and the quiet bit is set (payloads are not part of the contract).
//
// These functions are the streaming kernels of the convert layer: they work on any sub-range
// of a tensor (caller-owned buffers, no allocation) and are written as plain loops the
// compiler vectorises (bit manipulation, no per-element calls).
//
// Thread-safety: pure functions; distinct output buffers may be filled concurrently.
#pragma once

#include <cstddef>
#include <span>

#include "shardwire/dtype.h"
#include "shardwire/status.h"

namespace shardwire {

/// True when CastElements supports `dtype` (F16, BF16, F32).
bool IsCastableDType(DType dtype);

/// Converts the elements in `src` (little-endian, dtype `from`) into `dst` (dtype `to`).
/// The element count is src.size() / DTypeSize(from); `dst` must hold exactly that many
/// elements of `to`. Pointers need no alignment. from == to copies the bytes.
/// Errors: kUnsupported when `from` or `to` is not F16/BF16/F32 (names both dtypes);
/// kInvalidArgument when src.size() is not a multiple of the element size or dst.size()
/// differs from count * DTypeSize(to) (names the sizes). Nothing is written on error.
Status CastElements(DType from, DType to, std::span<const std::byte> src, std::span<std::byte> dst);

}  // namespace shardwire
