#include "cli/engine_shards.h"

#include <algorithm>
#include <vector>

#include <fmt/format.h>

#include "cli/synthetic_update.h"
#include "shardwire/cast.h"
#include "shardwire/engine_format.h"

namespace shardwire::cli {

namespace {
constexpr std::string_view kScaleSuffix = "_scale_inv";

// Rows [r0, r1) x cols [c0, c1) of a dense row-major [.., cols] buffer into `out`.
void CopyRect(std::span<const std::byte> src, std::int64_t src_cols, std::int64_t r0, std::int64_t r1,
              std::int64_t c0, std::int64_t c1, std::size_t esize, std::byte* out) {
  for (std::int64_t r = r0; r < r1; ++r) {
    std::copy_n(src.data() + static_cast<std::size_t>(r * src_cols + c0) * esize,
                static_cast<std::size_t>(c1 - c0) * esize, out + static_cast<std::size_t>((r - r0) * (c1 - c0)) * esize);
  }
}
}  // namespace

Result<ModelDescription> DescribeDemoEngineModel(const ModelDescription& model, const std::string& engine_dtype) {
  EngineFormatOptions o;
  if (engine_dtype == "fp8-block") {
    o.weights = EngineWeightFormat::kFp8Block;
  } else if (engine_dtype != "trainer") {
    return InvalidArgument(fmt::format("--engine-dtype \"{}\": expected trainer or fp8-block", engine_dtype));
  }
  return DescribeEngineModel(model, o);
}

Status WriteEngineShard(const Checkpoint& checkpoint, const TensorSpec& spec, const Box& box, std::uint64_t step,
                        std::span<std::byte> out, const Fp8BlockOptions& fp8) {
  const bool scale = spec.name.ends_with(kScaleSuffix) && spec.dtype == DType::kF32 && !checkpoint.Get(spec.name).ok();
  const std::string source = scale ? spec.name.substr(0, spec.name.size() - kScaleSuffix.size()) : spec.name;
  SW_ASSIGN_OR_RETURN(const TensorView full, checkpoint.Get(source));
  const TensorSpec& from = full.spec;
  if (!scale && from.dtype == spec.dtype) {
    WriteUpdatedBox(from, full.data, box, step, out);
    return Status::Ok();
  }
  if (!scale && spec.dtype != DType::kF8E4M3) {  // a cast of the updated values
    std::vector<std::byte> values(static_cast<std::size_t>(box.numel()) * DTypeSize(from.dtype));
    WriteUpdatedBox(from, full.data, box, step, values);
    return CastElements(from.dtype, spec.dtype, values, out);
  }
  // FP8: quantise the block-aligned region around the box (blocks are independent), then crop.
  if (from.shape.size() != 2) return Unsupported(fmt::format("{}: FP8 needs a 2-D tensor", source));
  const std::int64_t m = from.shape[0], n = from.shape[1];
  const std::int64_t br = fp8.block_rows, bc = fp8.block_cols;
  // Element rectangle of the weight the box needs (a scale box is in block units).
  std::int64_t r0 = box.offset[0], r1 = box.offset[0] + box.shape[0];
  std::int64_t c0 = box.offset[1], c1 = box.offset[1] + box.shape[1];
  if (scale) {
    r0 *= br, r1 *= br, c0 *= bc, c1 *= bc;
  }
  const std::int64_t er0 = r0 / br * br, er1 = std::min(m, (r1 + br - 1) / br * br);
  const std::int64_t ec0 = c0 / bc * bc, ec1 = std::min(n, (c1 + bc - 1) / bc * bc);
  const Box region{{er0, ec0}, {er1 - er0, ec1 - ec0}};
  std::vector<std::byte> values(static_cast<std::size_t>(region.numel()) * DTypeSize(from.dtype));
  WriteUpdatedBox(from, full.data, region, step, values);
  std::vector<std::uint8_t> q(static_cast<std::size_t>(region.numel()));
  const std::int64_t sr = (er1 - er0 + br - 1) / br, sc = (ec1 - ec0 + bc - 1) / bc;
  std::vector<float> scales(static_cast<std::size_t>(sr * sc));
  SW_RETURN_IF_ERROR(QuantizeFp8BlockRows(from.dtype, values, er1 - er0, ec1 - ec0, q, scales, fp8,
                                          Fp8ErrorContext{source, er0}));
  if (scale) {
    CopyRect(std::as_bytes(std::span(scales)), sc, box.offset[0] - er0 / br, box.offset[0] - er0 / br + box.shape[0],
             box.offset[1] - ec0 / bc, box.offset[1] - ec0 / bc + box.shape[1], sizeof(float), out.data());
  } else {
    CopyRect(std::as_bytes(std::span(q)), ec1 - ec0, r0 - er0, r1 - er0, c0 - ec0, c1 - ec0, 1, out.data());
  }
  return Status::Ok();
}

Status WriteEngineRank(const Checkpoint& checkpoint, const Layout& layout, int rank, std::uint64_t step,
                       std::span<std::byte> buffer) {
  for (const ShardRef& shard : layout.rank(rank).shards) {
    const TensorSpec& spec = layout.tensors()[shard.tensor];
    const std::size_t bytes = static_cast<std::size_t>(shard.box.numel()) * DTypeSize(spec.dtype);
    SW_RETURN_IF_ERROR(WriteEngineShard(checkpoint, spec, shard.box, step, buffer.subspan(shard.byte_offset, bytes))
                           .WithContext(fmt::format("engine shard {} {}", spec.name, ToString(shard.box))));
  }
  return Status::Ok();
}

}  // namespace shardwire::cli
