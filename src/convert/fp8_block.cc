#include "shardwire/fp8_block.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <string>

#include <fmt/format.h>

#include "convert/float_bits.h"
#include "convert/fp8_kernels.h"

namespace shardwire {
namespace {

using convert::BitsToFloat;
using convert::FloatToBits;
using convert::LoadLe;

// Per source dtype: the raw element type, its magnitude bits (|x| orders like the integer), the
// smallest magnitude that is Inf/NaN, and the exact conversion to fp32.
struct Bf16Traits {
  using Bits = std::uint16_t;
  static constexpr std::uint32_t kMagnitudeMask = 0x7FFFu;
  static constexpr std::uint32_t kSpecial = 0x7F80u;
  static float ToFloat(Bits b) { return convert::Bf16ToFloat(b); }
  static convert::BlockMaxFn Max(const convert::ConvertKernels& k) { return k.block_max16; }
  static convert::ToE4m3Fn Scale(const convert::ConvertKernels& k) { return k.bf16_to_e4m3; }
};
struct F16Traits {
  using Bits = std::uint16_t;
  static constexpr std::uint32_t kMagnitudeMask = 0x7FFFu;
  static constexpr std::uint32_t kSpecial = 0x7C00u;
  static float ToFloat(Bits b) { return convert::F16ToFloat(b); }
  static convert::BlockMaxFn Max(const convert::ConvertKernels& k) { return k.block_max16; }
  static convert::ToE4m3Fn Scale(const convert::ConvertKernels& k) { return k.f16_to_e4m3; }
};
struct F32Traits {
  using Bits = std::uint32_t;
  static constexpr std::uint32_t kMagnitudeMask = 0x7FFFFFFFu;
  static constexpr std::uint32_t kSpecial = 0x7F800000u;
  static float ToFloat(Bits b) { return BitsToFloat(b); }
  static convert::BlockMaxFn Max(const convert::ConvertKernels& k) { return k.block_max32; }
  static convert::ToE4m3Fn Scale(const convert::ConvertKernels& k) { return k.f32_to_e4m3; }
};

// fp32(1e-4): the reference clamps an fp32 tensor with the Python float 1e-4.
constexpr float kAmaxFloor = 1e-4f;
// fp32(1/448), the reciprocal PyTorch's CUDA division by a CPU scalar multiplies with.
const float kInv448 = static_cast<float>(1.0 / 448.0);

// DeepGEMM's ceil_to_ue8m0 on a positive finite fp32: the next power of two >= x.
float CeilToUe8m0(float x) {
  const std::uint32_t bits = FloatToBits(x);
  std::uint32_t exp = ((bits >> 23) & 0xFFu) + ((bits & 0x7FFFFFu) != 0 ? 1u : 0u);
  exp = std::clamp<std::uint32_t>(exp, 1u, 254u);
  return BitsToFloat(exp << 23);
}

struct BlockScale {
  float multiplier;  // s: q = e4m3(x * s)
  float scale_inv;   // stored beside the weight
};

BlockScale ScaleFor(float amax, const Fp8BlockOptions& o) {
  // Keep every step a separate fp32 operation (volatile-free: -ffp-contract=off for this layer).
  amax = std::max(amax, kAmaxFloor);
  const bool cuda = o.arithmetic == Fp8ScaleArithmetic::kTorchCuda;
  if (o.scale_format == Fp8ScaleFormat::kUe8m0) {
    const float sf = CeilToUe8m0(cuda ? amax * kInv448 : amax / 448.0f);
    const float one_over = 1.0f / sf;  // sf is a power of two: exact
    return {one_over, sf};
  }
  if (cuda) {
    const float recip = 1.0f / amax;
    return {recip * 448.0f, amax * kInv448};
  }
  return {448.0f / amax, amax / 448.0f};
}

std::string DescribeValue(float v) {
  if (std::isnan(v)) return "NaN";
  return v > 0 ? "+inf" : "-inf";
}

template <typename T>
Status NonFiniteError(const std::byte* block_src, std::int64_t cols, std::int64_t nrows, std::int64_t ncols,
                      std::int64_t row0_in_matrix, std::int64_t col0, const Fp8ErrorContext& ctx) {
  using Bits = typename T::Bits;
  for (std::int64_t r = 0; r < nrows; ++r) {
    for (std::int64_t c = 0; c < ncols; ++c) {
      const Bits b = LoadLe<Bits>(block_src + (r * cols + c) * sizeof(Bits));
      if ((b & T::kMagnitudeMask) >= T::kSpecial) {
        const std::string where =
            ctx.expert >= 0 ? fmt::format("expert {}, element [{}, {}]", ctx.expert, row0_in_matrix + r, col0 + c)
                            : fmt::format("element [{}, {}]", row0_in_matrix + r, col0 + c);
        return CorruptData(fmt::format("tensor \"{}\": {} is {}; FP8 block quantisation needs finite values",
                                       ctx.tensor, where, DescribeValue(T::ToFloat(b))));
      }
    }
  }
  return Internal(fmt::format("tensor \"{}\": non-finite block not located", ctx.tensor));
}

// Non-finite values sit in the block-row whose maxes reached the Inf/NaN patterns: locate and name one.
template <typename T>
Status FindNonFinite(const std::byte* src, std::int64_t cols, std::int64_t nrows, std::int64_t bc,
                     const std::uint32_t* maxes, std::int64_t col_blocks, std::int64_t row0, std::int64_t col_base,
                     const Fp8ErrorContext& ctx) {
  for (std::int64_t cb = 0; cb < col_blocks; ++cb) {
    if (maxes[cb] < T::kSpecial) continue;
    const std::int64_t c0 = cb * bc;
    return NonFiniteError<T>(src + c0 * static_cast<std::int64_t>(sizeof(typename T::Bits)), cols, nrows,
                             std::min(bc, cols - col_base - c0), row0, col_base + c0, ctx);
  }
  return Internal(fmt::format("tensor \"{}\": non-finite block not located", ctx.tensor));
}

// One block-row at a time: pass 1 streams its rows from memory for the per-block amax (magnitude
// bits), pass 2 reads them again, now from cache (L2/L3), scaling each block by its multiplier.
// So the matrix crosses the memory bus once. Whole rows per pass: splitting a block-row into
// column chunks (to fit L2) measured slower, as 128 short strided streams defeat the prefetchers.
// Scratch for the per-block maxes and multipliers is a small stack buffer.
template <typename T>
Status QuantizeRows(const std::byte* src, std::int64_t rows, std::int64_t cols, std::uint8_t* q, float* scale_inv,
                    const Fp8BlockOptions& o, const Fp8ErrorContext& ctx) {
  const std::int64_t br = o.block_rows;
  const std::int64_t bc = o.block_cols;
  const std::int64_t esize = static_cast<std::int64_t>(sizeof(typename T::Bits));
  const std::int64_t col_blocks = (cols + bc - 1) / bc;
  const std::int64_t row_bytes = cols * esize;
  constexpr std::int64_t kChunk = 256;  // column blocks per pass (bounded stack scratch)
  const convert::ConvertKernels& k = convert::Kernels();
  const convert::BlockMaxFn block_max = T::Max(k);
  const convert::ToE4m3Fn scale = T::Scale(k);
  std::uint32_t maxes[kChunk];
  float muls[kChunk];
  for (std::int64_t r0 = 0, rb = 0; r0 < rows; r0 += br, ++rb) {
    const std::int64_t nrows = std::min(br, rows - r0);
    const std::byte* block_row = src + r0 * row_bytes;
    for (std::int64_t cb0 = 0; cb0 < col_blocks; cb0 += kChunk) {
      const std::int64_t nb = std::min(kChunk, col_blocks - cb0);
      const std::int64_t c0 = cb0 * bc;
      const std::int64_t ncols = std::min(nb * bc, cols - c0);
      const std::byte* part = block_row + c0 * esize;
      std::fill(maxes, maxes + nb, 0u);
      block_max(part, row_bytes, nrows, ncols, bc, maxes);
      for (std::int64_t b = 0; b < nb; ++b) {
        if (maxes[b] >= T::kSpecial) {
          return FindNonFinite<T>(part, cols, nrows, bc, maxes, nb, ctx.first_row + r0, c0, ctx);
        }
        const BlockScale s = ScaleFor(T::ToFloat(static_cast<typename T::Bits>(maxes[b])), o);
        scale_inv[rb * col_blocks + cb0 + b] = s.scale_inv;
        muls[b] = s.multiplier;
      }
      // Prefetching the next block-row while scaling this one: the next pass 1 reads from cache.
      scale(part, row_bytes, nrows, ncols, bc, muls, q + r0 * cols + c0, cols, br * row_bytes);
    }
  }
  return Status::Ok();
}

Status CheckOptions(const Fp8BlockOptions& o) {
  if (o.block_rows < 1 || o.block_cols < 1) {
    return InvalidArgument(fmt::format("FP8 block size {}x{} must be at least 1x1", o.block_rows, o.block_cols));
  }
  return Status::Ok();
}

// ceil(a / b) for a >= 0, b >= 1, without the overflow of (a + b - 1) / b near INT64_MAX.
std::int64_t CeilDiv(std::int64_t a, std::int64_t b) { return a / b + (a % b != 0 ? 1 : 0); }

std::array<float, 256> MakeE4m3Table() {
  std::array<float, 256> t{};
  for (int code = 0; code < 256; ++code) {
    const int exp = (code >> 3) & 0xF;
    const int man = code & 0x7;
    float v = exp == 0 ? std::ldexp(static_cast<float>(man), -9) : std::ldexp(static_cast<float>(8 + man), exp - 10);
    if ((code & 0x7F) == 0x7F) v = NAN;
    t[static_cast<std::size_t>(code)] = (code & 0x80) ? -v : v;
  }
  return t;
}

const std::array<float, 256>& E4m3Table() {
  static const std::array<float, 256> table = MakeE4m3Table();
  return table;
}

// ---- sharded quantisation (Fp8ShardBlockAmax / QuantizeFp8Shard) ----

// Calls fn(first column offset in the row, length, block length, index of the first block relative
// to the touched range) for the row's segments: the partial first block, then whole blocks.
template <typename Fn>
void ForEachRowSegment(const Fp8ShardBox& b, std::int64_t bc, Fn fn) {
  const std::int64_t head = std::min(b.cols, (b.col0 / bc + 1) * bc - b.col0);
  fn(std::int64_t{0}, head, head, std::int64_t{0});
  if (b.cols > head) fn(head, b.cols - head, bc, std::int64_t{1});
}

// Calls fn(first row in the shard, row count, block-row index relative to the touched range) for
// the runs of the shard's rows that lie in one block-row.
template <typename Fn>
void ForEachBlockRowRun(const Fp8ShardBox& b, std::int64_t br, std::int64_t first_block_row, Fn fn) {
  for (std::int64_t r = 0; r < b.rows;) {
    const std::int64_t i = (b.row0 + r) / br;
    const std::int64_t end = std::min(b.rows, (i + 1) * br - b.row0);
    fn(r, end - r, i - first_block_row);
    r = end;
  }
}

template <typename T>
Status ShardAmax(const std::byte* src, const Fp8ShardBox& b, float* out, const Fp8BlockOptions& o,
                 const Fp8ErrorContext& ctx) {
  const Fp8BlockRange t = Fp8BlocksTouched(b, o);
  const std::int64_t nj = t.col_end - t.col_begin;
  std::vector<std::uint32_t> maxes(static_cast<std::size_t>(t.count()), 0u);
  const std::int64_t row_bytes = b.cols * static_cast<std::int64_t>(sizeof(typename T::Bits));
  const convert::BlockMaxFn block_max = T::Max(convert::Kernels());
  ForEachBlockRowRun(b, o.block_rows, t.row_begin, [&](std::int64_t r, std::int64_t nrows, std::int64_t i) {
    std::uint32_t* m = maxes.data() + i * nj;
    ForEachRowSegment(b, o.block_cols, [&](std::int64_t c, std::int64_t len, std::int64_t bc, std::int64_t j) {
      block_max(src + r * row_bytes + c * static_cast<std::int64_t>(sizeof(typename T::Bits)), row_bytes, nrows, len,
                bc, m + j);
    });
  });
  for (std::size_t k = 0; k < maxes.size(); ++k) {
    if (maxes[k] >= T::kSpecial) {
      // Name the first non-finite element of the shard.
      for (std::int64_t r = 0; r < b.rows; ++r) {
        for (std::int64_t c = 0; c < b.cols; ++c) {
          const auto bits =
              LoadLe<typename T::Bits>(src + r * row_bytes + c * static_cast<std::int64_t>(sizeof(typename T::Bits)));
          if ((bits & T::kMagnitudeMask) >= T::kSpecial) {
            return CorruptData(
                fmt::format("tensor \"{}\": element [{}, {}] is {}; FP8 block quantisation needs finite values",
                            ctx.tensor, b.row0 + r, b.col0 + c, DescribeValue(T::ToFloat(bits))));
          }
        }
      }
      return Internal(fmt::format("tensor \"{}\": non-finite block not located", ctx.tensor));
    }
    out[k] = T::ToFloat(static_cast<typename T::Bits>(maxes[k]));
  }
  return Status::Ok();
}

template <typename T>
Status ShardQuantize(const std::byte* src, const Fp8ShardBox& b, const float* amax, std::uint8_t* q, float* scale_inv,
                     const Fp8BlockOptions& o, const Fp8ErrorContext& ctx) {
  const Fp8BlockRange t = Fp8BlocksTouched(b, o);
  const Fp8BlockRange own = Fp8BlocksOwned(b, o);
  const std::int64_t nj = t.col_end - t.col_begin;
  std::vector<float> muls(static_cast<std::size_t>(t.count()));
  for (std::int64_t i = t.row_begin; i < t.row_end; ++i) {
    for (std::int64_t j = t.col_begin; j < t.col_end; ++j) {
      const std::int64_t k = (i - t.row_begin) * nj + (j - t.col_begin);
      const float a = amax[k];
      if (!(a >= 0.0f) || std::isinf(a)) {
        return CorruptData(
            fmt::format("tensor \"{}\": amax {} of block [{}, {}] is not a finite value >= 0", ctx.tensor, a, i, j));
      }
      const BlockScale s = ScaleFor(a, o);
      muls[static_cast<std::size_t>(k)] = s.multiplier;
      if (i >= own.row_begin && i < own.row_end && j >= own.col_begin && j < own.col_end) {
        scale_inv[(i - own.row_begin) * (own.col_end - own.col_begin) + (j - own.col_begin)] = s.scale_inv;
      }
    }
  }
  const std::int64_t row_bytes = b.cols * static_cast<std::int64_t>(sizeof(typename T::Bits));
  const convert::ToE4m3Fn scale = T::Scale(convert::Kernels());
  // The same rows of the next block-row are what the caller's (or this loop's) next pass reads.
  const std::int64_t prefetch_offset = o.block_rows * row_bytes;
  ForEachBlockRowRun(b, o.block_rows, t.row_begin, [&](std::int64_t r, std::int64_t nrows, std::int64_t i) {
    const float* m = muls.data() + i * nj;
    ForEachRowSegment(b, o.block_cols, [&](std::int64_t c, std::int64_t len, std::int64_t bc, std::int64_t j) {
      scale(src + r * row_bytes + c * static_cast<std::int64_t>(sizeof(typename T::Bits)), row_bytes, nrows, len, bc,
            m + j, q + r * b.cols + c, b.cols, prefetch_offset);
    });
  });
  return Status::Ok();
}

Status CheckShardArgs(DType src_dtype, std::size_t src_bytes, const Fp8ShardBox& b, const Fp8BlockOptions& o,
                      const Fp8ErrorContext& ctx) {
  SW_RETURN_IF_ERROR(CheckOptions(o));
  if (src_dtype != DType::kBF16 && src_dtype != DType::kF16 && src_dtype != DType::kF32) {
    return Unsupported(fmt::format("tensor \"{}\": FP8 block quantisation reads F16, BF16 or F32, not {}", ctx.tensor,
                                   DTypeName(src_dtype)));
  }
  if (b.row0 < 0 || b.rows < 0 || b.col0 < 0 || b.cols < 0) {
    return InvalidArgument(fmt::format("tensor \"{}\": negative shard box rows {}+{} cols {}+{}", ctx.tensor, b.row0,
                                       b.rows, b.col0, b.cols));
  }
  const auto n = static_cast<std::uint64_t>(b.rows) * static_cast<std::uint64_t>(b.cols);
  if (src_bytes != n * DTypeSize(src_dtype)) {
    return InvalidArgument(fmt::format("tensor \"{}\": shard [{}, {}] of {} needs {} source bytes, got {}", ctx.tensor,
                                       b.rows, b.cols, DTypeName(src_dtype), n * DTypeSize(src_dtype), src_bytes));
  }
  return Status::Ok();
}

}  // namespace

Fp8BlockRange Fp8BlocksTouched(const Fp8ShardBox& b, const Fp8BlockOptions& o) {
  if (b.rows <= 0 || b.cols <= 0 || o.block_rows < 1 || o.block_cols < 1) return {};
  return {b.row0 / o.block_rows, CeilDiv(b.row0 + b.rows, o.block_rows), b.col0 / o.block_cols,
          CeilDiv(b.col0 + b.cols, o.block_cols)};
}

Fp8BlockRange Fp8BlocksOwned(const Fp8ShardBox& b, const Fp8BlockOptions& o) {
  if (b.rows <= 0 || b.cols <= 0 || o.block_rows < 1 || o.block_cols < 1) return {};
  Fp8BlockRange r{CeilDiv(b.row0, o.block_rows), CeilDiv(b.row0 + b.rows, o.block_rows), CeilDiv(b.col0, o.block_cols),
                  CeilDiv(b.col0 + b.cols, o.block_cols)};
  if (r.row_end < r.row_begin) r.row_end = r.row_begin;
  if (r.col_end < r.col_begin) r.col_end = r.col_begin;
  return r;
}

Status Fp8ShardBlockAmax(DType src_dtype, std::span<const std::byte> src, const Fp8ShardBox& shard,
                         std::span<float> partial_amax, const Fp8BlockOptions& options,
                         const Fp8ErrorContext& context) {
  SW_RETURN_IF_ERROR(CheckShardArgs(src_dtype, src.size(), shard, options, context));
  const Fp8BlockRange t = Fp8BlocksTouched(shard, options);
  if (partial_amax.size() != static_cast<std::size_t>(t.count())) {
    return InvalidArgument(fmt::format("tensor \"{}\": the shard touches {} blocks, {} amax slots given",
                                       context.tensor, t.count(), partial_amax.size()));
  }
  if (t.count() == 0) return Status::Ok();
  switch (src_dtype) {
    case DType::kBF16:
      return ShardAmax<Bf16Traits>(src.data(), shard, partial_amax.data(), options, context);
    case DType::kF16:
      return ShardAmax<F16Traits>(src.data(), shard, partial_amax.data(), options, context);
    default:
      return ShardAmax<F32Traits>(src.data(), shard, partial_amax.data(), options, context);
  }
}

Status QuantizeFp8Shard(DType src_dtype, std::span<const std::byte> src, const Fp8ShardBox& shard,
                        std::span<const float> block_amax, std::span<std::uint8_t> q_out,
                        std::span<float> scale_inv_out, const Fp8BlockOptions& options,
                        const Fp8ErrorContext& context) {
  SW_RETURN_IF_ERROR(CheckShardArgs(src_dtype, src.size(), shard, options, context));
  const Fp8BlockRange t = Fp8BlocksTouched(shard, options);
  const Fp8BlockRange own = Fp8BlocksOwned(shard, options);
  if (block_amax.size() != static_cast<std::size_t>(t.count()) ||
      q_out.size() != static_cast<std::size_t>(shard.rows * shard.cols) ||
      scale_inv_out.size() != static_cast<std::size_t>(own.count())) {
    return InvalidArgument(
        fmt::format("tensor \"{}\": shard [{}, {}] needs {} amax values, {} FP8 bytes and {} scales; got {}, {} and {}",
                    context.tensor, shard.rows, shard.cols, t.count(), shard.rows * shard.cols, own.count(),
                    block_amax.size(), q_out.size(), scale_inv_out.size()));
  }
  if (t.count() == 0) return Status::Ok();
  switch (src_dtype) {
    case DType::kBF16:
      return ShardQuantize<Bf16Traits>(src.data(), shard, block_amax.data(), q_out.data(), scale_inv_out.data(),
                                       options, context);
    case DType::kF16:
      return ShardQuantize<F16Traits>(src.data(), shard, block_amax.data(), q_out.data(), scale_inv_out.data(), options,
                                      context);
    default:
      return ShardQuantize<F32Traits>(src.data(), shard, block_amax.data(), q_out.data(), scale_inv_out.data(), options,
                                      context);
  }
}

float E4m3ToFloat(std::uint8_t code) { return E4m3Table()[code]; }

Result<std::vector<std::int64_t>> Fp8BlockScaleShape(const std::vector<std::int64_t>& shape,
                                                     const Fp8BlockOptions& options) {
  SW_RETURN_IF_ERROR(CheckOptions(options));
  if (shape.size() != 2 && shape.size() != 3) {
    return InvalidArgument("FP8 block quantisation needs a 2-D [m, n] or 3-D expert [E, m, n] tensor, got shape " +
                           ShapeToString(shape));
  }
  for (auto d : shape) {
    if (d < 0) return InvalidArgument("negative dimension in shape " + ShapeToString(shape));
  }
  const std::size_t k = shape.size();
  std::vector<std::int64_t> out(shape.begin(), shape.end());
  out[k - 2] = CeilDiv(shape[k - 2], options.block_rows);
  out[k - 1] = CeilDiv(shape[k - 1], options.block_cols);
  return out;
}

Status QuantizeFp8BlockRows(DType src_dtype, std::span<const std::byte> src, std::int64_t rows, std::int64_t cols,
                            std::span<std::uint8_t> q_out, std::span<float> scale_inv_out,
                            const Fp8BlockOptions& options, const Fp8ErrorContext& context) {
  SW_RETURN_IF_ERROR(CheckOptions(options));
  if (src_dtype != DType::kBF16 && src_dtype != DType::kF16 && src_dtype != DType::kF32) {
    return Unsupported(fmt::format("tensor \"{}\": FP8 block quantisation reads F16, BF16 or F32, not {}",
                                   context.tensor, DTypeName(src_dtype)));
  }
  if (rows < 0 || cols < 0) {
    return InvalidArgument(fmt::format("tensor \"{}\": negative slab shape [{}, {}]", context.tensor, rows, cols));
  }
  const auto n = static_cast<std::uint64_t>(rows) * static_cast<std::uint64_t>(cols);
  const auto scales = static_cast<std::uint64_t>(CeilDiv(rows, options.block_rows) * CeilDiv(cols, options.block_cols));
  if (src.size() != n * DTypeSize(src_dtype) || q_out.size() != n || scale_inv_out.size() != scales) {
    return InvalidArgument(fmt::format(
        "tensor \"{}\": slab [{}, {}] of {} needs {} source bytes, {} FP8 bytes and {} scales; got {}, {} and {}",
        context.tensor, rows, cols, DTypeName(src_dtype), n * DTypeSize(src_dtype), n, scales, src.size(), q_out.size(),
        scale_inv_out.size()));
  }
  if (n == 0) return Status::Ok();
  switch (src_dtype) {
    case DType::kBF16:
      return QuantizeRows<Bf16Traits>(src.data(), rows, cols, q_out.data(), scale_inv_out.data(), options, context);
    case DType::kF16:
      return QuantizeRows<F16Traits>(src.data(), rows, cols, q_out.data(), scale_inv_out.data(), options, context);
    default:
      return QuantizeRows<F32Traits>(src.data(), rows, cols, q_out.data(), scale_inv_out.data(), options, context);
  }
}

Status QuantizeFp8BlockTensor(const TensorView& src, std::span<std::uint8_t> q_out, std::span<float> scale_inv_out,
                              const Fp8BlockOptions& options) {
  auto scale_shape = Fp8BlockScaleShape(src.spec.shape, options);
  if (!scale_shape.ok()) return scale_shape.status().WithContext("tensor \"" + src.spec.name + "\"");
  const auto& shape = src.spec.shape;
  const std::int64_t experts = shape.size() == 3 ? shape[0] : 1;
  const std::int64_t m = shape[shape.size() - 2];
  const std::int64_t n = shape[shape.size() - 1];
  const std::int64_t per_scale = (*scale_shape)[shape.size() - 2] * (*scale_shape)[shape.size() - 1];
  const std::uint64_t src_bytes = static_cast<std::uint64_t>(m * n) * DTypeSize(src.spec.dtype);
  if (src.data.size() != src_bytes * static_cast<std::uint64_t>(experts) ||
      q_out.size() != static_cast<std::uint64_t>(experts * m * n) ||
      scale_inv_out.size() != static_cast<std::uint64_t>(experts * per_scale)) {
    return InvalidArgument(fmt::format("tensor \"{}\" {}: buffer sizes {} / {} / {} do not match the shape",
                                       src.spec.name, ShapeToString(shape), src.data.size(), q_out.size(),
                                       scale_inv_out.size()));
  }
  for (std::int64_t e = 0; e < experts; ++e) {
    const Fp8ErrorContext ctx{src.spec.name, 0, shape.size() == 3 ? e : -1};
    SW_RETURN_IF_ERROR(QuantizeFp8BlockRows(src.spec.dtype, src.data.subspan(e * src_bytes, src_bytes), m, n,
                                            q_out.subspan(e * m * n, m * n),
                                            scale_inv_out.subspan(e * per_scale, per_scale), options, ctx));
  }
  return Status::Ok();
}

Status DequantizeFp8Block(std::span<const std::uint8_t> q, std::span<const float> scale_inv,
                          const std::vector<std::int64_t>& shape, DType out_dtype, std::span<std::byte> out,
                          const Fp8BlockOptions& options) {
  SW_ASSIGN_OR_RETURN(auto scale_shape, Fp8BlockScaleShape(shape, options));
  if (out_dtype != DType::kBF16 && out_dtype != DType::kF16 && out_dtype != DType::kF32) {
    return Unsupported(fmt::format("FP8 dequantisation writes BF16, F16 or F32, not {}", DTypeName(out_dtype)));
  }
  const std::size_t k = shape.size();
  const std::int64_t experts = k == 3 ? shape[0] : 1;
  const std::int64_t m = shape[k - 2], n = shape[k - 1];
  const std::int64_t sm = scale_shape[k - 2], sn = scale_shape[k - 1];
  const std::size_t osize = DTypeSize(out_dtype);
  if (q.size() != static_cast<std::uint64_t>(experts * m * n) ||
      scale_inv.size() != static_cast<std::uint64_t>(experts * sm * sn) || out.size() != q.size() * osize) {
    return InvalidArgument(fmt::format("FP8 dequantisation of {}: sizes {} / {} / {} do not match",
                                       ShapeToString(shape), q.size(), scale_inv.size(), out.size()));
  }
  const auto& table = E4m3Table();
  for (std::int64_t e = 0; e < experts; ++e) {
    for (std::int64_t i = 0; i < m; ++i) {
      const float* srow = scale_inv.data() + e * sm * sn + (i / options.block_rows) * sn;
      const std::int64_t base = (e * m + i) * n;
      for (std::int64_t j = 0; j < n; ++j) {
        const float v = table[q[base + j]] * srow[j / options.block_cols];
        std::byte* dst = out.data() + (base + j) * osize;
        if (out_dtype == DType::kF32)
          convert::StoreLe<float>(dst, v);
        else if (out_dtype == DType::kBF16)
          convert::StoreLe<std::uint16_t>(dst, convert::FloatToBf16(v));
        else
          convert::StoreLe<std::uint16_t>(dst, convert::FloatToF16(v));
      }
    }
  }
  return Status::Ok();
}

}  // namespace shardwire
