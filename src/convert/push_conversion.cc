#include "shardwire/push_conversion.h"

#include <algorithm>
#include <map>
#include <set>
#include <string>
#include <unordered_map>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "shardwire/cast.h"
#include "shardwire/planner.h"

namespace shardwire {

struct PushConversion::State {
  Layout trainer;
  Layout engine;
  PushConversionOptions options;
  std::vector<PushTensorKind> engine_kind;  // per engine tensor
  TransferPlan direct_plan;
  TransferPlan converted_plan;
  Layout wire;
  // Per wire tensor: its kind, its trainer tensor (kFp8Scale: the weight's), and the paired
  // tensor (kFp8Weight: its scale's wire index; kFp8Scale: its weight's wire index).
  std::vector<PushTensorKind> wire_kind;
  std::vector<std::uint32_t> wire_trainer_tensor;
  std::vector<std::uint32_t> wire_pair;
  // Partial(sum) sources (see the file comment in push_conversion.h): the reductions of both
  // parts, the scratch bytes per trainer rank, and where a reducer's reduced chunk of a wire
  // tensor lies in its scratch ((rank, wire tensor) -> slot 0).
  std::vector<ReduceCopy> reduce_copies;
  std::vector<Reduction> reductions;
  std::vector<std::uint64_t> scratch_bytes;
  std::map<std::pair<int, std::uint32_t>, std::uint64_t> reduced_at;
};

namespace {

constexpr std::uint64_t kPieceAlignment = 64;
std::uint64_t AlignUp(std::uint64_t v) { return (v + kPieceAlignment - 1) & ~(kPieceAlignment - 1); }

Fp8ShardBox ToShardBox(const Box& box) { return {box.offset[0], box.shape[0], box.offset[1], box.shape[1]}; }

bool BlockInside(const Fp8ShardBox& b, std::int64_t i, std::int64_t j, const TensorSpec& spec,
                 const Fp8BlockOptions& o) {
  const std::int64_t r0 = i * o.block_rows, r1 = std::min(r0 + o.block_rows, spec.shape[0]);
  const std::int64_t c0 = j * o.block_cols, c1 = std::min(c0 + o.block_cols, spec.shape[1]);
  return r0 >= b.row0 && r1 <= b.row0 + b.rows && c0 >= b.col0 && c1 <= b.col0 + b.cols;
}

// Elements per dim-0 row of a box (1 for a 0-d tensor).
std::uint64_t RowElements(const Box& box) {
  std::uint64_t n = 1;
  for (std::size_t d = 1; d < box.shape.size(); ++d) n *= static_cast<std::uint64_t>(box.shape[d]);
  return n;
}

// A contiguous range of a wire rank buffer and where it waits in staging.
struct Segment {
  std::uint64_t virt_begin = 0, virt_end = 0;
  std::size_t round = 0;
  std::uint64_t slot_offset = 0;
};

// Maps one contiguous run [a, a + len) of the wire buffer onto segments, calling
// out(round, slot offset, length, offset within the run) for each part.
template <typename Out>
Status MapRun(const std::vector<Segment>& segs, std::uint64_t a, std::uint64_t len, Out out) {
  std::uint64_t done = 0;
  while (done < len) {
    const std::uint64_t at = a + done;
    auto it = std::upper_bound(segs.begin(), segs.end(), at,
                               [](std::uint64_t v, const Segment& s) { return v < s.virt_begin; });
    if (it == segs.begin() || at >= std::prev(it)->virt_end) {
      return Internal(fmt::format("push conversion: wire byte {} is produced by no conversion piece", at));
    }
    const Segment& s = *std::prev(it);
    const std::uint64_t part = std::min(len - done, s.virt_end - at);
    out(s.round, s.slot_offset + (at - s.virt_begin), part, done);
    done += part;
  }
  return Status::Ok();
}

}  // namespace

Result<PushConversion> PushConversion::Create(const Layout& trainer, const Layout& engine,
                                              const PushConversionOptions& options, const PlanOptions& plan) {
  const Fp8BlockOptions& fp8 = options.fp8;
  if (fp8.block_rows < 1 || fp8.block_cols < 1) {
    return InvalidArgument(fmt::format("FP8 block size {}x{} must be at least 1x1", fp8.block_rows, fp8.block_cols));
  }
  auto state = std::make_shared<State>();
  state->trainer = trainer;
  state->engine = engine;
  state->options = options;
  const auto& et = engine.tensors();
  const auto& tt = trainer.tensors();
  std::unordered_map<std::string, std::uint32_t> trainer_index, engine_index;
  for (std::uint32_t t = 0; t < tt.size(); ++t) trainer_index.emplace(tt[t].name, t);
  for (std::uint32_t t = 0; t < et.size(); ++t) engine_index.emplace(et[t].name, t);

  std::vector<std::string> problems;
  bool unsupported = false;
  std::vector<std::uint32_t> source(et.size(), 0);
  std::vector<bool> trainer_used(tt.size(), false);
  state->engine_kind.assign(et.size(), PushTensorKind::kDirect);
  const std::string suffix = "_scale_inv";
  for (std::uint32_t e = 0; e < et.size(); ++e) {
    const TensorSpec& d = et[e];
    auto it = trainer_index.find(d.name);
    if (it == trainer_index.end()) {
      const bool is_scale = d.name.size() > suffix.size() && d.name.ends_with(suffix);
      const std::string weight = is_scale ? d.name.substr(0, d.name.size() - suffix.size()) : "";
      auto w = is_scale ? engine_index.find(weight) : engine_index.end();
      if (w != engine_index.end() && et[w->second].dtype == DType::kF8E4M3 && trainer_index.count(weight)) {
        state->engine_kind[e] = PushTensorKind::kFp8Scale;
        source[e] = trainer_index[weight];
        continue;  // checked with its weight
      }
      problems.push_back(fmt::format("engine tensor {} has no trainer tensor of that name", ToString(d)));
      continue;
    }
    const TensorSpec& s = tt[it->second];
    source[e] = it->second;
    trainer_used[it->second] = true;
    if (s.shape != d.shape) {
      problems.push_back(
          fmt::format("shape of {}: trainer {} engine {}", d.name, ShapeToString(s.shape), ShapeToString(d.shape)));
      continue;
    }
    if (s.dtype == d.dtype) continue;  // kDirect
    if (d.dtype == DType::kF8E4M3) {
      state->engine_kind[e] = PushTensorKind::kFp8Weight;
      if (d.shape.size() != 2 || !IsCastableDType(s.dtype)) {
        unsupported = true;
        problems.push_back(
            fmt::format("{}: FP8 block quantisation in the push takes a 2-D F16/BF16/F32 tensor, "
                        "the trainer holds {}",
                        d.name, ToString(s)));
        continue;
      }
      auto sc = engine_index.find(d.name + suffix);
      auto want = Fp8BlockScaleShape(d.shape, fp8);
      if (sc == engine_index.end()) {
        problems.push_back(fmt::format("FP8 weight {} has no {}{} in the engine's tensors", d.name, d.name, suffix));
      } else if (!want.ok() || et[sc->second].shape != *want || et[sc->second].dtype != DType::kF32) {
        problems.push_back(fmt::format("scale {}: expected F32{} for {}x{} blocks of {}, the engine holds {}",
                                       et[sc->second].name, want.ok() ? ShapeToString(*want) : "?", fp8.block_rows,
                                       fp8.block_cols, ToString(d), ToString(et[sc->second])));
      }
      continue;
    }
    if (IsCastableDType(s.dtype) && IsCastableDType(d.dtype)) {
      state->engine_kind[e] = PushTensorKind::kCast;
      continue;
    }
    unsupported = true;
    problems.push_back(fmt::format("{}: no conversion from {} to {}", d.name, DTypeName(s.dtype), DTypeName(d.dtype)));
  }
  for (std::uint32_t t = 0; t < tt.size(); ++t) {
    if (!trainer_used[t])
      problems.push_back(fmt::format("trainer tensor {} is not held by the engines", ToString(tt[t])));
  }
  if (!problems.empty()) {
    const std::size_t shown = std::min<std::size_t>(problems.size(), 8);
    const std::string msg =
        fmt::format("cannot push {} into {}: {} problem(s): {}{}", trainer.description(), engine.description(),
                    problems.size(), fmt::join(problems.begin(), problems.begin() + static_cast<long>(shown), "; "),
                    problems.size() > shown ? "; ..." : "");
    return unsupported ? Unsupported(msg) : LayoutMismatch(msg);
  }

  // Direct part: both layouts restricted to the unconverted tensors, real offsets kept.
  std::vector<std::uint32_t> direct_engine, direct_trainer, converted_engine;
  for (std::uint32_t e = 0; e < et.size(); ++e) {
    if (state->engine_kind[e] == PushTensorKind::kDirect) {
      direct_engine.push_back(e);
      direct_trainer.push_back(source[e]);
    } else {
      converted_engine.push_back(e);
    }
  }
  std::sort(direct_trainer.begin(), direct_trainer.end());
  {
    SW_ASSIGN_OR_RETURN(const Layout src, trainer.Subset(direct_trainer));
    SW_ASSIGN_OR_RETURN(const Layout dst, engine.Subset(direct_engine));
    SW_ASSIGN_OR_RETURN(state->direct_plan, PlanTransfer(src, dst, plan));
  }

  // Wire layout: the converted tensors over the trainer ranks (same rank classes).
  std::vector<TensorSpec> wire_tensors;
  std::unordered_map<std::uint32_t, std::uint32_t> wire_of_engine;
  for (std::uint32_t e : converted_engine) {
    wire_of_engine[e] = static_cast<std::uint32_t>(wire_tensors.size());
    wire_tensors.push_back(et[e]);
    state->wire_kind.push_back(state->engine_kind[e]);
    state->wire_trainer_tensor.push_back(source[e]);
  }
  state->wire_pair.assign(wire_tensors.size(), 0);
  for (std::uint32_t e : converted_engine) {
    if (state->engine_kind[e] != PushTensorKind::kFp8Weight) continue;
    const std::uint32_t w = wire_of_engine[e];
    const std::uint32_t s = wire_of_engine[engine_index[et[e].name + suffix]];
    state->wire_pair[w] = s;
    state->wire_pair[s] = w;
  }
  // Partial(sum) sources of the converted tensors: their sum groups by (wire tensor, box), each
  // group's members in rank order with the byte offset of their addend.
  struct Sum {
    std::uint32_t wire_tensor = 0;
    Box box;
    std::map<std::uint32_t, std::vector<std::pair<std::uint32_t, std::uint64_t>>> groups;  // partial group -> members
  };
  std::map<std::vector<std::int64_t>, Sum> sums;  // key: wire tensor, box offset, box shape
  std::set<std::vector<std::int64_t>> value_boxes;
  auto key_of = [](std::uint32_t w, const Box& b) {
    std::vector<std::int64_t> key{w};
    key.insert(key.end(), b.offset.begin(), b.offset.end());
    key.insert(key.end(), b.shape.begin(), b.shape.end());
    return key;
  };
  for (std::size_t c = 0; c < trainer.num_rank_classes(); ++c) {
    for (std::uint32_t w = 0; w < wire_tensors.size(); ++w) {
      if (state->wire_kind[w] == PushTensorKind::kFp8Scale) continue;  // follows its weight
      const ShardRef* src = trainer.rank_class(c).Find(state->wire_trainer_tensor[w]);
      if (src == nullptr) continue;
      if (src->partial_group == 0) {
        value_boxes.insert(key_of(w, src->box));
        continue;
      }
      Sum& sum = sums[key_of(w, src->box)];
      sum.wire_tensor = w;
      sum.box = src->box;
      for (std::uint32_t r : trainer.ranks_of_class(c))
        sum.groups[src->partial_group].emplace_back(r, src->byte_offset);
    }
  }
  // Each sum box is cut into row chunks, one per holder of the sum (group by group, ranks
  // ascending), in whole units (block-rows for FP8: no block straddles two chunks of one sum);
  // a chunk's reducer gets every addend of its group into scratch slots after the direct plan's.
  const auto world = static_cast<std::size_t>(trainer.world_size());
  state->reduce_copies = state->direct_plan.reduce_copies();
  state->reductions = state->direct_plan.reductions();
  state->scratch_bytes.resize(world);
  for (std::size_t r = 0; r < world; ++r)
    state->scratch_bytes[r] = state->direct_plan.scratch_bytes(static_cast<int>(r));
  struct Chunk {
    std::uint32_t wire_tensor = 0;
    Box box;
  };
  std::vector<std::vector<Chunk>> chunks_of(world);
  for (auto& [key, sum] : sums) {
    const std::uint32_t w = sum.wire_tensor;
    const TensorSpec& spec = tt[state->wire_trainer_tensor[w]];
    if (value_boxes.count(key)) {
      return InvalidArgument(fmt::format("layout {} holds box {} of {} both as values and as Partial(sum) addends",
                                         trainer.description(), ToString(sum.box), spec.name));
    }
    if (spec.dtype != DType::kBF16 && spec.dtype != DType::kF16 && spec.dtype != DType::kF32) {
      return Unsupported(
          fmt::format("{} is held as Partial(sum) addends of {}: a converted tensor's addends are "
                      "summed in fp32 before conversion, which takes BF16, F16 or F32",
                      spec.name, DTypeName(spec.dtype)));
    }
    std::vector<std::pair<const std::vector<std::pair<std::uint32_t, std::uint64_t>>*, std::uint32_t>> holders;
    for (auto& [group, members] : sum.groups) {
      std::sort(members.begin(), members.end());
      for (const auto& [rank, offset] : members) holders.emplace_back(&members, rank);
    }
    const Box& box = sum.box;
    const bool scalar = box.shape.empty();
    const std::int64_t row0 = scalar ? 0 : box.offset[0], rows = scalar ? 1 : box.shape[0];
    const std::int64_t unit = state->wire_kind[w] == PushTensorKind::kFp8Weight ? fp8.block_rows : 1;
    const std::int64_t first_unit = row0 / unit, units = (row0 + rows + unit - 1) / unit - first_unit;
    const std::uint64_t row_bytes = RowElements(box) * DTypeSize(spec.dtype);
    const auto n = static_cast<std::int64_t>(holders.size());
    for (std::int64_t h = 0; h < n; ++h) {
      const std::int64_t a = std::max(row0, (first_unit + units * h / n) * unit);
      const std::int64_t b = std::min(row0 + rows, (first_unit + units * (h + 1) / n) * unit);
      if (a >= b) continue;
      const auto& [members, reducer] = holders[static_cast<std::size_t>(h)];
      const std::uint64_t bytes = static_cast<std::uint64_t>(b - a) * row_bytes;
      std::uint64_t& used = state->scratch_bytes[reducer];
      const std::uint64_t slot0 = AlignUp(used);
      used = slot0 + bytes * members->size();
      for (std::size_t k = 0; k < members->size(); ++k) {
        const auto& [rank, offset] = (*members)[k];
        state->reduce_copies.push_back(
            ReduceCopy{.reducer = reducer,
                       .src_rank = rank,
                       .src_offset = offset + static_cast<std::uint64_t>(a - row0) * row_bytes,
                       .slot_offset = slot0 + k * bytes,
                       .length = bytes});
      }
      state->reductions.push_back(Reduction{reducer, slot0, bytes, static_cast<std::uint32_t>(members->size()),
                                            static_cast<std::uint8_t>(spec.dtype)});
      Box chunk = box;
      if (!scalar) {
        chunk.offset[0] = a;
        chunk.shape[0] = b - a;
      }
      chunks_of[reducer].push_back({w, chunk});
      state->reduced_at[{static_cast<int>(reducer), w}] = slot0;
    }
  }
  // The wire layout's rank classes: the trainer's, a rank that reduces chunks in a class of its own.
  std::vector<std::vector<ShardEntry>> class_shards;
  std::vector<std::uint32_t> class_of_rank(world);
  std::map<std::pair<std::size_t, std::int64_t>, std::uint32_t> class_index;  // (trainer class, reducer or -1)
  for (std::size_t c = 0; c < trainer.num_rank_classes(); ++c) {
    for (std::uint32_t r : trainer.ranks_of_class(c)) {
      const bool reduces = !chunks_of[r].empty();
      auto [it, added] =
          class_index.try_emplace({c, reduces ? std::int64_t{r} : -1}, static_cast<std::uint32_t>(class_shards.size()));
      class_of_rank[r] = it->second;
      if (!added) continue;
      std::vector<ShardEntry>& entries = class_shards.emplace_back();
      // A converted tensor's shard of `box`: the weight (or cast), and an FP8 weight's owned scales.
      auto add = [&](std::uint32_t w, const Box& box) {
        entries.push_back(ShardEntry{w, LocalShard(box)});
        if (state->wire_kind[w] != PushTensorKind::kFp8Weight) return;
        const Fp8BlockRange own = Fp8BlocksOwned(ToShardBox(box), fp8);
        if (own.count() == 0) return;
        entries.push_back(ShardEntry{state->wire_pair[w],
                                     LocalShard(Box{{own.row_begin, own.col_begin},
                                                    {own.row_end - own.row_begin, own.col_end - own.col_begin}})});
      };
      for (std::uint32_t w = 0; w < wire_tensors.size(); ++w) {
        if (state->wire_kind[w] == PushTensorKind::kFp8Scale) continue;
        const ShardRef* src = trainer.rank_class(c).Find(state->wire_trainer_tensor[w]);
        if (src != nullptr && src->partial_group == 0) add(w, src->box);
      }
      for (const Chunk& chunk : chunks_of[r]) add(chunk.wire_tensor, chunk.box);
    }
  }
  SW_ASSIGN_OR_RETURN(state->wire, Layout::FromRankClasses("converted(" + trainer.description() + ")", wire_tensors,
                                                           std::move(class_shards), std::move(class_of_rank)));
  {
    SW_ASSIGN_OR_RETURN(const Layout dst, engine.Subset(converted_engine));
    SW_ASSIGN_OR_RETURN(state->converted_plan, PlanTransfer(state->wire, dst, plan));
  }
  // One schedule for both parts: run round by round, a rank has at most K peers at once
  // across the moved and the converted tensors (the publisher's rounds, weight_sync.h).
  {
    TransferPlan* const parts[] = {&state->direct_plan, &state->converted_plan};
    SW_RETURN_IF_ERROR(ScheduleJointly(parts, plan.max_concurrency));
  }
  PushConversion conversion(state);
  // Check the staging bound once, here, so that a bad option fails before anything connects.
  if (conversion.converts()) {
    for (std::size_t c = 0; c < trainer.num_rank_classes(); ++c) {
      SW_RETURN_IF_ERROR(conversion.ForTrainerRank(static_cast<int>(trainer.ranks_of_class(c).front())).status());
    }
  }
  return conversion;
}

bool PushConversion::converts() const { return !state_->wire_kind.empty(); }
PushTensorKind PushConversion::kind(std::uint32_t engine_tensor) const { return state_->engine_kind.at(engine_tensor); }
const TransferPlan& PushConversion::direct_plan() const { return state_->direct_plan; }
const TransferPlan& PushConversion::converted_plan() const { return state_->converted_plan; }
const Layout& PushConversion::wire_layout() const { return state_->wire; }
std::uint32_t PushConversion::trainer_tensor(std::uint32_t wire_tensor) const {
  return state_->wire_trainer_tensor.at(wire_tensor);
}

Result<ConversionSource> PushConversion::SourceOf(int trainer_rank, std::uint32_t wire_tensor) const {
  const State& s = *state_;
  if (trainer_rank < 0 || trainer_rank >= s.trainer.world_size() || wire_tensor >= s.wire_kind.size() ||
      s.wire_kind[wire_tensor] == PushTensorKind::kFp8Scale) {
    return InvalidArgument(fmt::format("SourceOf(trainer rank {}, wire tensor {}): out of range or a scale tensor",
                                       trainer_rank, wire_tensor));
  }
  const ShardRef* shard = s.wire.rank(trainer_rank).Find(wire_tensor);
  if (shard == nullptr) {
    return NotFound(
        fmt::format("trainer rank {} converts no part of {}", trainer_rank, s.wire.tensors()[wire_tensor].name));
  }
  if (auto it = s.reduced_at.find({trainer_rank, wire_tensor}); it != s.reduced_at.end()) {
    return ConversionSource{.in_scratch = true, .byte_offset = it->second, .box = shard->box};
  }
  const ShardRef* own = s.trainer.rank(trainer_rank).Find(s.wire_trainer_tensor[wire_tensor]);
  return ConversionSource{.in_scratch = false, .byte_offset = own->byte_offset, .box = own->box};
}

const std::vector<ReduceCopy>& PushConversion::reduce_copies() const { return state_->reduce_copies; }
const std::vector<Reduction>& PushConversion::reductions() const { return state_->reductions; }
std::uint64_t PushConversion::scratch_bytes(int trainer_rank) const {
  const auto r = static_cast<std::size_t>(trainer_rank);
  return r < state_->scratch_bytes.size() ? state_->scratch_bytes[r] : 0;
}

std::vector<int> PushConversion::SourcesOf(int engine_rank) const {
  std::set<int> all;
  for (int s : state_->direct_plan.SourcesOf(engine_rank)) all.insert(s);
  for (int s : state_->converted_plan.SourcesOf(engine_rank)) all.insert(s);
  return {all.begin(), all.end()};
}

std::uint64_t PushConversion::BytesTo(int engine_rank) const {
  std::uint64_t n = 0;
  for (const Move& m : state_->direct_plan.MovesTo(engine_rank)) n += m.bytes();
  for (const Move& m : state_->converted_plan.MovesTo(engine_rank)) n += m.bytes();
  return n;
}

std::uint64_t PushConversion::BytesFrom(int trainer_rank) const {
  std::uint64_t n = 0;
  for (const TransferPlan* plan : {&state_->direct_plan, &state_->converted_plan}) {
    for (const Move& m : plan->MovesFrom(trainer_rank)) n += m.bytes() * plan->dst_groups()[m.dst_group].size();
  }
  return n;
}

Result<TrainerConversion> PushConversion::ForTrainerRank(int rank) const {
  const State& s = *state_;
  if (rank < 0 || rank >= s.trainer.world_size()) {
    return InvalidArgument(fmt::format("trainer rank {} is outside layout {}", rank, s.trainer.description()));
  }
  if (s.options.staging_slots == 1) {
    return InvalidArgument("staging_slots is 1: the staging ring needs at least 2 slots (0 = automatic)");
  }
  if (s.options.staging_slots >= 2) return PlanTrainerRank(rank, s.options.staging_slots);
  // Automatic: the most slots (up to kAutoStagingSlots) whose size still holds every first piece.
  for (std::uint32_t slots = kAutoStagingSlots; slots > 2; slots /= 2) {
    auto plan = PlanTrainerRank(rank, slots);
    if (plan.ok() || plan.status().code() != ErrorCode::kInvalidArgument) return plan;
  }
  return PlanTrainerRank(rank, 2);
}

Result<TrainerConversion> PushConversion::PlanTrainerRank(int rank, std::uint32_t slots) const {
  const State& s = *state_;
  const Fp8BlockOptions& fp8 = s.options.fp8;
  const std::uint64_t budget = s.options.staging_bytes / slots;
  const RankShards& wire = s.wire.rank(rank);
  TrainerConversion out;
  out.slots = slots;
  // The converted plan's moves from this rank by schedule round (ScheduleJointly: the rounds
  // of the whole push). Each schedule round gets staging rounds of its own, holding the pieces
  // its moves need, so that the publisher can run the push round by round (at most K peers per
  // rank at once); rows needed in two schedule rounds are converted in both.
  std::map<std::uint32_t, std::vector<Move>> moves_by_round;
  for (const Bucket& b : s.converted_plan.buckets()) {
    if (static_cast<int>(b.src_rank) != rank) continue;
    auto& moves = moves_by_round[b.round];
    moves.insert(moves.end(), s.converted_plan.moves().begin() + static_cast<std::ptrdiff_t>(b.first_move),
                 s.converted_plan.moves().begin() + static_cast<std::ptrdiff_t>(b.first_move + b.move_count));
  }
  for (const auto& round_entry : moves_by_round) {
    // Named copies, not structured bindings: the lambdas below capture them (clang 14 cannot
    // capture a structured binding).
    const auto schedule_round = round_entry.first;
    const auto& round_moves = round_entry.second;
    // Wire bytes the round's moves read, as sorted, merged [begin, end) intervals.
    std::vector<std::pair<std::uint64_t, std::uint64_t>> read;
    for (const Move& m : round_moves) {
      for (std::uint64_t i = 0; i < m.count; ++i) {
        read.emplace_back(m.src_offset + i * m.src_stride, m.src_offset + i * m.src_stride + m.length);
      }
    }
    std::sort(read.begin(), read.end());
    std::vector<std::pair<std::uint64_t, std::uint64_t>> merged;
    for (const auto& iv : read) {
      if (!merged.empty() && iv.first <= merged.back().second) {
        merged.back().second = std::max(merged.back().second, iv.second);
      } else {
        merged.push_back(iv);
      }
    }
    // Rows of the byte range [a, b) of a shard starting at `base` with rows of `row_bytes`.
    auto rows_of = [&](std::uint64_t base, std::uint64_t row_bytes, std::uint64_t nrows) {
      std::vector<std::pair<std::int64_t, std::int64_t>> rows;  // [first, end) local row indices
      const std::uint64_t limit = base + nrows * row_bytes;
      auto it = std::upper_bound(merged.begin(), merged.end(), base,
                                 [](std::uint64_t v, const auto& iv) { return v < iv.second; });
      for (; it != merged.end() && it->first < limit; ++it) {
        const std::uint64_t a = std::max(it->first, base) - base, b = std::min(it->second, limit) - base;
        rows.emplace_back(static_cast<std::int64_t>(a / row_bytes),
                          static_cast<std::int64_t>((b + row_bytes - 1) / row_bytes));
      }
      return rows;
    };
    if (out.rounds.empty() || !out.rounds.back().pieces.empty()) out.rounds.emplace_back();
    out.rounds.back().schedule_round = schedule_round;
    std::vector<Segment> segments;
    auto start_round_if_full = [&](std::uint64_t need) {
      if (AlignUp(out.rounds.back().bytes) + need > budget && out.rounds.back().bytes > 0) {
        out.rounds.emplace_back();
        out.rounds.back().schedule_round = schedule_round;
      }
    };
    for (const ShardRef& shard : wire.shards) {
      const std::uint32_t w = shard.tensor;
      const PushTensorKind kind = s.wire_kind[w];
      if (kind == PushTensorKind::kFp8Scale) continue;  // produced with its weight
      const TensorSpec& spec = s.wire.tensors()[w];
      const Box& box = shard.box;
      const bool scalar = box.shape.empty();
      const std::int64_t row0 = scalar ? 0 : box.offset[0];
      const std::int64_t rows = scalar ? 1 : box.shape[0];
      const std::uint64_t row_bytes = RowElements(box) * DTypeSize(spec.dtype);
      // Units: block-rows (FP8) or rows (casts); a piece is a run of whole units.
      const std::int64_t unit = kind == PushTensorKind::kFp8Weight ? fp8.block_rows : 1;
      const ShardRef* scale_shard = nullptr;
      Fp8BlockRange own;
      std::uint64_t scale_row_bytes = 0;
      if (kind == PushTensorKind::kFp8Weight) {
        scale_shard = wire.Find(s.wire_pair[w]);
        own = Fp8BlocksOwned(ToShardBox(box), fp8);
        scale_row_bytes = static_cast<std::uint64_t>(own.col_end - own.col_begin) * sizeof(float);
      }
      // The rows this round needs, widened to whole units: rows its moves read, and the rows of
      // the blocks whose scales they read (a block's scale comes with the piece holding its
      // first row).
      std::vector<std::pair<std::int64_t, std::int64_t>> needed;
      for (auto [a, b] : rows_of(shard.byte_offset, row_bytes, static_cast<std::uint64_t>(rows))) {
        needed.emplace_back(row0 + a, row0 + b);
      }
      if (scale_shard != nullptr && scale_row_bytes > 0) {
        for (auto [a, b] : rows_of(scale_shard->byte_offset, scale_row_bytes,
                                   static_cast<std::uint64_t>(own.row_end - own.row_begin))) {
          needed.emplace_back((own.row_begin + a) * unit, std::min(row0 + rows, (own.row_begin + b) * unit));
        }
      }
      for (auto& [a, b] : needed) {
        a = std::max(row0, a / unit * unit);
        b = std::min(row0 + rows, (b + unit - 1) / unit * unit);
      }
      std::sort(needed.begin(), needed.end());
      std::vector<std::pair<std::int64_t, std::int64_t>> ranges;
      for (const auto& iv : needed) {
        if (!ranges.empty() && iv.first <= ranges.back().second) {
          ranges.back().second = std::max(ranges.back().second, iv.second);
        } else {
          ranges.push_back(iv);
        }
      }
      for (const auto& range : ranges) {
        const auto range_begin = range.first, range_end = range.second;  // captured below
        std::int64_t r = range_begin;
        while (r < range_end) {
          // Rows of units [r, next) fitting the budget; at least one unit.
          auto unit_end = [&](std::int64_t from) { return std::min(range_end, (from / unit + 1) * unit); };
          auto piece_bytes = [&](std::int64_t a, std::int64_t b) {
            std::uint64_t bytes = AlignUp(static_cast<std::uint64_t>(b - a) * row_bytes);
            if (scale_shard != nullptr) {
              const std::int64_t owned = std::max<std::int64_t>(0, (b + unit - 1) / unit - (a + unit - 1) / unit);
              bytes += AlignUp(static_cast<std::uint64_t>(owned) * scale_row_bytes);
            }
            return bytes;
          };
          const std::int64_t first_end = unit_end(r);
          if (piece_bytes(r, first_end) > budget) {
            return InvalidArgument(fmt::format(
                "staging_bytes {} is below the minimum for {} in {} slots: {} pieces of {} bytes ({} rows of {} "
                "plus scales)",
                s.options.staging_bytes, spec.name, slots, slots, piece_bytes(r, first_end), first_end - r,
                ShapeToString(spec.shape)));
          }
          start_round_if_full(piece_bytes(r, first_end));
          ConversionRound& round = out.rounds.back();
          std::int64_t end = first_end;
          while (end < range_end && AlignUp(round.bytes) + piece_bytes(r, unit_end(end)) <= budget) {
            end = unit_end(end);
          }
          ConversionPiece piece;
          piece.wire_tensor = w;
          piece.trainer_tensor = s.wire_trainer_tensor[w];
          piece.row_begin = r;
          piece.row_end = end;
          piece.slot_offset = AlignUp(round.bytes);
          piece.bytes = static_cast<std::uint64_t>(end - r) * row_bytes;
          round.bytes = piece.slot_offset + piece.bytes;
          segments.push_back({shard.byte_offset + static_cast<std::uint64_t>(r - row0) * row_bytes,
                              shard.byte_offset + static_cast<std::uint64_t>(end - row0) * row_bytes,
                              out.rounds.size() - 1, piece.slot_offset});
          if (scale_shard != nullptr) {
            const std::int64_t first_owned = (r + unit - 1) / unit, end_owned = (end + unit - 1) / unit;
            piece.scale_wire_tensor = s.wire_pair[w];
            piece.scale_slot_offset = AlignUp(round.bytes);
            piece.scale_bytes =
                static_cast<std::uint64_t>(std::max<std::int64_t>(0, end_owned - first_owned)) * scale_row_bytes;
            round.bytes = piece.scale_slot_offset + piece.scale_bytes;
            if (piece.scale_bytes > 0) {
              const std::uint64_t begin =
                  scale_shard->byte_offset + static_cast<std::uint64_t>(first_owned - own.row_begin) * scale_row_bytes;
              segments.push_back({begin, begin + piece.scale_bytes, out.rounds.size() - 1, piece.scale_slot_offset});
            }
          }
          round.pieces.push_back(piece);
          r = end;
        }
      }
    }
    std::sort(segments.begin(), segments.end(),
              [](const Segment& a, const Segment& b) { return a.virt_begin < b.virt_begin; });

    // Moves: every run of the round's moves, re-addressed into its staging round's slot.
    for (const Move& m : round_moves) {
      std::vector<std::pair<std::size_t, Move>> parts;  // (staging round, contiguous run) in run order
      for (std::uint64_t i = 0; i < m.count; ++i) {
        const std::uint64_t dst = m.dst_offset + i * m.dst_stride;
        SW_RETURN_IF_ERROR(MapRun(segments, m.src_offset + i * m.src_stride, m.length,
                                  [&](std::size_t round, std::uint64_t slot, std::uint64_t len, std::uint64_t within) {
                                    parts.push_back({round, Move{.src_rank = static_cast<std::uint32_t>(rank),
                                                                 .dst_group = m.dst_group,
                                                                 .src_offset = slot,
                                                                 .dst_offset = dst + within,
                                                                 .length = len}});
                                  }));
      }
      // Runs that stay in one staging round with constant strides travel as one strided move again.
      std::size_t k = 0;
      while (k < parts.size()) {
        auto [round, move] = parts[k++];
        while (k < parts.size() && parts[k].first == round && parts[k].second.length == move.length) {
          const Move& next = parts[k].second;
          if (move.count == 1) {
            if (next.src_offset <= move.src_offset || next.dst_offset <= move.dst_offset) break;
            move.src_stride = next.src_offset - move.src_offset;
            move.dst_stride = next.dst_offset - move.dst_offset;
          } else if (next.src_offset != move.src_offset + move.count * move.src_stride ||
                     next.dst_offset != move.dst_offset + move.count * move.dst_stride) {
            break;
          }
          ++move.count;
          ++k;
        }
        out.rounds[round].moves.push_back(move);
      }
    }
  }
  if (!out.rounds.empty() && out.rounds.back().pieces.empty()) out.rounds.pop_back();
  for (const ConversionRound& round : out.rounds) out.slot_bytes = std::max(out.slot_bytes, AlignUp(round.bytes));

  // Partial amaxes: blocks this rank shares with other trainer ranks.
  std::map<int, BlockAmaxExchange> exchanges;
  const std::size_t my_class = [&] {
    for (std::size_t c = 0; c < s.wire.num_rank_classes(); ++c) {
      const auto& ranks = s.wire.ranks_of_class(c);
      if (std::find(ranks.begin(), ranks.end(), static_cast<std::uint32_t>(rank)) != ranks.end()) return c;
    }
    return std::size_t{0};
  }();
  for (const ShardRef& shard : wire.shards) {
    const std::uint32_t w = shard.tensor;
    if (s.wire_kind[w] != PushTensorKind::kFp8Weight) continue;
    const TensorSpec& spec = s.wire.tensors()[w];
    const Fp8ShardBox mine = ToShardBox(shard.box);
    const Fp8BlockRange t_mine = Fp8BlocksTouched(mine, fp8);
    for (std::size_t c = 0; c < s.wire.num_rank_classes(); ++c) {
      if (c == my_class) continue;
      const ShardRef* other = s.wire.rank_class(c).Find(w);
      if (other == nullptr || other->box == shard.box) continue;
      const Fp8ShardBox theirs = ToShardBox(other->box);
      const Fp8BlockRange t_theirs = Fp8BlocksTouched(theirs, fp8);
      const std::int64_t i0 = std::max(t_mine.row_begin, t_theirs.row_begin);
      const std::int64_t i1 = std::min(t_mine.row_end, t_theirs.row_end);
      const std::int64_t j0 = std::max(t_mine.col_begin, t_theirs.col_begin);
      const std::int64_t j1 = std::min(t_mine.col_end, t_theirs.col_end);
      std::vector<BlockRef> send, receive;
      for (std::int64_t i = i0; i < i1; ++i) {
        for (std::int64_t j = j0; j < j1; ++j) {
          if (!BlockInside(theirs, i, j, spec, fp8)) send.push_back({w, i, j});
          if (!BlockInside(mine, i, j, spec, fp8)) receive.push_back({w, i, j});
        }
      }
      if (send.empty() && receive.empty()) continue;
      for (std::uint32_t p : s.wire.ranks_of_class(c)) {
        BlockAmaxExchange& x = exchanges[static_cast<int>(p)];
        x.peer = static_cast<int>(p);
        x.send.insert(x.send.end(), send.begin(), send.end());
        x.receive.insert(x.receive.end(), receive.begin(), receive.end());
      }
    }
  }
  for (auto& [peer, x] : exchanges) out.exchanges.push_back(std::move(x));
  return out;
}

}  // namespace shardwire
