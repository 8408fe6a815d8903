// Conversion in the push: what a trainer rank converts, where the converted bytes wait, and
// which moves carry them, when the engines hold another format than the trainers (FP8 block
// quantisation, casts).
//
// Per engine tensor, matched to the trainer's by name (renames and fusions are the layouts'
// business: a fused qkv_proj is held by the engine layout as its parts placed back to back):
//  * same dtype and shape: moved unchanged, straight from the trainer's buffer (the direct
//    plan: both layouts restricted to these tensors, offsets kept, see Layout::Subset);
//  * F8_E4M3 with a `<name>_scale_inv` beside it: block-quantised (shardwire/fp8_block.h,
//    bit-exact to DeepGEMM's per_block_cast_to_fp8 on the whole matrix);
//  * another castable dtype (F16 / BF16 / F32): cast, round-to-nearest-even.
//
// Where a conversion happens: each trainer rank converts exactly the shard it holds (or the
// reduced chunk of a Partial(sum) it reduces, below), and the converted bytes travel from a
// *wire layout*: the engine-format tensors over the trainer ranks, each FP8 weight with the
// trainer's box and each scale tensor with the blocks whose first element the rank holds
// (every block has one owner). A 128x128 block that straddles
// two trainer shards (FSDP's torch.chunk rows at a non-multiple of 128, TP columns) needs the
// amax of the whole block: instead of gathering the block's rows at one converter rank (up to
// 127 rows x n elements), the ranks holding parts of it exchange their partial amaxes (one
// fp32 per straddling block, BlockAmaxExchange) and each quantises its own rows with the
// block's scale; the owner writes the scale. The result is byte for byte the whole-matrix
// quantisation.
//
// Partial(sum) sources (DTensor Partial: each rank of a sum group holds an addend of the same
// box): the sum is converted, never an addend. The sum box is cut into row chunks, one per
// holder of the sum (whole block-rows for FP8, so that no block straddles two chunks of one
// sum), and each chunk's *reducer* reduces it with the push's reduction machinery
// (transfer_plan.h, Reduction: every member WRITEs its addend rows into a slot of the reducer's
// scratch area, the reducer sums the slots in fp32 and rounds once) and then converts the
// reduced rows like an owned shard: in the wire layout the reducer holds the chunk, its FP8
// amaxes come from the sum, and its rows are read from the scratch (SourceOf). The reductions
// of the moved tensors (direct_plan()) and of the converted ones share each rank's scratch
// area (reductions(), scratch_bytes()).
//
// Staging: converted bytes are produced piece by piece into a staging buffer of
// `staging_bytes`, split into a ring of slots (round k is converted into slot k % slots while
// the rounds before it are on the wire; a slot is reused once its round's WRITEs completed);
// a piece is a run of whole block-rows of one shard (FP8) or of rows (casts), so the bound is
// independent of the largest tensor: the minimum is two pieces of one block-row of the widest
// converted tensor. (Peers stage whole tensors: up to 3x the largest tensor.) More, smaller
// slots let the first round go on the wire sooner and the last one finish sooner after the
// conversion ends, and the WRITE of a slot read it while it is still in the CPU's cache.
//
// Everything here is a pure function of the two layouts and the options, so every trainer
// and engine rank computes the same conversion without exchanging it.
//
// Thread-safety: immutable after Create; share freely.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "shardwire/fp8_block.h"
#include "shardwire/layout.h"
#include "shardwire/planner.h"
#include "shardwire/status.h"
#include "shardwire/transfer_plan.h"

namespace shardwire {

/// How one engine tensor is produced.
enum class PushTensorKind : std::uint8_t {
  kDirect,     ///< moved unchanged from the trainer's buffer
  kCast,       ///< cast from the trainer's dtype
  kFp8Weight,  ///< F8_E4M3 block-quantised from the trainer's tensor
  kFp8Scale,   ///< F32 scale_inv of a kFp8Weight (no trainer tensor)
};

struct PushConversionOptions {
  /// Block size and scale arithmetic; the block size must agree with the engine's scale shapes.
  Fp8BlockOptions fp8 = {};
  /// Bound of each trainer rank's conversion staging buffer in bytes (all slots).
  std::uint64_t staging_bytes = std::uint64_t{64} << 20;
  /// Slots the staging buffer is split into (>= 2); 0 = automatic: kAutoStagingSlots, halved
  /// (down to 2) while one piece of the widest converted tensor does not fit one slot.
  std::uint32_t staging_slots = 0;
};

/// Slots of an automatic staging ring (PushConversionOptions::staging_slots = 0): 8 slots of
/// 8 MiB in the default 64 MiB.
inline constexpr std::uint32_t kAutoStagingSlots = 8;

/// One piece of conversion work on a trainer rank: matrix rows [row_begin, row_end) of its
/// shard of one converted tensor (all the shard's columns), written into the round's slot.
struct ConversionPiece {
  std::uint32_t wire_tensor = 0;     ///< index into wire_layout().tensors() (the converted tensor)
  std::uint32_t trainer_tensor = 0;  ///< index into the trainer layout's tensors (its source; rows: SourceOf)
  std::int64_t row_begin = 0;        ///< first row (dim 0, global index in the tensor)
  std::int64_t row_end = 0;          ///< one past the last row
  std::uint64_t slot_offset = 0;     ///< bytes: where the converted rows start in the slot
  std::uint64_t bytes = 0;           ///< converted bytes of the rows
  /// kFp8Weight: the wire scale tensor, and where the scale rows this piece owns land.
  std::uint32_t scale_wire_tensor = 0;
  std::uint64_t scale_slot_offset = 0;
  std::uint64_t scale_bytes = 0;
};

/// A round: pieces converted into one slot, then the moves that carry them (src offsets
/// relative to the slot's start; dst offsets in the engine buffers; dst_group as in
/// converted_plan().dst_groups()).
struct ConversionRound {
  /// The schedule round (Bucket::round of both plans, scheduled jointly) of every move of
  /// this round; staging rounds are in ascending schedule-round order and never mix two.
  std::uint32_t schedule_round = 0;
  std::vector<ConversionPiece> pieces;
  std::uint64_t bytes = 0;  ///< slot bytes used
  std::vector<Move> moves;
};

/// One FP8 block (a tensor of the wire layout, block row i, block column j).
struct BlockRef {
  std::uint32_t wire_tensor = 0;
  std::int64_t block_row = 0, block_col = 0;
  bool operator==(const BlockRef&) const = default;
};

/// Partial amaxes a trainer rank exchanges with one other trainer rank, both lists in the
/// order the values travel (the peer computes the same lists with the roles swapped).
struct BlockAmaxExchange {
  int peer = 0;                   ///< trainer rank
  std::vector<BlockRef> send;     ///< blocks whose partial amax this rank sends (the peer lacks part of them)
  std::vector<BlockRef> receive;  ///< blocks whose partial amax the peer sends (this rank lacks part of them)
};

/// Where a trainer rank reads the values it converts into one wire tensor (SourceOf).
struct ConversionSource {
  /// false: its own shard, in its buffer; true: a reduced Partial(sum) chunk, in its scratch
  /// area (valid once the push's reductions() have run).
  bool in_scratch = false;
  std::uint64_t byte_offset = 0;  ///< bytes: the box's first element, from the buffer's or the scratch's start
  Box box;                        ///< what lies there, dense row-major (the wire shard's box)
};

/// What one trainer rank does in every push.
struct TrainerConversion {
  std::vector<ConversionRound> rounds;
  std::uint64_t slot_bytes = 0;  ///< largest round (bytes); the staging buffer holds `slots` slots
  std::uint32_t slots = 2;       ///< round k is converted into slot k % slots
  std::vector<BlockAmaxExchange> exchanges;
};

class PushConversion {
 public:
  /// Matches the engine layout's tensors to the trainer's (see the file comment) and plans
  /// both parts. Errors: kLayoutMismatch naming an engine tensor with no source, a trainer
  /// tensor the engine lacks, a shape that differs, or a scale tensor whose shape is not
  /// ceil(m/br) x ceil(n/bc) of its weight; kUnsupported for a conversion that cannot be done
  /// (an FP8 weight that is not 2-D or whose trainer dtype is not F16/BF16/F32, a cast
  /// between non-castable dtypes); kInvalidArgument when staging_bytes is below the minimum
  /// (the message gives it), staging_slots is 1, or the trainer holds one box of a converted
  /// tensor both as values and as Partial(sum) addends;
  /// the errors of PlanTransfer. `plan` is passed to both PlanTransfer calls (K, bucket size).
  static Result<PushConversion> Create(const Layout& trainer, const Layout& engine,
                                       const PushConversionOptions& options = {}, const PlanOptions& plan = {});

  /// True when some engine tensor is converted (otherwise only direct_plan() has moves).
  bool converts() const;
  /// How engine tensor `engine_tensor` (index into the engine layout) is produced.
  PushTensorKind kind(std::uint32_t engine_tensor) const;
  /// Trainer buffer -> engine buffer, the unconverted tensors (real offsets on both sides).
  const TransferPlan& direct_plan() const;
  /// Wire layout -> engine buffer, the converted tensors (src offsets in the wire layout's
  /// virtual buffers; TrainerConversion maps them into staging slots).
  const TransferPlan& converted_plan() const;
  /// The converted tensors as the trainer ranks produce them (see the file comment).
  const Layout& wire_layout() const;
  /// The trainer tensor a wire tensor is converted from (a scale: its weight's).
  std::uint32_t trainer_tensor(std::uint32_t wire_tensor) const;
  /// Trainer ranks that write into engine rank `engine_rank` (ascending).
  std::vector<int> SourcesOf(int engine_rank) const;
  /// Bytes engine rank `engine_rank` receives per push.
  std::uint64_t BytesTo(int engine_rank) const;
  /// Bytes trainer rank `trainer_rank` sends per push (each destination counted).
  std::uint64_t BytesFrom(int trainer_rank) const;
  /// Where trainer rank `trainer_rank` reads what it converts into wire tensor `wire_tensor`
  /// (not a kFp8Scale: a scale is produced with its weight). Errors: kInvalidArgument for a rank
  /// or tensor out of range or a scale tensor; kNotFound when the rank converts none of it.
  Result<ConversionSource> SourceOf(int trainer_rank, std::uint32_t wire_tensor) const;
  /// Partial(sum) reductions of the whole push, run before anything is sent: the direct plan's
  /// (its moves carry the sums from the scratch) and the converted tensors' (each reducer then
  /// converts its reduced chunk, see the file comment), in disjoint parts of each rank's scratch.
  const std::vector<ReduceCopy>& reduce_copies() const;
  const std::vector<Reduction>& reductions() const;
  /// Scratch bytes trainer rank `trainer_rank` needs for reductions() (0 without Partial sources).
  std::uint64_t scratch_bytes(int trainer_rank) const;
  /// The rounds, pieces and amax exchanges of trainer rank `trainer_rank`. Errors:
  /// kInvalidArgument for a rank out of range or staging_bytes below the minimum.
  Result<TrainerConversion> ForTrainerRank(int trainer_rank) const;

  struct State;

 private:
  explicit PushConversion(std::shared_ptr<const State> state) : state_(std::move(state)) {}
  Result<TrainerConversion> PlanTrainerRank(int trainer_rank, std::uint32_t slots) const;
  std::shared_ptr<const State> state_;
};

}  // namespace shardwire
