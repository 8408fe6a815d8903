// PushConversion: which engine tensors a push converts, the wire layout the converted bytes come
// from, the rounds that bound staging, and the amax exchanges between trainer ranks. The bytes
// themselves are checked end to end (real processes, every byte) in tests/workflows/weight_sync_test.cc.
#include "shardwire/push_conversion.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <set>

#include "shardwire/device_mesh.h"
#include "shardwire/planner.h"

namespace shardwire {
namespace {

std::vector<TensorSpec> TrainerTensors() {
  return {{"emb", DType::kBF16, {200, 64}},
          {"wq", DType::kBF16, {512, 256}},
          {"wo", DType::kBF16, {256, 512}},
          {"wk", DType::kBF16, {200, 320}},
          {"norm", DType::kBF16, {256}}};
}

// What an FP8 block-128 engine holds: quantised weights with scales, a float32 norm.
std::vector<TensorSpec> EngineTensors() {
  return {{"emb", DType::kBF16, {200, 64}},      {"wq", DType::kF8E4M3, {512, 256}},
          {"wq_scale_inv", DType::kF32, {4, 2}}, {"wo", DType::kF8E4M3, {256, 512}},
          {"wo_scale_inv", DType::kF32, {2, 4}}, {"wk", DType::kF8E4M3, {200, 320}},
          {"wk_scale_inv", DType::kF32, {2, 3}}, {"norm", DType::kF32, {256}}};
}

Layout Engine() { return MakeTpLayout(EngineTensors(), {0, 0, 0, 1, 1, -1, -1, -1}, 2, 2).value(); }

TEST(PushConversion, KindsPlansAndCoverage) {
  const Layout trainer = MakeFsdpLayout(TrainerTensors(), 3).value();
  const Layout engine = Engine();
  PushConversionOptions o;
  o.staging_bytes = 160 << 10;
  auto conv = PushConversion::Create(trainer, engine, o);
  ASSERT_TRUE(conv.ok()) << conv.status().ToString();
  EXPECT_TRUE(conv->converts());
  EXPECT_EQ(conv->kind(0), PushTensorKind::kDirect);
  EXPECT_EQ(conv->kind(1), PushTensorKind::kFp8Weight);
  EXPECT_EQ(conv->kind(2), PushTensorKind::kFp8Scale);
  EXPECT_EQ(conv->kind(7), PushTensorKind::kCast);
  // Every engine byte arrives once: what the engines receive is what their buffers hold.
  for (int e = 0; e < engine.world_size(); ++e) {
    std::uint64_t held = 0;
    for (const ShardRef& s : engine.rank(e).shards)
      held += static_cast<std::uint64_t>(s.box.numel()) * DTypeSize(engine.tensors()[s.tensor].dtype);
    EXPECT_EQ(conv->BytesTo(e), held) << "engine rank " << e;
  }
  std::uint64_t sent = 0;
  std::map<std::pair<int, int>, std::vector<BlockRef>> send, receive;
  for (int t = 0; t < trainer.world_size(); ++t) {
    auto tc = conv->ForTrainerRank(t);
    ASSERT_TRUE(tc.ok()) << tc.status().ToString();
    EXPECT_GT(tc->rounds.size(), 1u) << "the staging bound forces several rounds";
    EXPECT_GE(tc->slots, 2u);
    EXPECT_LE(tc->slots * tc->slot_bytes, o.staging_bytes);
    // Pieces cover each converted shard's rows exactly once, in order.
    std::map<std::uint32_t, std::int64_t> next_row;
    std::uint64_t moved = 0;
    for (const ConversionRound& r : tc->rounds) {
      EXPECT_LE(r.bytes, tc->slot_bytes);
      for (const ConversionPiece& p : r.pieces) {
        const ShardRef* shard = conv->wire_layout().rank(t).Find(p.wire_tensor);
        ASSERT_NE(shard, nullptr);
        const std::int64_t row0 = shard->box.shape.empty() ? 0 : shard->box.offset[0];
        auto [it, fresh] = next_row.emplace(p.wire_tensor, row0);
        EXPECT_EQ(p.row_begin, it->second);
        it->second = p.row_end;
      }
      for (const Move& m : r.moves) {
        moved += m.bytes() * conv->converted_plan().dst_groups()[m.dst_group].size();
        EXPECT_LE(m.src_offset + (m.count - 1) * m.src_stride + m.length, r.bytes) << "moves stay in the slot";
      }
    }
    std::uint64_t planned = 0;
    for (const Move& m : conv->converted_plan().MovesFrom(t))
      planned += m.bytes() * conv->converted_plan().dst_groups()[m.dst_group].size();
    EXPECT_EQ(moved, planned);
    sent += conv->BytesFrom(t);
    for (const BlockAmaxExchange& x : tc->exchanges) {
      send[{t, x.peer}] = x.send;
      receive[{t, x.peer}] = x.receive;
    }
  }
  std::uint64_t received = 0;
  for (int e = 0; e < engine.world_size(); ++e) received += conv->BytesTo(e);
  EXPECT_EQ(sent, received);
  // FSDP=3 splits wq at rows 171 / 342 and wo at 86 / 172: neighbours exchange, and what one
  // sends is exactly what the other expects.
  EXPECT_FALSE(send.empty());
  for (const auto& [pair, blocks] : send) {
    auto back = receive.find({pair.second, pair.first});
    ASSERT_NE(back, receive.end());
    EXPECT_EQ(back->second, blocks);
  }
}

TEST(PushConversion, SameDtypesConvertNothingAndPlanAsBefore) {
  const Layout trainer = MakeFsdpLayout(TrainerTensors(), 2).value();
  const Layout engine = MakeTpLayout(TrainerTensors(), {0, 0, 1, -1, -1}, 2, 1).value();
  auto conv = PushConversion::Create(trainer, engine);
  ASSERT_TRUE(conv.ok()) << conv.status().ToString();
  EXPECT_FALSE(conv->converts());
  EXPECT_EQ(conv->direct_plan().moves(), PlanTransfer(trainer, engine).value().moves());
}

TEST(PushConversion, BadPairsAreTypedErrorsNamingTheTensor) {
  const Layout trainer = MakeFsdpLayout(TrainerTensors(), 2).value();
  auto tensors = EngineTensors();
  tensors[2].shape = {4, 3};  // wq_scale_inv of the wrong shape
  auto bad_scale = PushConversion::Create(trainer, MakeTpLayout(tensors, {0, 0, 0, 1, 1, -1, -1, -1}, 1, 1).value());
  EXPECT_EQ(bad_scale.status().code(), ErrorCode::kLayoutMismatch);
  EXPECT_NE(bad_scale.status().message().find("wq_scale_inv"), std::string::npos) << bad_scale.status().ToString();

  tensors = EngineTensors();
  tensors.push_back({"extra", DType::kBF16, {8}});
  auto extra = PushConversion::Create(trainer, MakeTpLayout(tensors, {0, 0, 0, 1, 1, -1, -1, -1, -1}, 1, 1).value());
  EXPECT_EQ(extra.status().code(), ErrorCode::kLayoutMismatch);
  EXPECT_NE(extra.status().message().find("extra"), std::string::npos);

  tensors = EngineTensors();
  tensors[7].dtype = DType::kI32;  // norm as int: no cast
  auto no_cast = PushConversion::Create(trainer, MakeTpLayout(tensors, {0, 0, 0, 1, 1, -1, -1, -1}, 1, 1).value());
  EXPECT_EQ(no_cast.status().code(), ErrorCode::kUnsupported);
  EXPECT_NE(no_cast.status().message().find("norm"), std::string::npos);

  PushConversionOptions tiny;
  tiny.staging_bytes = 4096;  // below two pieces of one block-row of wo (128 x 512 bytes)
  auto small = PushConversion::Create(trainer, Engine(), tiny);
  EXPECT_EQ(small.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(small.status().message().find("minimum"), std::string::npos) << small.status().ToString();
}

TEST(PushConversion, StagingRingSlots) {
  const Layout trainer = MakeFsdpLayout(TrainerTensors(), 3).value();
  // Trainer rank 0's widest first piece: rows 0..86 of wo (FSDP chunk of 256 rows), 86 x 512 FP8
  // bytes = 44032, plus its one row of scales (64-byte aligned): 44096 bytes.
  auto slots_for = [&](std::uint64_t staging, std::uint32_t asked) -> Result<TrainerConversion> {
    PushConversionOptions o;
    o.staging_bytes = staging;
    o.staging_slots = asked;
    SW_ASSIGN_OR_RETURN(auto conv, PushConversion::Create(trainer, Engine(), o));
    return conv.ForTrainerRank(0);
  };
  auto a = slots_for(1 << 20, 0);  // 8 slots of 128 KiB
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  EXPECT_EQ(a->slots, kAutoStagingSlots);
  EXPECT_LE(a->slots * a->slot_bytes, std::uint64_t{1} << 20);
  auto b = slots_for(200 << 10, 0);  // 8 x 25.6 KB is too small, 4 x 51.2 KB holds the piece
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  EXPECT_EQ(b->slots, 4u);
  EXPECT_LE(b->slots * b->slot_bytes, std::uint64_t{200} << 10);
  auto c = slots_for(1 << 20, 3);  // as asked
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->slots, 3u);
  EXPECT_LE(c->slots * c->slot_bytes, std::uint64_t{1} << 20);
  EXPECT_EQ(slots_for(1 << 20, 1).status().code(), ErrorCode::kInvalidArgument);
  // Asked for more slots than fit: the error names the minimum, nothing is silently changed.
  auto d = slots_for(200 << 10, 8);
  EXPECT_EQ(d.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(d.status().message().find("minimum"), std::string::npos) << d.status().ToString();
}

// Partial(sum) trainer shards of converted tensors (dp=2: every tensor but wk is a Partial over
// both ranks): each sum is cut into one chunk per rank at block-row boundaries (FP8) or rows
// (the cast norm), each chunk reduced at its reducer from both addends into its scratch, after the
// direct plan's reductions (emb), and converted from there.
TEST(PushConversion, PartialSumsAreReducedInChunksAndConvertedFromTheReducersScratch) {
  const DeviceMesh mesh = DeviceMesh::Create({{"dp", 2}}).value();
  const auto P = Placement::Partial(), S0 = Placement::Shard(0);
  const Layout trainer = MakeDTensorLayout("dp2", TrainerTensors(), mesh, {{P}, {P}, {P}, {S0}, {P}}).value();
  PushConversionOptions o;
  o.staging_bytes = 160 << 10;
  auto conv = PushConversion::Create(trainer, Engine(), o);
  ASSERT_TRUE(conv.ok()) << conv.status().ToString();
  const Layout& wire = conv->wire_layout();
  // The direct plan's reductions come first, unchanged, and the converted tensors' follow.
  const auto& direct = conv->direct_plan().reductions();
  ASSERT_FALSE(direct.empty());
  ASSERT_GT(conv->reductions().size(), direct.size());
  EXPECT_TRUE(std::equal(direct.begin(), direct.end(), conv->reductions().begin()));
  // Per reducer, every reduction's slots lie in its scratch and overlap no other's.
  std::map<std::uint32_t, std::vector<std::pair<std::uint64_t, std::uint64_t>>> used;
  for (const Reduction& r : conv->reductions()) {
    EXPECT_EQ(r.addends, 2u);
    used[r.reducer].emplace_back(r.scratch_offset, r.scratch_offset + r.bytes * r.addends);
    EXPECT_LE(r.scratch_offset + r.bytes * r.addends, conv->scratch_bytes(static_cast<int>(r.reducer)));
  }
  for (auto& [reducer, ranges] : used) {
    std::sort(ranges.begin(), ranges.end());
    for (std::size_t i = 1; i < ranges.size(); ++i) EXPECT_LE(ranges[i - 1].second, ranges[i].first);
  }
  const std::map<std::string, std::int64_t> unit{{"wq", 128}, {"wo", 128}, {"norm", 1}};
  for (const auto& [name, rows_per_unit] : unit) {
    const std::uint32_t w = wire.TensorIndex(name).value();
    const TensorSpec& spec = wire.tensors()[w];
    std::int64_t next = 0;  // the chunks of both ranks tile the tensor's rows in rank order
    for (int t = 0; t < 2; ++t) {
      auto source = conv->SourceOf(t, w);
      ASSERT_TRUE(source.ok()) << source.status().ToString();
      EXPECT_TRUE(source->in_scratch) << name << " on trainer rank " << t;
      EXPECT_EQ(source->box, wire.rank(t).Find(w)->box);
      EXPECT_EQ(source->box.offset[0], next);
      EXPECT_EQ(source->box.offset[0] % rows_per_unit, 0) << name;
      next += source->box.shape[0];
      if (spec.shape.size() == 2) {
        EXPECT_EQ(source->box.shape[1], spec.shape[1]);
      }
      // Its reduction: at its slot 0, both addends' rows of the chunk copied in rank order.
      const std::uint64_t bytes = static_cast<std::uint64_t>(source->box.numel()) * 2;
      EXPECT_EQ(std::count(conv->reductions().begin(), conv->reductions().end(),
                           Reduction{static_cast<std::uint32_t>(t), source->byte_offset, bytes, 2,
                                     static_cast<std::uint8_t>(DType::kBF16)}),
                1)
          << name << " on trainer rank " << t;
      for (std::uint32_t k = 0; k < 2; ++k) {
        const ShardRef* addend = trainer.rank(static_cast<int>(k)).Find(trainer.TensorIndex(name).value());
        const std::uint64_t row_bytes = bytes / static_cast<std::uint64_t>(source->box.shape[0]);
        const ReduceCopy want{
            .reducer = static_cast<std::uint32_t>(t),
            .src_rank = k,
            .src_offset = addend->byte_offset + static_cast<std::uint64_t>(source->box.offset[0]) * row_bytes,
            .slot_offset = source->byte_offset + k * bytes,
            .length = bytes};
        EXPECT_EQ(std::count(conv->reduce_copies().begin(), conv->reduce_copies().end(), want), 1)
            << name << " addend " << k << " into trainer rank " << t;
      }
    }
    EXPECT_EQ(next, spec.shape[0]) << name;
  }
  // wk is an ordinary shard, read from the buffer; a scale is not a source.
  const std::uint32_t wk = wire.TensorIndex("wk").value();
  auto own = conv->SourceOf(1, wk);
  ASSERT_TRUE(own.ok()) << own.status().ToString();
  EXPECT_FALSE(own->in_scratch);
  EXPECT_EQ(own->byte_offset, trainer.rank(1).Find(trainer.TensorIndex("wk").value())->byte_offset);
  EXPECT_EQ(conv->SourceOf(0, wire.TensorIndex("wq_scale_inv").value()).status().code(), ErrorCode::kInvalidArgument);
  // Every engine byte still arrives once.
  const Layout engine = Engine();
  for (int e = 0; e < engine.world_size(); ++e) {
    std::uint64_t held = 0;
    for (const ShardRef& s : engine.rank(e).shards)
      held += static_cast<std::uint64_t>(s.box.numel()) * DTypeSize(engine.tensors()[s.tensor].dtype);
    EXPECT_EQ(conv->BytesTo(e), held) << "engine rank " << e;
  }
}

TEST(PushConversion, ABoxHeldBothAsValuesAndAsAddendsIsRefused) {
  const std::vector<TensorSpec> t{{"w", DType::kBF16, {128, 128}}};
  const std::vector<TensorSpec> fp8{{"w", DType::kF8E4M3, {128, 128}}, {"w_scale_inv", DType::kF32, {1, 1}}};
  const Box whole{{0, 0}, {128, 128}};
  const Layout trainer =
      Layout::FromShards("mixed", t, {{LocalShard(whole)}, {LocalShard(whole, 0, 1)}, {LocalShard(whole, 0, 1)}})
          .value();
  const Layout engine = MakeTpLayout(fp8, {-1, -1}, 1, 1).value();
  auto conv = PushConversion::Create(trainer, engine);
  EXPECT_EQ(conv.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(conv.status().message().find("both as values and as Partial(sum) addends"), std::string::npos)
      << conv.status().ToString();
}

}  // namespace
}  // namespace shardwire
