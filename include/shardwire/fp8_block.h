// FP8 E4M3 block quantisation with per-block fp32 scales ("block-128 FP8"), the weight
// format of DeepSeek-V3/R1, Kimi-K2 and GLM-4.5 FP8 releases and of vLLM's / SGLang's
// block-FP8 linear layers.
//
// Layout: a 2-D weight [m, n] becomes `weight` F8_E4M3 [m, n] plus `weight_scale_inv` F32
// [ceil(m/128), ceil(n/128)]; element (i, j) dequantises as
//   x ~= e4m3_to_float(weight[i, j]) * weight_scale_inv[i / 128, j / 128].
// A 3-D expert tensor [E, m, n] is E independent matrices: scales [E, ceil(m/128), ceil(n/128)].
// Edge blocks (m or n not a multiple of 128) are partial: their amax covers only real elements
// (DeepGEMM pads with zeros, which cannot raise an amax).
//
// Algorithm (bit-exact to DeepGEMM's `per_block_cast_to_fp8`, deepseek-ai/DeepGEMM
// tests/test_core.py (2025), copied as the reference by vLLM and SGLang tests):
//   amax      = max |x| over the block, in fp32, clamped below at 1e-4 (fp32(1e-4));
//   q         = e4m3fn_rne(fp32(x) * s) with the product in fp32;
//   s, scale_inv per Fp8ScaleArithmetic (below). PyTorch evaluates the reference's
//   `448.0 / x_amax` as `x_amax.reciprocal() * 448.0` (torch/_tensor.py `__rdiv__`), and on
//   CUDA `x_amax / 448.0` as `x_amax * fp32(1/448)` (ATen BinaryDivTrueKernel.cu: "if the second
//   operand is a CPU scalar, compute a * reciprocal(b)"), so the bits DeepGEMM produces on a GPU are
//   kTorchCuda's; kExactDivision is the formula read literally (one rounding per quotient).
//   They differ in the last bit of s for ~27% of blocks and of scale_inv for ~50%.
// UE8M0 (power-of-two scales, DeepGEMM on Blackwell / SM100; deepseek-ai/DeepGEMM
// deep_gemm/utils/math.py `per_block_cast_to_fp8(x, use_ue8m0=True)` and `ceil_to_ue8m0`):
//   sf = ceil_to_ue8m0(amax / 448) (the fp32 rounded up to a power of two: biased exponent + 1
//   when the mantissa is non-zero, clamped to [1, 254]); q = e4m3fn_rne(fp32(x) * (1 / sf));
//   scale_inv = sf.
// NaN or +-Inf anywhere in the input is an error (the reference would silently produce NaN
// scales). E4M3fn encoding: OCP 8-bit floating point spec (bias 7, max 448, 0x7F/0xFF NaN).
//
// The kernel is streaming: QuantizeFp8BlockRows handles any run of whole block-rows of a
// matrix into caller-owned buffers, one block-row (128 rows) at a time, so memory is bounded
// and a converter can work on a sub-range of rows.
//
// Thread-safety: pure functions; distinct outputs may be filled concurrently.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "shardwire/dtype.h"
#include "shardwire/safetensors.h"
#include "shardwire/status.h"

namespace shardwire {

/// How the per-block scale is stored.
enum class Fp8ScaleFormat : std::uint8_t {
  kFp32,   ///< scale_inv = amax / 448 (any fp32)
  kUe8m0,  ///< scale_inv rounded up to a power of two (still stored as fp32)
};

/// Which fp32 operations compute the scales (see the file comment for the derivation).
enum class Fp8ScaleArithmetic : std::uint8_t {
  kTorchCuda,      ///< s = fp32(fp32(1/amax) * 448); scale_inv = fp32(amax * fp32(1/448)) - DeepGEMM on a GPU
  kExactDivision,  ///< s = fp32(448 / amax);         scale_inv = fp32(amax / 448)
};

/// Parameters of block quantisation. Block sizes in elements (rows, columns), both >= 1.
struct Fp8BlockOptions {
  std::int64_t block_rows = 128;
  std::int64_t block_cols = 128;
  Fp8ScaleFormat scale_format = Fp8ScaleFormat::kFp32;
  Fp8ScaleArithmetic arithmetic = Fp8ScaleArithmetic::kTorchCuda;
};

/// Where a slab sits in its tensor, for error messages only.
struct Fp8ErrorContext {
  std::string_view tensor;     ///< tensor name
  std::int64_t first_row = 0;  ///< row index (within the matrix) of the slab's first row
  std::int64_t expert = -1;    ///< expert index of a 3-D tensor, -1 for 2-D
};

/// Shape of the scale tensor for a 2-D [m, n] or 3-D [E, m, n] weight:
/// [ceil(m/br), ceil(n/bc)] or [E, ceil(m/br), ceil(n/bc)].
/// kInvalidArgument for another rank, a negative dim or a block size < 1.
Result<std::vector<std::int64_t>> Fp8BlockScaleShape(const std::vector<std::int64_t>& weight_shape,
                                                     const Fp8BlockOptions& options);

/// Quantises `rows` rows x `cols` columns of one matrix (row-major, dtype `src_dtype` in F16 /
/// BF16 / F32, no alignment needed). The slab must start at a block-row boundary of the matrix;
/// its last block-row may be partial (rows not a multiple of block_rows), which is right only
/// for the matrix's last rows. Writes q_out (rows*cols E4M3 bytes, row-major) and
/// scale_inv_out (ceil(rows/br) * ceil(cols/bc) fp32, row-major). Works one block-row at a
/// time; allocates nothing.
/// Errors: kUnsupported for another src dtype; kInvalidArgument when a span size disagrees
/// with the shape (names the tensor); kCorruptData naming the tensor, the element [row, col]
/// (row within the matrix, and expert) and the value when the input holds NaN or +-Inf. On
/// error, the outputs of earlier block-rows have been written, later ones not.
Status QuantizeFp8BlockRows(DType src_dtype, std::span<const std::byte> src, std::int64_t rows, std::int64_t cols,
                            std::span<std::uint8_t> q_out, std::span<float> scale_inv_out,
                            const Fp8BlockOptions& options, const Fp8ErrorContext& context);

/// Whole-tensor convenience: a 2-D [m, n] or 3-D [E, m, n] tensor (per expert) into q_out
/// (numel bytes) and scale_inv_out (numel of Fp8BlockScaleShape). Errors as above, plus
/// kInvalidArgument for another rank.
Status QuantizeFp8BlockTensor(const TensorView& src, std::span<std::uint8_t> q_out, std::span<float> scale_inv_out,
                              const Fp8BlockOptions& options);

/// A shard of one 2-D [m, n] matrix: rows [row0, row0 + rows) x columns [col0, col0 + cols)
/// (elements). The shard's source bytes are dense row-major [rows, cols].
struct Fp8ShardBox {
  std::int64_t row0 = 0, rows = 0, col0 = 0, cols = 0;
};

/// A rectangle of the block grid: block rows [row_begin, row_end) x block columns
/// [col_begin, col_end); count() blocks, stored row-major wherever a grid is passed.
struct Fp8BlockRange {
  std::int64_t row_begin = 0, row_end = 0, col_begin = 0, col_end = 0;
  std::int64_t count() const { return (row_end - row_begin) * (col_end - col_begin); }
};

/// The blocks a shard intersects (a block may straddle several shards when shard edges are
/// not multiples of the block size, e.g. FSDP's torch.chunk rows).
Fp8BlockRange Fp8BlocksTouched(const Fp8ShardBox& shard, const Fp8BlockOptions& options);

/// The blocks whose first element [i * br, j * bc] lies in the shard: the scale entries the
/// shard owns. Every block of the matrix is owned by exactly one shard of a partition.
Fp8BlockRange Fp8BlocksOwned(const Fp8ShardBox& shard, const Fp8BlockOptions& options);

/// Sharded block quantisation, step 1: for every block the shard touches, the largest |x| over
/// the shard's own elements of that block (fp32, exact), into `partial_amax` (row-major over
/// Fp8BlocksTouched). A block's amax is the max over the partial amaxes of every shard holding
/// part of it, so shards that split a block exchange a few floats instead of gathering rows.
/// Errors: kUnsupported for a src dtype other than F16/BF16/F32; kInvalidArgument for sizes
/// that disagree with the box; kCorruptData naming the tensor and element [row, col] (matrix
/// coordinates) for NaN or +-Inf.
Status Fp8ShardBlockAmax(DType src_dtype, std::span<const std::byte> src, const Fp8ShardBox& shard,
                         std::span<float> partial_amax, const Fp8BlockOptions& options,
                         const Fp8ErrorContext& context);

/// Sharded block quantisation, step 2: quantises the shard with `block_amax` (row-major over
/// Fp8BlocksTouched; each the amax of the WHOLE block) into q_out (rows * cols E4M3 bytes,
/// row-major) and the owned scales into scale_inv_out (row-major over Fp8BlocksOwned).
/// The result is bit-identical to QuantizeFp8BlockRows over the whole matrix, restricted to
/// the shard (same ScaleFor arithmetic, same kernels).
/// Precondition: block_amax[k] >= the shard's own partial amax of block k (Fp8ShardBlockAmax),
/// as a max over every shard's partial amaxes is. Not checked (it would cost a second read of
/// the shard): with a smaller amax an element scales past 448 and its code is garbage (a sign
/// flip in the portable kernel, other bytes in AVX2 / AVX-512). PushConverter maxes every
/// received amax with its own partial one first.
/// Errors: as Fp8ShardBlockAmax, plus kCorruptData for a negative, NaN or infinite amax (a
/// peer's amax is untrusted input).
Status QuantizeFp8Shard(DType src_dtype, std::span<const std::byte> src, const Fp8ShardBox& shard,
                        std::span<const float> block_amax, std::span<std::uint8_t> q_out,
                        std::span<float> scale_inv_out, const Fp8BlockOptions& options,
                        const Fp8ErrorContext& context);

/// Inverse for verification: out[i, j] = rne(e4m3_to_float(q[i, j]) * scale_inv[i/br, j/bc])
/// in `out_dtype` (BF16, F16 or F32; the product is computed in fp32), for a 2-D [m, n] or 3-D
/// [E, m, n] `shape`. E4M3 NaN codes (0x7F, 0xFF) decode to NaN.
/// Errors: kUnsupported for another out dtype; kInvalidArgument when a span size disagrees
/// with the shape or the rank is not 2 or 3.
Status DequantizeFp8Block(std::span<const std::uint8_t> q, std::span<const float> scale_inv,
                          const std::vector<std::int64_t>& shape, DType out_dtype, std::span<std::byte> out,
                          const Fp8BlockOptions& options);

/// The value of an E4M3fn code (exact in fp32; 0x7F / 0xFF are NaN).
float E4m3ToFloat(std::uint8_t code);

}  // namespace shardwire
