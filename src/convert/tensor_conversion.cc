#include "shardwire/tensor_conversion.h"

#include <algorithm>
#include <cstring>

#include <fmt/format.h>

#include "shardwire/cast.h"

namespace shardwire {
namespace {

bool IsDestinationDType(DType d) { return IsCastableDType(d) || d == DType::kF8E4M3; }

}  // namespace

Result<ConversionOutputs> ResolveConversion(const ConversionSpec& spec, const std::vector<TensorSpec>& sources,
                                            const Fp8BlockOptions& fp8) {
  if (spec.destination.empty()) return InvalidArgument("conversion spec with an empty destination name");
  const std::string& dst = spec.destination;
  if (spec.sources.empty()) return InvalidArgument(fmt::format("destination \"{}\": no source tensors", dst));
  if (sources.size() != spec.sources.size()) {
    return InvalidArgument(
        fmt::format("destination \"{}\": {} sources named, {} given", dst, spec.sources.size(), sources.size()));
  }
  if (!IsDestinationDType(spec.destination_dtype)) {
    return Unsupported(fmt::format("destination \"{}\": dtype {} is not F16, BF16, F32 or F8_E4M3", dst,
                                   DTypeName(spec.destination_dtype)));
  }
  const TensorSpec& first = sources[0];
  for (std::size_t i = 0; i < sources.size(); ++i) {
    const TensorSpec& s = sources[i];
    if (s.name != spec.sources[i]) {
      return InvalidArgument(fmt::format("destination \"{}\": source {} is \"{}\", the spec names \"{}\"", dst, i,
                                         s.name, spec.sources[i]));
    }
    if (!IsCastableDType(s.dtype)) {
      return Unsupported(fmt::format("destination \"{}\": source \"{}\" is {}; only F16, BF16 and F32 convert", dst,
                                     s.name, DTypeName(s.dtype)));
    }
    if (s.dtype != first.dtype) {
      return LayoutMismatch(fmt::format("destination \"{}\": sources \"{}\" ({}) and \"{}\" ({}) differ in dtype", dst,
                                        first.name, DTypeName(first.dtype), s.name, DTypeName(s.dtype)));
    }
    if (s.shape.size() != first.shape.size()) {
      return LayoutMismatch(fmt::format("destination \"{}\": sources \"{}\" {} and \"{}\" {} differ in rank", dst,
                                        first.name, ShapeToString(first.shape), s.name, ShapeToString(s.shape)));
    }
  }
  const int rank = static_cast<int>(first.shape.size());
  std::vector<std::int64_t> shape = first.shape;
  if (sources.size() > 1) {
    if (spec.concat_dim < 0 || spec.concat_dim >= rank) {
      return InvalidArgument(fmt::format("destination \"{}\": concat dim {} is outside [0, {}) for sources of shape {}",
                                         dst, spec.concat_dim, rank, ShapeToString(first.shape)));
    }
    shape[spec.concat_dim] = 0;
    for (const auto& s : sources) {
      for (int d = 0; d < rank; ++d) {
        if (d != spec.concat_dim && s.shape[d] != first.shape[d]) {
          return LayoutMismatch(fmt::format(
              "destination \"{}\": cannot concatenate along dim {}: \"{}\" {} and \"{}\" {} differ in dim {}", dst,
              spec.concat_dim, first.name, ShapeToString(first.shape), s.name, ShapeToString(s.shape), d));
        }
      }
      shape[spec.concat_dim] += s.shape[spec.concat_dim];
    }
  }
  ConversionOutputs out;
  out.destination = TensorSpec{dst, spec.destination_dtype, shape};
  if (spec.destination_dtype == DType::kF8E4M3) {
    if (spec.scale_suffix.empty()) {
      return InvalidArgument(fmt::format("destination \"{}\": F8_E4M3 needs a scale suffix", dst));
    }
    auto scale_shape = Fp8BlockScaleShape(shape, fp8);
    if (!scale_shape.ok()) return scale_shape.status().WithContext(fmt::format("destination \"{}\"", dst));
    out.scale = TensorSpec{dst + spec.scale_suffix, DType::kF32, *scale_shape};
  }
  return out;
}

Result<TensorConverter> TensorConverter::Create(ConversionSpec spec, std::vector<TensorView> sources,
                                                const Fp8BlockOptions& fp8) {
  std::vector<TensorSpec> specs;
  for (const auto& v : sources) {
    if (v.data.size() != v.spec.nbytes()) {
      return InvalidArgument(fmt::format("source \"{}\" {}: {} bytes given, {} expected", v.spec.name,
                                         ShapeToString(v.spec.shape), v.data.size(), v.spec.nbytes()));
    }
    specs.push_back(v.spec);
  }
  SW_ASSIGN_OR_RETURN(auto outputs, ResolveConversion(spec, specs, fp8));
  TensorConverter c;
  c.spec_ = std::move(spec);
  c.fp8_ = fp8;
  c.sources_ = std::move(sources);
  c.outputs_ = std::move(outputs);
  const auto& shape = c.outputs_.destination.shape;
  const int dim = c.sources_.size() > 1 ? c.spec_.concat_dim : 0;
  std::uint64_t inner = 1;
  for (std::size_t d = static_cast<std::size_t>(dim) + 1; d < shape.size(); ++d) inner *= shape[d];
  for (const auto& s : c.sources_) {
    c.source_run_.push_back(s.spec.shape.empty() ? 1 : static_cast<std::uint64_t>(s.spec.shape[dim]) * inner);
  }
  c.dest_run_ = shape.empty() ? 1 : static_cast<std::uint64_t>(shape[dim]) * inner;
  if (c.outputs_.scale) {
    const std::size_t k = shape.size();
    c.experts_ = k == 3 ? shape[0] : 1;
    c.rows_ = shape[k - 2];
    c.cols_ = shape[k - 1];
    c.row_blocks_ = (c.rows_ + fp8.block_rows - 1) / fp8.block_rows;
    c.col_blocks_ = (c.cols_ + fp8.block_cols - 1) / fp8.block_cols;
    c.scales_.assign(static_cast<std::size_t>(c.outputs_.scale->numel()), 0.0f);
    c.scales_done_.assign(static_cast<std::size_t>(c.experts_ * c.row_blocks_), false);
  }
  return c;
}

// Copies `count` elements of the (virtual) concatenated source tensor, starting at element
// `first`, into `out` (source dtype). The destination is viewed as [outer, dest_run_]; source i
// contributes columns [prefix_i, prefix_i + source_run_[i]) of each outer row.
Status TensorConverter::ReadSource(std::uint64_t first, std::uint64_t count, std::byte* out) const {
  const std::size_t esize = DTypeSize(sources_[0].spec.dtype);
  while (count > 0) {
    const std::uint64_t outer = first / dest_run_;
    std::uint64_t col = first % dest_run_;
    std::size_t i = 0;
    while (col >= source_run_[i]) col -= source_run_[i++];
    const std::uint64_t run = std::min(count, source_run_[i] - col);
    const std::uint64_t src_elem = outer * source_run_[i] + col;
    std::memcpy(out, sources_[i].data.data() + src_elem * esize, run * esize);
    out += run * esize;
    first += run;
    count -= run;
  }
  return Status::Ok();
}

Status TensorConverter::ComputeBlockRow(std::int64_t index) {
  const std::int64_t expert = index / row_blocks_;
  const std::int64_t rb = index % row_blocks_;
  const std::int64_t r0 = rb * fp8_.block_rows;
  const std::int64_t nrows = std::min(fp8_.block_rows, rows_ - r0);
  const DType sdt = sources_[0].spec.dtype;
  const std::uint64_t n = static_cast<std::uint64_t>(nrows * cols_);
  scratch_.resize(n * DTypeSize(sdt));
  q_block_.resize(n);
  SW_RETURN_IF_ERROR(ReadSource(static_cast<std::uint64_t>((expert * rows_ + r0) * cols_), n, scratch_.data()));
  const Fp8ErrorContext ctx{spec_.destination, r0,
                            experts_ > 1 || outputs_.destination.shape.size() == 3 ? expert : -1};
  std::span<float> scale_row(scales_.data() + (expert * row_blocks_ + rb) * col_blocks_,
                             static_cast<std::size_t>(col_blocks_));
  cached_block_row_ = -1;
  SW_RETURN_IF_ERROR(QuantizeFp8BlockRows(sdt, scratch_, nrows, cols_, q_block_, scale_row, fp8_, ctx));
  cached_block_row_ = index;
  scales_done_[static_cast<std::size_t>(index)] = true;
  return Status::Ok();
}

Status TensorConverter::FillDestination(std::uint64_t offset, std::span<std::byte> out) {
  const TensorSpec& d = outputs_.destination;
  const std::size_t dsize = DTypeSize(d.dtype);
  if (offset + out.size() > d.nbytes() || offset % dsize != 0 || out.size() % dsize != 0) {
    return InvalidArgument(
        fmt::format("destination \"{}\": byte range [{}, {}) is past its {} bytes or splits an element", d.name, offset,
                    offset + out.size(), d.nbytes()));
  }
  if (out.empty()) return Status::Ok();
  if (!outputs_.scale) {  // cast (or copy)
    const DType sdt = sources_[0].spec.dtype;
    const std::uint64_t count = out.size() / dsize;
    if (sdt == d.dtype) return ReadSource(offset / dsize, count, out.data());
    scratch_.resize(count * DTypeSize(sdt));
    SW_RETURN_IF_ERROR(ReadSource(offset / dsize, count, scratch_.data()));
    return CastElements(sdt, d.dtype, scratch_, out);
  }
  // FP8: one byte per element; block-row b covers bytes [start(b), start(b) + nrows * cols).
  const std::uint64_t block_bytes = static_cast<std::uint64_t>(fp8_.block_rows * cols_);
  const std::uint64_t matrix_bytes = static_cast<std::uint64_t>(rows_ * cols_);
  std::uint64_t pos = offset;
  const std::uint64_t end = offset + out.size();
  while (pos < end) {
    const std::uint64_t expert = pos / matrix_bytes;
    const std::uint64_t in_matrix = pos % matrix_bytes;
    const std::int64_t index = static_cast<std::int64_t>(expert * row_blocks_ + in_matrix / block_bytes);
    if (cached_block_row_ != index) SW_RETURN_IF_ERROR(ComputeBlockRow(index));
    const std::uint64_t in_block = in_matrix % block_bytes;
    const std::uint64_t take = std::min<std::uint64_t>(end - pos, q_block_.size() - in_block);
    std::memcpy(out.data() + (pos - offset), q_block_.data() + in_block, take);
    pos += take;
  }
  return Status::Ok();
}

Status TensorConverter::FillScale(std::uint64_t offset, std::span<std::byte> out) {
  if (!outputs_.scale) {
    return FailedPrecondition(fmt::format("destination \"{}\" is {}, it has no scale tensor", spec_.destination,
                                          DTypeName(outputs_.destination.dtype)));
  }
  const std::uint64_t total = outputs_.scale->nbytes();
  if (offset + out.size() > total || offset % 4 != 0 || out.size() % 4 != 0) {
    return InvalidArgument(fmt::format("scale \"{}\": byte range [{}, {}) is past its {} bytes or splits an element",
                                       outputs_.scale->name, offset, offset + out.size(), total));
  }
  // The block-rows the range's scale elements lie in: [first_row, end_row). (A scale tensor of
  // zero columns has no elements: nothing to compute.)
  if (!out.empty() && col_blocks_ > 0) {
    const auto per_row = static_cast<std::uint64_t>(col_blocks_);
    const std::uint64_t first_row = offset / 4 / per_row;
    const std::uint64_t end_row = ((offset + out.size()) / 4 + per_row - 1) / per_row;
    for (std::uint64_t b = first_row; b < end_row && b < scales_done_.size(); ++b) {
      if (!scales_done_[b]) SW_RETURN_IF_ERROR(ComputeBlockRow(static_cast<std::int64_t>(b)));
    }
  }
  if (!out.empty()) std::memcpy(out.data(), reinterpret_cast<const std::byte*>(scales_.data()) + offset, out.size());
  return Status::Ok();
}

}  // namespace shardwire
