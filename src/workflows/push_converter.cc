#include "workflows/push_converter.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "shardwire/cast.h"

namespace shardwire::workflows {

namespace {
std::int64_t CeilDivI(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }
}  // namespace

PushConverter::PushConverter(const Layout& trainer, int rank, const PushConversion& conversion, TrainerConversion plan,
                             std::span<const std::byte> trainer_buffer, std::span<const std::byte> scratch,
                             Fp8BlockOptions fp8)
    : trainer_(trainer),
      rank_(rank),
      conversion_(conversion),
      plan_(std::move(plan)),
      buffer_(trainer_buffer),
      scratch_(scratch),
      fp8_(fp8) {
  scratch_bytes_ = kScratchBytes;
  const Layout& wire = conversion_.wire_layout();
  for (const ConversionRound& round : plan_.rounds) {
    for (const ConversionPiece& p : round.pieces) {
      const std::int64_t rows = p.row_end - p.row_begin;
      if (rows <= 0 || wire.tensors()[p.wire_tensor].dtype != DType::kF8E4M3) continue;
      const auto cols = static_cast<std::int64_t>(p.bytes) / rows;
      scratch_bytes_ = std::max<std::size_t>(
          scratch_bytes_, static_cast<std::size_t>(cols + (CeilDivI(cols, fp8_.block_cols) + 1) * 4 + 64));
    }
  }
}

std::uint64_t PushConverter::Key(std::uint32_t tensor, std::int64_t i, std::int64_t j) {
  // Dimensions are bounded by kMaxModelDimension (2^20): 21 bits per block index suffice.
  return (static_cast<std::uint64_t>(tensor) << 42) | (static_cast<std::uint64_t>(i) << 21) |
         static_cast<std::uint64_t>(j);
}

Result<std::span<const std::byte>> PushConverter::SourceRows(std::uint32_t wire_tensor, std::int64_t row_begin,
                                                             std::int64_t row_end, Box* box) const {
  SW_ASSIGN_OR_RETURN(ConversionSource source, conversion_.SourceOf(rank_, wire_tensor));
  const TensorSpec& spec = trainer_.tensors()[conversion_.trainer_tensor(wire_tensor)];
  *box = std::move(source.box);
  std::uint64_t row_elems = 1;
  for (std::size_t d = 1; d < box->shape.size(); ++d) row_elems *= static_cast<std::uint64_t>(box->shape[d]);
  const std::uint64_t row_bytes = row_elems * DTypeSize(spec.dtype);
  const std::int64_t row0 = box->shape.empty() ? 0 : box->offset[0];
  const std::uint64_t begin = source.byte_offset + static_cast<std::uint64_t>(row_begin - row0) * row_bytes;
  const std::uint64_t bytes = static_cast<std::uint64_t>(row_end - row_begin) * row_bytes;
  const std::span<const std::byte> from = source.in_scratch ? scratch_ : buffer_;
  if (begin + bytes > from.size()) {
    return Internal(fmt::format("rows [{}, {}) of {} lie outside the trainer {}", row_begin, row_end, spec.name,
                                source.in_scratch ? "scratch" : "buffer"));
  }
  return from.subspan(begin, bytes);
}

Result<std::vector<float>> PushConverter::PartialAmax(const std::vector<BlockRef>& blocks) const {
  std::vector<float> out;
  out.reserve(blocks.size());
  const Layout& wire = conversion_.wire_layout();
  for (const BlockRef& b : blocks) {
    const ShardRef* shard = wire.rank(rank_).Find(b.wire_tensor);
    if (shard == nullptr) return Internal("partial amax of a tensor this rank does not hold");
    const Box& box = shard->box;
    // The block's rows within the shard, all its columns within the shard.
    const std::int64_t r0 = std::max(box.offset[0], b.block_row * fp8_.block_rows);
    const std::int64_t r1 = std::min(box.offset[0] + box.shape[0], (b.block_row + 1) * fp8_.block_rows);
    const std::int64_t c0 = std::max(box.offset[1], b.block_col * fp8_.block_cols);
    const std::int64_t c1 = std::min(box.offset[1] + box.shape[1], (b.block_col + 1) * fp8_.block_cols);
    Box src_box;
    const std::uint32_t tt = conversion_.trainer_tensor(b.wire_tensor);
    SW_ASSIGN_OR_RETURN(const auto rows, SourceRows(b.wire_tensor, r0, r1, &src_box));
    const DType dtype = trainer_.tensors()[tt].dtype;
    const std::size_t esize = DTypeSize(dtype);
    // Gather the block's columns of those rows (at most 128 x 128 elements).
    std::vector<std::byte> part(static_cast<std::size_t>((r1 - r0) * (c1 - c0)) * esize);
    const std::size_t row_bytes = static_cast<std::size_t>(box.shape[1]) * esize;
    for (std::int64_t r = 0; r < r1 - r0; ++r) {
      std::copy_n(rows.data() + static_cast<std::size_t>(r) * row_bytes + static_cast<std::size_t>(c0 - box.offset[1]) * esize,
                  static_cast<std::size_t>(c1 - c0) * esize, part.data() + static_cast<std::size_t>(r * (c1 - c0)) * esize);
    }
    const Fp8ShardBox sub{r0, r1 - r0, c0, c1 - c0};
    std::vector<float> amax(static_cast<std::size_t>(Fp8BlocksTouched(sub, fp8_).count()));
    SW_RETURN_IF_ERROR(Fp8ShardBlockAmax(dtype, part, sub, amax, fp8_, {wire.tensors()[b.wire_tensor].name}));
    out.push_back(amax.empty() ? 0.0f : amax[0]);
  }
  return out;
}

Status PushConverter::AddPeerAmax(const std::vector<BlockRef>& blocks, const std::vector<float>& values,
                                  const std::string& peer) {
  if (values.size() != blocks.size()) {
    return CorruptData(fmt::format("BLOCK_AMAX from {} carries {} values, {} expected", peer, values.size(),
                                   blocks.size()));
  }
  for (std::size_t k = 0; k < blocks.size(); ++k) {
    const float v = values[k];
    if (!(v >= 0.0f) || std::isinf(v)) {
      return CorruptData(fmt::format("BLOCK_AMAX from {}: amax {} of {} block [{}, {}] is not finite and >= 0", peer,
                                     v, conversion_.wire_layout().tensors()[blocks[k].wire_tensor].name,
                                     blocks[k].block_row, blocks[k].block_col));
    }
    float& slot = peer_amax_[Key(blocks[k].wire_tensor, blocks[k].block_row, blocks[k].block_col)];
    slot = std::max(slot, v);
  }
  return Status::Ok();
}

Status PushConverter::ConvertRound(std::size_t round, std::span<std::byte> slot) const {
  const Layout& wire = conversion_.wire_layout();
  std::vector<float> amax;
  for (const ConversionPiece& p : plan_.rounds.at(round).pieces) {
    Box box;
    SW_ASSIGN_OR_RETURN(const auto src, SourceRows(p.wire_tensor, p.row_begin, p.row_end, &box));
    const DType from = trainer_.tensors()[p.trainer_tensor].dtype;
    const TensorSpec& dst = wire.tensors()[p.wire_tensor];
    if (p.slot_offset + p.bytes > slot.size() || p.scale_slot_offset + p.scale_bytes > slot.size()) {
      return Internal(fmt::format("piece of {} overruns the staging slot", dst.name));
    }
    if (dst.dtype != DType::kF8E4M3) {
      SW_RETURN_IF_ERROR(CastElements(from, dst.dtype, src, slot.subspan(p.slot_offset, p.bytes))
                             .WithContext(fmt::format("casting {} to {}", dst.name, DTypeName(dst.dtype))));
      continue;
    }
    // One block-row at a time (pass 1: amax, pass 2: scale), so the second pass reads from cache.
    const Fp8ErrorContext ctx{dst.name};
    const std::int64_t cols = box.shape[1];
    const std::size_t esize = DTypeSize(from);
    const Fp8BlockRange piece_own = Fp8BlocksOwned({p.row_begin, p.row_end - p.row_begin, box.offset[1], cols}, fp8_);
    const std::int64_t scale_cols = piece_own.col_end - piece_own.col_begin;
    for (std::int64_t r = p.row_begin; r < p.row_end;) {
      const std::int64_t r_end = std::min(p.row_end, (r / fp8_.block_rows + 1) * fp8_.block_rows);
      const Fp8ShardBox part{r, r_end - r, box.offset[1], cols};
      const auto part_src = src.subspan(static_cast<std::size_t>((r - p.row_begin) * cols) * esize,
                                        static_cast<std::size_t>((r_end - r) * cols) * esize);
      SW_RETURN_IF_ERROR(BlockRowAmax(p, from, part_src, part, ctx, amax));
      const Fp8BlockRange own = Fp8BlocksOwned(part, fp8_);
      auto* q = reinterpret_cast<std::uint8_t*>(slot.data() + p.slot_offset) + (r - p.row_begin) * cols;
      auto* scales = reinterpret_cast<float*>(slot.data() + p.scale_slot_offset) +
                     (own.count() > 0 ? (own.row_begin - piece_own.row_begin) * scale_cols : 0);
      SW_RETURN_IF_ERROR(QuantizeFp8Shard(from, part_src, part, amax,
                                          std::span<std::uint8_t>(q, static_cast<std::size_t>((r_end - r) * cols)),
                                          std::span<float>(scales, static_cast<std::size_t>(own.count())), fp8_, ctx));
      r = r_end;
    }
  }
  return Status::Ok();
}

Status PushConverter::BlockRowAmax(const ConversionPiece& p, DType from, std::span<const std::byte> part_src,
                                   const Fp8ShardBox& part, const Fp8ErrorContext& ctx,
                                   std::vector<float>& amax) const {
  const Fp8BlockRange touched = Fp8BlocksTouched(part, fp8_);
  amax.assign(static_cast<std::size_t>(touched.count()), 0.0f);
  SW_RETURN_IF_ERROR(Fp8ShardBlockAmax(from, part_src, part, amax, fp8_, ctx));
  if (peer_amax_.empty()) return Status::Ok();
  const std::int64_t nj = touched.col_end - touched.col_begin;
  for (std::int64_t i = touched.row_begin; i < touched.row_end; ++i) {
    for (std::int64_t j = touched.col_begin; j < touched.col_end; ++j) {
      auto it = peer_amax_.find(Key(p.wire_tensor, i, j));
      if (it == peer_amax_.end()) continue;
      float& a = amax[static_cast<std::size_t>((i - touched.row_begin) * nj + (j - touched.col_begin))];
      a = std::max(a, it->second);
    }
  }
  return Status::Ok();
}

Status PushConverter::ConvertRoundTo(std::size_t round, std::span<std::byte> scratch, const Sink& sink) const {
  if (scratch.size() < ScratchBytes()) {
    return Internal(fmt::format("conversion scratch of {} bytes, {} needed", scratch.size(), ScratchBytes()));
  }
  const Layout& wire = conversion_.wire_layout();
  std::vector<float> amax;
  for (const ConversionPiece& p : plan_.rounds.at(round).pieces) {
    Box box;
    SW_ASSIGN_OR_RETURN(const auto src, SourceRows(p.wire_tensor, p.row_begin, p.row_end, &box));
    const DType from = trainer_.tensors()[p.trainer_tensor].dtype;
    const TensorSpec& dst = wire.tensors()[p.wire_tensor];
    const std::size_t in_size = DTypeSize(from), out_size = DTypeSize(dst.dtype);
    const std::int64_t rows = p.row_end - p.row_begin;
    const std::uint64_t row_elems = rows > 0 ? (p.bytes / out_size) / static_cast<std::uint64_t>(rows) : 0;
    if (row_elems == 0) continue;
    // Whole rows per chunk, as many as fit the scratch (at least one row; a row longer than the
    // scratch is cut into runs of elements).
    const std::uint64_t chunk_elems = std::max<std::uint64_t>(1, scratch.size() / out_size / row_elems) * row_elems;
    if (dst.dtype != DType::kF8E4M3) {
      const std::uint64_t total = row_elems * static_cast<std::uint64_t>(rows);
      const std::uint64_t step = std::min<std::uint64_t>(chunk_elems, scratch.size() / out_size);
      for (std::uint64_t e = 0; e < total; e += step) {
        const std::uint64_t n = std::min(step, total - e);
        const auto out = scratch.first(n * out_size);
        SW_RETURN_IF_ERROR(CastElements(from, dst.dtype, src.subspan(e * in_size, n * in_size), out)
                               .WithContext(fmt::format("casting {} to {}", dst.name, DTypeName(dst.dtype))));
        SW_RETURN_IF_ERROR(sink(p.slot_offset + e * out_size, out));
      }
      continue;
    }
    const Fp8ErrorContext ctx{dst.name};
    const std::int64_t cols = box.shape[1];
    const Fp8BlockRange piece_own = Fp8BlocksOwned({p.row_begin, rows, box.offset[1], cols}, fp8_);
    const std::int64_t scale_cols = piece_own.col_end - piece_own.col_begin;
    // Rows per quantised chunk: the chunk's FP8 bytes fit the scratch (they are written there and
    // copied out while still in cache); the chunk's scales go after them.
    const std::int64_t scale_room = (CeilDivI(cols, fp8_.block_cols) + 1) * 4 + 64;
    const std::int64_t chunk_rows = std::max<std::int64_t>(
        1, (static_cast<std::int64_t>(scratch.size()) - scale_room) / std::max<std::int64_t>(1, cols));
    if (cols + scale_room > static_cast<std::int64_t>(scratch.size())) {
      return Internal(fmt::format("a row of {} ({} FP8 bytes) does not fit the conversion scratch", dst.name, cols));
    }
    for (std::int64_t r = p.row_begin; r < p.row_end;) {
      // Pass 1 over the whole block-row part: the whole blocks' amaxes.
      const std::int64_t r_end = std::min(p.row_end, (r / fp8_.block_rows + 1) * fp8_.block_rows);
      const Fp8ShardBox part{r, r_end - r, box.offset[1], cols};
      const auto part_src = src.subspan(static_cast<std::size_t>((r - p.row_begin) * cols) * in_size,
                                        static_cast<std::size_t>((r_end - r) * cols) * in_size);
      SW_RETURN_IF_ERROR(BlockRowAmax(p, from, part_src, part, ctx, amax));
      // Pass 2, a few rows at a time: quantise into the scratch, hand the bytes on.
      for (std::int64_t c = r; c < r_end;) {
        const std::int64_t c_end = std::min(r_end, c + chunk_rows);
        const Fp8ShardBox sub{c, c_end - c, box.offset[1], cols};
        const Fp8BlockRange own = Fp8BlocksOwned(sub, fp8_);
        const std::size_t q_bytes = static_cast<std::size_t>((c_end - c) * cols);
        auto* q = reinterpret_cast<std::uint8_t*>(scratch.data());
        auto* scales = reinterpret_cast<float*>(scratch.data() + ((q_bytes + 63) & ~std::size_t{63}));
        const auto sub_src =
            src.subspan(static_cast<std::size_t>((c - p.row_begin) * cols) * in_size, q_bytes * in_size);
        SW_RETURN_IF_ERROR(QuantizeFp8Shard(from, sub_src, sub, amax, std::span<std::uint8_t>(q, q_bytes),
                                            std::span<float>(scales, static_cast<std::size_t>(own.count())), fp8_,
                                            ctx));
        SW_RETURN_IF_ERROR(
            sink(p.slot_offset + static_cast<std::uint64_t>(c - p.row_begin) * static_cast<std::uint64_t>(cols),
                 std::span<const std::byte>(scratch.data(), q_bytes)));
        if (own.count() > 0) {
          const std::uint64_t at =
              p.scale_slot_offset + static_cast<std::uint64_t>((own.row_begin - piece_own.row_begin) * scale_cols) * 4;
          SW_RETURN_IF_ERROR(
              sink(at, std::as_bytes(std::span<const float>(scales, static_cast<std::size_t>(own.count())))));
        }
        c = c_end;
      }
      r = r_end;
    }
  }
  return Status::Ok();
}

}  // namespace shardwire::workflows
