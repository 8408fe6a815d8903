// Property tests of the planner against the byte-level oracle (plan_oracle.h), over
// thousands of random cases: DTensor meshes and placements with uneven splits, and real
// model families (dense GQA, MoE, MLA) under random trainer and engine layouts (fused
// parameters, kv-head replication, vocab padding, expert parallelism with arbitrary
// expert maps, pipeline stages, HSDP replicas). A failing DTensor case is shrunk to a
// minimal one and printed, ready to paste as a regression test.
#include <gtest/gtest.h>
#include <xxhash.h>
#include <zstd.h>

#include <map>
#include <random>
#include <sstream>

#include "plan_oracle.h"
#include "shardwire/device_mesh.h"
#include "shardwire/model_config.h"
#include "shardwire/model_layouts.h"
#include "shardwire/plan_codec.h"
#include "shardwire/planner.h"

namespace shardwire {
namespace {

using testing::CheckPlanAgainstOracle;

// ---- Schedule invariants ---------------------------------------------------------------

std::string CheckSchedule(const TransferPlan& plan, const PlanOptions& options) {
  std::uint64_t next_move = 0;
  std::map<std::pair<std::uint32_t, std::uint32_t>, std::uint32_t> pair_round;
  std::map<std::uint32_t, std::map<std::uint32_t, int>> sends, receives;  // round -> rank -> count
  for (const Bucket& b : plan.buckets()) {
    if (b.first_move != next_move) return "buckets do not cover the moves in order";
    std::uint64_t bytes = 0;
    for (std::uint64_t i = b.first_move; i < b.first_move + b.move_count; ++i) {
      const Move& m = plan.moves()[i];
      if (m.src_rank != b.src_rank || m.dst_group != b.dst_group) return "a bucket mixes sources or groups";
      bytes += m.bytes();
    }
    next_move += b.move_count;
    if (bytes != b.bytes || bytes > options.bucket_bytes) return "bucket bytes wrong or above the cap";
    const auto& group = plan.dst_groups()[b.dst_group];
    const DeliveryKind expected_kind = group.size() == 1 ? DeliveryKind::kP2P : DeliveryKind::kBroadcast;
    if (b.delivery != DeliveryKind::kLocal && b.delivery != expected_kind) return "wrong delivery for the group";
    if (b.delivery == DeliveryKind::kLocal) continue;
    auto [it, inserted] = pair_round.try_emplace({b.src_rank, b.dst_group}, b.round);
    if (!inserted && it->second != b.round) return "one (source, group) pair spans rounds";
    if (inserted) {
      sends[b.round][b.src_rank] += std::min<int>(static_cast<int>(group.size()), options.max_concurrency);
      for (std::uint32_t d : group) receives[b.round][d] += 1;
    }
  }
  if (next_move != plan.moves().size()) return "buckets do not cover every move";
  for (const auto& [round, per_rank] : sends) {
    for (const auto& [rank, n] : per_rank) {
      if (n > options.max_concurrency) return "a source exceeds K sends in round " + std::to_string(round);
    }
  }
  for (const auto& [round, per_rank] : receives) {
    for (const auto& [rank, n] : per_rank) {
      if (n > options.max_concurrency) return "a destination exceeds K receives in round " + std::to_string(round);
    }
  }
  return "";
}

// ---- DTensor cases and their shrinker -----------------------------------------------------

struct SideCase {
  std::vector<int> mesh;                      // mesh dimension sizes
  std::vector<std::vector<Placement>> place;  // per tensor, per mesh dimension
};

struct DTensorCase {
  std::vector<TensorSpec> tensors;
  SideCase src, dst;

  std::string ToCode() const {
    std::ostringstream o;
    o << "tensors:";
    for (const auto& t : tensors) o << " " << ToString(t);
    for (const auto* side : {&src, &dst}) {
      o << (side == &src ? "\nsource mesh [" : "\ndestination mesh [");
      for (int s : side->mesh) o << s << " ";
      o << "] placements:";
      for (const auto& p : side->place) {
        o << " (";
        for (const auto& x : p) o << x.ToString() << " ";
        o << ")";
      }
    }
    return o.str();
  }
};

Result<Layout> BuildSide(const DTensorCase& c, const SideCase& side, const char* name) {
  std::vector<MeshDim> dims;
  for (std::size_t i = 0; i < side.mesh.size(); ++i) dims.push_back({"m" + std::to_string(i), side.mesh[i]});
  SW_ASSIGN_OR_RETURN(const DeviceMesh mesh, DeviceMesh::Create(dims));
  return MakeDTensorLayout(name, c.tensors, mesh, side.place);
}

using Planner = std::function<Result<TransferPlan>(const Layout&, const Layout&)>;

// "" when the planner is right on this case (or the case is not a valid input).
std::string RunCase(const DTensorCase& c, const Planner& planner) {
  auto src = BuildSide(c, c.src, "src");
  auto dst = BuildSide(c, c.dst, "dst");
  if (!src.ok() || !dst.ok()) return "";
  auto plan = planner(*src, *dst);
  if (!plan.ok()) return "planner error: " + plan.status().ToString();
  return CheckPlanAgainstOracle(*src, *dst, *plan);
}

DTensorCase RandomDTensorCase(std::mt19937& rng) {
  const DType dtypes[] = {DType::kBF16, DType::kF32, DType::kF8E4M3, DType::kI64, DType::kF16};
  DTensorCase c;
  const int n = 1 + static_cast<int>(rng() % 4);
  for (int i = 0; i < n; ++i) {
    TensorSpec s{"t" + std::to_string(i), dtypes[rng() % 5], {}};
    const std::size_t rank = rng() % 4;
    for (std::size_t d = 0; d < rank; ++d) s.shape.push_back(1 + static_cast<std::int64_t>(rng() % 11));
    c.tensors.push_back(s);
  }
  for (SideCase* side : {&c.src, &c.dst}) {
    const std::size_t dims = 1 + rng() % 3;
    for (std::size_t i = 0; i < dims; ++i) side->mesh.push_back(1 + static_cast<int>(rng() % 3));
    for (const auto& t : c.tensors) {
      std::vector<Placement> p;
      for (std::size_t i = 0; i < dims; ++i) {
        if (!t.shape.empty() && rng() % 3 != 0) {
          p.push_back(Placement::Shard(static_cast<int>(rng() % t.shape.size())));  // several may hit one dim
        } else {
          p.push_back(Placement::Replicate());
        }
      }
      side->place.push_back(p);
    }
  }
  return c;
}

// Greedy shrinking: keep applying the first simplification that still fails.
DTensorCase Shrink(DTensorCase c, const Planner& planner) {
  bool progress = true;
  while (progress) {
    progress = false;
    std::vector<DTensorCase> candidates;
    for (std::size_t t = 0; t < c.tensors.size() && c.tensors.size() > 1; ++t) {
      DTensorCase d = c;
      d.tensors.erase(d.tensors.begin() + static_cast<long>(t));
      d.src.place.erase(d.src.place.begin() + static_cast<long>(t));
      d.dst.place.erase(d.dst.place.begin() + static_cast<long>(t));
      candidates.push_back(d);
    }
    for (std::size_t t = 0; t < c.tensors.size(); ++t) {
      for (std::size_t d = 0; d < c.tensors[t].shape.size(); ++d) {
        if (c.tensors[t].shape[d] > 1) {
          DTensorCase e = c;
          e.tensors[t].shape[d] -= 1;
          candidates.push_back(e);
        }
      }
      if (c.tensors[t].dtype != DType::kU8) {
        DTensorCase e = c;
        e.tensors[t].dtype = DType::kU8;
        candidates.push_back(e);
      }
    }
    for (SideCase DTensorCase::*side : {&DTensorCase::src, &DTensorCase::dst}) {
      for (std::size_t i = 0; i < (c.*side).mesh.size(); ++i) {
        if ((c.*side).mesh[i] > 1) {
          DTensorCase e = c;
          (e.*side).mesh[i] -= 1;
          candidates.push_back(e);
        }
      }
    }
    for (const DTensorCase& candidate : candidates) {
      if (!RunCase(candidate, planner).empty()) {
        c = candidate;
        progress = true;
        break;
      }
    }
  }
  return c;
}

TEST(PlannerProperty, RandomDTensorPlacementsMatchOracle) {
  std::mt19937 rng(1122);
  const PlanOptions options{.bucket_bytes = 96, .max_concurrency = 2};
  const Planner planner = [&](const Layout& s, const Layout& d) { return PlanTransfer(s, d, options); };
  for (int iter = 0; iter < 3000; ++iter) {
    const DTensorCase c = RandomDTensorCase(rng);
    const std::string error = RunCase(c, planner);
    if (!error.empty()) {
      const DTensorCase minimal = Shrink(c, planner);
      FAIL() << "case " << iter << ": " << error << "\nminimal failing case:\n"
             << minimal.ToCode() << "\n-> " << RunCase(minimal, planner);
    }
    auto src = BuildSide(c, c.src, "src");
    auto dst = BuildSide(c, c.dst, "dst");
    if (src.ok() && dst.ok()) {
      const auto plan = PlanTransfer(*src, *dst, options);
      ASSERT_TRUE(plan.ok());
      ASSERT_EQ(CheckSchedule(*plan, options), "") << c.ToCode();
    }
  }
}

// The shrinker must find small cases: feed it a planner that drops the last move of
// every plan, and check that what comes out is minimal (one 1-byte element).
TEST(PlannerProperty, ShrinkerFindsAMinimalCase) {
  const Planner broken = [](const Layout& s, const Layout& d) -> Result<TransferPlan> {
    auto plan = PlanTransfer(s, d);
    if (!plan.ok() || plan->moves().empty()) return plan;
    std::vector<Move> moves = plan->moves();
    moves.pop_back();
    return TransferPlan(plan->src_world(), plan->dst_world(), plan->dst_groups(), moves, {}, 0);
  };
  std::mt19937 rng(5);
  DTensorCase failing;
  for (int i = 0; i < 1000; ++i) {
    failing = RandomDTensorCase(rng);
    if (!RunCase(failing, broken).empty() && failing.tensors.size() > 1) break;
  }
  ASSERT_FALSE(RunCase(failing, broken).empty());
  const DTensorCase minimal = Shrink(failing, broken);
  EXPECT_FALSE(RunCase(minimal, broken).empty());
  EXPECT_EQ(minimal.tensors.size(), 1u) << minimal.ToCode();
  EXPECT_EQ(minimal.tensors[0].dtype, DType::kU8) << minimal.ToCode();
  std::int64_t elements = 1;
  for (auto d : minimal.tensors[0].shape) elements *= d;
  EXPECT_EQ(elements, 1) << minimal.ToCode();
}

// A regression case kept from development: a dim-1 shard of an FSDP-uneven tensor
// planned to two mesh dimensions sharding the same tensor dimension.
TEST(PlannerProperty, RegressionTwoMeshDimsOnOneTensorDim) {
  DTensorCase c;
  c.tensors = {{"t0", DType::kBF16, {7, 5}}};
  c.src = {{3}, {{Placement::Shard(1)}}};
  c.dst = {{2, 2}, {{Placement::Shard(0), Placement::Shard(0)}}};
  EXPECT_EQ(RunCase(c, [](const Layout& s, const Layout& d) { return PlanTransfer(s, d); }), "");
}

// ---- Real model families under random trainer / engine layouts --------------------------

std::string RandomModelConfigJson(std::mt19937& rng, int family) {
  const int kv = 1 << (rng() % 3);            // 1, 2, 4 key/value heads
  const int heads = kv * (1 << (rng() % 2));  // GQA ratio 1 or 2
  const int head_dim = 4 * (1 + static_cast<int>(rng() % 2));
  const int hidden = 8 * (1 + static_cast<int>(rng() % 2));
  const int layers = 1 + static_cast<int>(rng() % 3);
  const int vocab = 20 + static_cast<int>(rng() % 50);  // rarely a multiple of 64: padding
  std::ostringstream o;
  o << R"({"hidden_size": )" << hidden << R"(, "num_hidden_layers": )" << layers << R"(, "num_attention_heads": )"
    << heads << R"(, "num_key_value_heads": )" << kv << R"(, "head_dim": )" << head_dim
    << R"(, "intermediate_size": 16, "vocab_size": )" << vocab << R"(, "torch_dtype": "bfloat16")";
  switch (family) {
    case 0:
      o << R"(, "model_type": "qwen3", "tie_word_embeddings": false})";
      break;
    case 1:
      o << R"(, "model_type": "qwen3_moe", "num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 8,
             "decoder_sparse_step": 1, "mlp_only_layers": []})";
      break;
    default:
      o << R"(, "model_type": "deepseek_v3", "n_routed_experts": 8, "n_shared_experts": 1, "num_experts_per_tok": 2,
             "moe_intermediate_size": 8, "first_k_dense_replace": 1, "q_lora_rank": 8, "kv_lora_rank": 8,
             "qk_nope_head_dim": 4, "qk_rope_head_dim": 4, "v_head_dim": 4, "num_nextn_predict_layers": 1})";
  }
  return o.str();
}

int PickDivisor(std::mt19937& rng, int n, int max) {
  std::vector<int> divisors;
  for (int d = 1; d <= std::min(n, max); ++d) {
    if (n % d == 0) divisors.push_back(d);
  }
  return divisors[rng() % divisors.size()];
}

TEST(PlannerProperty, RandomModelsAndLayoutsMatchOracle) {
  std::mt19937 rng(20261122);
  int planned = 0;
  for (int iter = 0; iter < 400; ++iter) {
    const int family = static_cast<int>(rng() % 3);
    auto config = ParseModelConfig(RandomModelConfigJson(rng, family), "random");
    ASSERT_TRUE(config.ok()) << config.status().ToString();
    auto model = DescribeModel(*config);
    ASSERT_TRUE(model.ok()) << model.status().ToString();
    const int heads = static_cast<int>(config->num_attention_heads);
    const int layers = static_cast<int>(config->num_hidden_layers);
    TrainerLayoutOptions t;
    t.dp_replicate = 1 + static_cast<int>(rng() % 2);
    t.dp_shard = 1 + static_cast<int>(rng() % 4);
    t.pp = 1 + static_cast<int>(rng() % std::min(2, layers));
    if (family > 0 && rng() % 2) {
      t.ep = PickDivisor(rng, t.dp_shard, 8);
    } else {
      t.tp = PickDivisor(rng, static_cast<int>(config->num_key_value_heads), 2);
    }
    EngineLayoutOptions e;
    e.tp = PickDivisor(rng, heads, 4);
    e.dp = 1 + static_cast<int>(rng() % 2);
    e.pp = 1 + static_cast<int>(rng() % std::min(2, layers));
    e.fuse = rng() % 4 != 0;
    if (family > 0 && rng() % 2 && 8 % e.tp == 0) {
      e.ep = e.tp;
      if (rng() % 2) {  // a non-contiguous expert map
        for (int x = 0; x < 8; ++x) e.expert_to_rank.push_back(static_cast<int>(rng() % static_cast<unsigned>(e.tp)));
      }
    }
    auto src = MakeTrainerLayout(*model, t);
    auto dst = MakeEngineLayout(*model, e);
    if (!src.ok() || !dst.ok()) continue;  // e.g. a shape the random TP size cannot split
    const PlanOptions options{.bucket_bytes = 1 + rng() % 4096, .max_concurrency = 1 + static_cast<int>(rng() % 4)};
    auto plan = PlanTransfer(*src, *dst, options);
    ASSERT_TRUE(plan.ok()) << plan.status().ToString();
    ++planned;
    SCOPED_TRACE(config->model_type + " " + src->description() + " -> " + dst->description());
    ASSERT_EQ(CheckPlanAgainstOracle(*src, *dst, *plan), "");
    ASSERT_EQ(CheckSchedule(*plan, options), "");
    // The reverse direction is P2P loading from a serving engine into a new layout.
    auto back = PlanTransfer(*dst, *src, options);
    ASSERT_TRUE(back.ok()) << back.status().ToString();
    ASSERT_EQ(CheckPlanAgainstOracle(*dst, *src, *back), "");
  }
  EXPECT_GT(planned, 250);
}

// ---- Replicas share the sending ----------------------------------------------------------

Result<ModelDescription> SmallDense() {
  SW_ASSIGN_OR_RETURN(const ModelConfig c, ParseModelConfig(R"({"model_type": "llama", "hidden_size": 256,
      "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 4, "intermediate_size": 512,
      "vocab_size": 1024, "torch_dtype": "bfloat16"})",
                                                            "small"));
  return DescribeModel(c);
}

double MaxOverIdeal(const TransferPlan& plan) {
  const auto sent = plan.BytesSentPerSource();
  const TrafficStats s = Summarize(sent);
  return static_cast<double>(s.max) / s.mean;
}

TEST(PlannerBalance, HsdpReplicasShareTheSendingWithinFivePercent) {
  auto model = SmallDense();
  ASSERT_TRUE(model.ok());
  auto src = MakeLayoutFromString(*model, "hsdp=2x4");
  auto dst = MakeLayoutFromString(*model, "tp=4,dp=2");
  ASSERT_TRUE(src.ok() && dst.ok());
  auto plan = PlanTransfer(*src, *dst);
  ASSERT_TRUE(plan.ok());
  EXPECT_LE(MaxOverIdeal(*plan), 1.05);
  // The other policy: replica group 0 (ranks 0-3) sends everything.
  auto first = PlanTransfer(*src, *dst, PlanOptions{.replica_policy = ReplicaPolicy::kFirstReplica});
  ASSERT_TRUE(first.ok());
  const auto sent = first->BytesSentPerSource();
  for (int r = 4; r < 8; ++r) EXPECT_EQ(sent[static_cast<std::size_t>(r)], 0u);
  EXPECT_EQ(CheckPlanAgainstOracle(*src, *dst, *first), "");
}

TEST(PlannerBalance, ServingReplicasShareAP2PLoad) {
  // P2P loading: 4 serving engines (tp=2) feed one new instance (tp=4).
  auto model = SmallDense();
  ASSERT_TRUE(model.ok());
  auto src = MakeLayoutFromString(*model, "tp=2,dp=4");
  auto dst = MakeLayoutFromString(*model, "tp=4");
  ASSERT_TRUE(src.ok() && dst.ok());
  auto plan = PlanTransfer(*src, *dst);
  ASSERT_TRUE(plan.ok());
  EXPECT_LE(MaxOverIdeal(*plan), 1.05);
  EXPECT_EQ(CheckPlanAgainstOracle(*src, *dst, *plan), "");
}

// ---- LOCAL delivery ----------------------------------------------------------------------

TEST(PlannerDelivery, ColocatedRanksCopyLocally) {
  // verl-style colocation: trainer rank i and engine rank i share process i.
  auto model = SmallDense();
  ASSERT_TRUE(model.ok());
  auto src = MakeLayoutFromString(*model, "fsdp=4");
  auto dst = MakeLayoutFromString(*model, "tp=2,dp=2");
  ASSERT_TRUE(src.ok() && dst.ok());
  const PlanOptions options{.src_process = {0, 1, 2, 3}, .dst_process = {0, 1, 2, 3}};
  auto plan = PlanTransfer(*src, *dst, options);
  ASSERT_TRUE(plan.ok());
  int local = 0;
  for (const Bucket& b : plan->buckets()) {
    if (b.delivery != DeliveryKind::kLocal) continue;
    ++local;
    for (std::uint32_t d : plan->dst_groups()[b.dst_group]) EXPECT_EQ(d, b.src_rank);
  }
  EXPECT_GT(local, 0);
  EXPECT_EQ(CheckPlanAgainstOracle(*src, *dst, *plan), "");
  EXPECT_EQ(CheckSchedule(*plan, options), "");
}

// ---- Validation ------------------------------------------------------------------------

TEST(PlannerValidation, PartialSourcesAndDestinations) {
  std::vector<TensorSpec> t{{"w", DType::kF32, {4, 4}}};
  auto mesh = DeviceMesh::Create({{"tp", 2}});
  ASSERT_TRUE(mesh.ok());
  auto partial = MakeDTensorLayout("partial", t, *mesh, {{Placement::Partial()}});
  auto sharded = MakeDTensorLayout("sharded", t, *mesh, {{Placement::Shard(0)}});
  ASSERT_TRUE(partial.ok() && sharded.ok());
  EXPECT_NE(partial->rank(0).shards[0].partial_group, 0u);
  EXPECT_EQ(partial->rank(0).shards[0].partial_group, partial->rank(1).shards[0].partial_group);
  auto to_partial = PlanTransfer(*sharded, *partial);
  ASSERT_FALSE(to_partial.ok());
  EXPECT_EQ(to_partial.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(to_partial.status().message().find("Partial"), std::string::npos);
  auto from_partial = PlanTransfer(*partial, *sharded);
  ASSERT_TRUE(from_partial.ok()) << from_partial.status().ToString();
  // Each destination piece is summed at one member before it is sent: 2 reductions of 2
  // addends, each addend copied once into its slot.
  EXPECT_EQ(from_partial->reductions().size(), 2u);
  EXPECT_EQ(from_partial->reduce_copies().size(), 4u);
  for (const Reduction& r : from_partial->reductions()) EXPECT_EQ(r.addends, 2u);
  EXPECT_EQ(CheckPlanAgainstOracle(*partial, *sharded, *from_partial, testing::OracleValues::kIntegers), "");
  // A plan that skipped the reduction (sent one addend) must be caught by the oracle.
  TransferPlan unreduced(from_partial->src_world(), from_partial->dst_world(), from_partial->dst_groups(),
                         from_partial->moves(), from_partial->buckets(), 0);
  unreduced.SetReductions(from_partial->reduce_copies(), {},
                          {from_partial->scratch_bytes(0), from_partial->scratch_bytes(1)});
  EXPECT_NE(CheckPlanAgainstOracle(*partial, *sharded, unreduced, testing::OracleValues::kIntegers), "");
  // Reductions survive serialisation, and a source's part carries the ones it takes part in.
  auto back = DeserializePlan(SerializePlan(*from_partial));
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->reduce_copies(), from_partial->reduce_copies());
  EXPECT_EQ(back->reductions(), from_partial->reductions());
  EXPECT_EQ(back->scratch_bytes(1), from_partial->scratch_bytes(1));
  auto part = DeserializePlan(SerializePlanPart(*from_partial, PlanSide::kSource, 0));
  ASSERT_TRUE(part.ok());
  for (const ReduceCopy& c : part->reduce_copies()) EXPECT_TRUE(c.reducer == 0 || c.src_rank == 0);
  EXPECT_EQ(part->reduce_copies().size(), 4u);  // rank 0 reduces one piece and contributes to the other
}

TEST(PlannerProperty, RandomPartialSourcesAreReducedBeforeArrival) {
  std::mt19937 rng(77);
  const DType dtypes[] = {DType::kI32, DType::kI64, DType::kF32, DType::kBF16, DType::kF16};
  int reduced = 0;
  for (int iter = 0; iter < 1500; ++iter) {
    DTensorCase c = RandomDTensorCase(rng);
    for (auto& t : c.tensors) t.dtype = dtypes[rng() % 5];
    for (auto& p : c.src.place) {
      for (auto& x : p) {
        if (rng() % 3 == 0) x = Placement::Partial();
      }
    }
    auto src = BuildSide(c, c.src, "src");
    auto dst = BuildSide(c, c.dst, "dst");
    ASSERT_TRUE(src.ok() && dst.ok());
    const PlanOptions options{.bucket_bytes = 64, .max_concurrency = 3};
    auto plan = PlanTransfer(*src, *dst, options);
    ASSERT_TRUE(plan.ok()) << plan.status().ToString() << "\n" << c.ToCode();
    reduced += !plan->reductions().empty();
    ASSERT_EQ(CheckPlanAgainstOracle(*src, *dst, *plan, testing::OracleValues::kIntegers), "") << c.ToCode();
    ASSERT_EQ(CheckSchedule(*plan, options), "");
  }
  EXPECT_GT(reduced, 500);
}

TEST(PlannerValidation, PlacementThatDoesNotFitTheMesh) {
  std::vector<TensorSpec> t{{"w", DType::kF32, {4, 4}}};
  auto mesh = DeviceMesh::Create({{"dp", 2}, {"tp", 2}});
  ASSERT_TRUE(mesh.ok());
  auto too_few = MakeDTensorLayout("x", t, *mesh, {{Placement::Shard(0)}});
  ASSERT_FALSE(too_few.ok());
  EXPECT_NE(too_few.status().message().find("1 placements given for mesh dp=2,tp=2"), std::string::npos)
      << too_few.status().message();
  auto bad_dim = MakeDTensorLayout("x", t, *mesh, {{Placement::Shard(0), Placement::Shard(2)}});
  ASSERT_FALSE(bad_dim.ok());
  EXPECT_NE(bad_dim.status().message().find("Shard(2) on mesh dimension tp"), std::string::npos)
      << bad_dim.status().message();
  EXPECT_FALSE(DeviceMesh::Create({{"dp", 2}, {"dp", 2}}).ok());
  EXPECT_FALSE(DeviceMesh::Create({{"dp", 0}}).ok());
}

TEST(PlannerValidation, BadOptions) {
  std::vector<TensorSpec> t{{"w", DType::kF32, {4}}};
  auto l = MakeFsdpLayout(t, 2).value();
  EXPECT_EQ(PlanTransfer(l, l, PlanOptions{.bucket_bytes = 0}).status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(PlanTransfer(l, l, PlanOptions{.max_concurrency = 0}).status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(PlanTransfer(l, l, PlanOptions{.src_process = {0}, .dst_process = {0, 1}}).status().code(),
            ErrorCode::kInvalidArgument);
  // A bucket of 1 byte cut a 256 MiB move into 2^28 one-byte moves (16 GiB of them: out of
  // memory, a MemoryError from Python); refused before anything is allocated for them.
  std::vector<TensorSpec> big{{"w", DType::kF32, {64 << 20}}};
  auto whole = MakeFsdpLayout(big, 1).value();
  auto halves = MakeFsdpLayout(big, 2).value();
  const auto tiny = PlanTransfer(whole, halves, PlanOptions{.bucket_bytes = 1});
  EXPECT_EQ(tiny.status().code(), ErrorCode::kInvalidArgument) << tiny.status().ToString();
  EXPECT_NE(tiny.status().message().find("bucket_bytes 1 cuts the plan into more than 67108864 moves"),
            std::string::npos)
      << tiny.status().ToString();
  EXPECT_TRUE(PlanTransfer(whole, halves, PlanOptions{.bucket_bytes = 4096}).ok());
}

// ---- Serialisation -----------------------------------------------------------------------

TEST(PlanCodec, WholePlanAndPartsRoundTrip) {
  auto model = SmallDense();
  ASSERT_TRUE(model.ok());
  auto src = MakeLayoutFromString(*model, "fsdp=3");
  auto dst = MakeLayoutFromString(*model, "tp=2,dp=2");
  ASSERT_TRUE(src.ok() && dst.ok());
  auto plan = PlanTransfer(*src, *dst, PlanOptions{.bucket_bytes = 4096});
  ASSERT_TRUE(plan.ok());
  const auto blob = SerializePlan(*plan);
  auto back = DeserializePlan(blob);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->moves(), plan->moves());
  EXPECT_EQ(back->buckets(), plan->buckets());
  EXPECT_EQ(back->dst_groups(), plan->dst_groups());
  EXPECT_EQ(SerializePlan(*plan), blob);  // deterministic bytes
  // Every source's part holds exactly its moves; every destination's part what it receives.
  for (int r = 0; r < plan->src_world(); ++r) {
    auto part = DeserializePlan(SerializePlanPart(*plan, PlanSide::kSource, r));
    ASSERT_TRUE(part.ok());
    EXPECT_EQ(part->moves(), plan->MovesFrom(r));
  }
  for (int r = 0; r < plan->dst_world(); ++r) {
    auto part = DeserializePlan(SerializePlanPart(*plan, PlanSide::kDestination, r));
    ASSERT_TRUE(part.ok());
    EXPECT_EQ(part->MovesTo(r), plan->MovesTo(r));
    EXPECT_EQ(part->SourcesOf(r), plan->SourcesOf(r));
  }
}

TEST(PlanCodec, CorruptBlobsAreTypedErrors) {
  auto model = SmallDense();
  ASSERT_TRUE(model.ok());
  auto plan = PlanTransfer(*MakeLayoutFromString(*model, "fsdp=2"), *MakeLayoutFromString(*model, "tp=2"));
  ASSERT_TRUE(plan.ok());
  const auto blob = SerializePlan(*plan);
  auto expect_corrupt = [](std::vector<std::byte> b, const std::string& what) {
    auto r = DeserializePlan(b);
    ASSERT_FALSE(r.ok()) << what;
    EXPECT_EQ(r.status().code(), ErrorCode::kCorruptData) << what;
    EXPECT_NE(r.status().message().find(what), std::string::npos) << r.status().message();
  };
  expect_corrupt(std::vector<std::byte>(blob.begin(), blob.begin() + 10), "truncated");
  auto bad_magic = blob;
  bad_magic[0] = std::byte{'X'};
  expect_corrupt(bad_magic, "bad magic");
  auto bad_version = blob;
  bad_version[4] = std::byte{9};
  expect_corrupt(bad_version, "unsupported plan version 9");
  auto flipped = blob;
  flipped[blob.size() / 2] ^= std::byte{0x40};
  expect_corrupt(flipped, "checksum");
}

// A plan blob around a hand-written body (format in plan_codec.h), for hostile inputs a
// real plan cannot produce.
std::vector<std::byte> SealPlanBody(const std::vector<std::uint64_t>& varints) {
  std::vector<std::byte> body;
  for (std::uint64_t v : varints) {
    do {
      const auto low = static_cast<std::uint8_t>(v & 0x7F);
      v >>= 7;
      body.push_back(static_cast<std::byte>(low | (v != 0 ? 0x80 : 0)));
    } while (v != 0);
  }
  std::vector<std::byte> out(16 + ZSTD_compressBound(body.size()) + 8);
  auto put = [&](std::size_t at, std::uint64_t v, int n) {
    for (int i = 0; i < n; ++i) out[at + static_cast<std::size_t>(i)] = static_cast<std::byte>((v >> (8 * i)) & 0xFF);
  };
  put(0, 0x4C505753, 4);  // "SWPL"
  put(4, 1, 2);           // version
  put(6, 0, 2);           // flags
  put(8, body.size(), 8);
  const std::size_t n = ZSTD_compress(out.data() + 16, out.size() - 24, body.data(), body.size(), 1);
  out.resize(16 + n + 8);
  put(16 + n, XXH64(out.data(), 16 + n, 0), 8);
  return out;
}

std::uint64_t Zigzag(std::int64_t v) {
  return (static_cast<std::uint64_t>(v) << 1) ^ static_cast<std::uint64_t>(v >> 63);
}

// Found by fuzz/plan_codec_fuzzer.cc: move offsets were summed in signed 64-bit
// arithmetic (undefined on overflow, reported by UBSan), and a move whose last byte lies
// past 2^64 was accepted, so an executor's "offset + size <= buffer" check could wrap.
TEST(PlanCodec, MoveRangesThatOverflow64BitsAreCorrupt) {
  // src_world 1, dst_world 1, runs 0, one group {0}, then one bucket (source 0, group 0,
  // delivery 0, round 0) with `moves`, then no scratch, copies or reductions.
  auto blob = [](const std::vector<std::uint64_t>& moves) {
    std::vector<std::uint64_t> v = {1, 1, 0, 1, 0, 1, 0, 1, 0, 0, 0, 0, moves.size() / 4};
    v.insert(v.end(), moves.begin(), moves.end());
    v.insert(v.end(), {0, 0, 0});
    return SealPlanBody(v);
  };
  const std::uint64_t k62 = std::uint64_t{1} << 62;
  // Well-formed: one move of 16 bytes at offset 2^62 on both sides.
  auto ok = DeserializePlan(blob({Zigzag(static_cast<std::int64_t>(k62)), Zigzag(0), 16, 1}));
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_EQ(ok->moves().at(0).src_offset, k62);
  // Source range 2^62 + 3 * 2^62 + ... > 2^64: count 2, source stride 3 * 2^62.
  auto strided = blob({Zigzag(static_cast<std::int64_t>(k62)), Zigzag(0), 1, 2, 3 * k62, 0});
  auto r = DeserializePlan(strided);
  EXPECT_EQ(r.status().code(), ErrorCode::kCorruptData);
  EXPECT_NE(r.status().message().find("overflows 64 bits"), std::string::npos) << r.status().message();
  // Two moves: the first ends at 2^63 (INT64_MIN as a signed number), the second's gap of
  // -1 made the old signed sum overflow; unsigned it is offset 2^63 - 1 of length 2^63 + 2,
  // which ends past 2^64.
  auto two = blob({Zigzag(static_cast<std::int64_t>(k62)), Zigzag(0), k62, 1,  //
                   Zigzag(-1), Zigzag(0), 2 * k62 + 2, 1});
  r = DeserializePlan(two);
  EXPECT_EQ(r.status().code(), ErrorCode::kCorruptData);
  EXPECT_NE(r.status().message().find("overflows 64 bits"), std::string::npos) << r.status().message();
}

// Found by fuzz/plan_codec_fuzzer.cc (a 15-second input): a group id of 2^24 in a
// 30-byte blob made the decoder allocate 2^24 empty groups (400 MB).
TEST(PlanCodec, GroupIdsBeyondTheLimitAreCorrupt) {
  // src_world 1, dst_world 1, runs 0, one group {id, size 1, rank 0}, no buckets, no
  // scratch, copies or reductions.
  auto blob = [](std::uint64_t id) { return SealPlanBody({1, 1, 0, 1, id, 1, 0, 0, 0, 0, 0}); };
  auto ok = DeserializePlan(blob(kMaxPlanGroups - 1));
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_EQ(ok->dst_groups().size(), kMaxPlanGroups);
  for (std::uint64_t id : {kMaxPlanGroups, std::uint64_t{1} << 24}) {
    auto r = DeserializePlan(blob(id));
    EXPECT_EQ(r.status().code(), ErrorCode::kCorruptData) << id;
    EXPECT_NE(r.status().message().find("group out of range"), std::string::npos) << r.status().message();
  }
}

// Found by fuzz/plan_codec_fuzzer.cc (CI, session 17's head): a group id written twice
// appended its second run of ranks to the first, so a decoded group held ranks unsorted and
// repeated, and a destination rank's binary search over its group could miss it.
TEST(PlanCodec, RepeatedOrDescendingGroupIdsAreCorrupt) {
  // src_world 1, dst_world 4, runs 0, two groups, no buckets, scratch, copies or reductions.
  auto blob = [](std::uint64_t first_id, std::uint64_t second_id) {
    return SealPlanBody({1, 4, 0, 2, first_id, 2, 1, 2, second_id, 1, 0, 0, 0, 0, 0});
  };
  auto ok = DeserializePlan(blob(0, 1));
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_EQ(ok->dst_groups().at(0), (std::vector<std::uint32_t>{1, 3}));
  EXPECT_EQ(ok->dst_groups().at(1), (std::vector<std::uint32_t>{0}));
  for (auto [first, second] : {std::pair<std::uint64_t, std::uint64_t>{0, 0}, {1, 0}, {5, 5}}) {
    auto r = DeserializePlan(blob(first, second));
    EXPECT_EQ(r.status().code(), ErrorCode::kCorruptData) << first << "," << second;
    EXPECT_NE(r.status().message().find("repeated or out of order"), std::string::npos) << r.status().message();
  }
}

// Found by review: the body size in the header was allocated (and zeroed) before the zstd
// frame was looked at, so 24 bytes naming a 4 GiB body committed 4 GiB. The frame's declared
// content size must now equal it first.
TEST(PlanCodec, ABodySizeTheFrameDoesNotDeclareIsCorruptBeforeAnyAllocation) {
  auto blob = SealPlanBody({1, 1, 0, 1, 0, 1, 0, 0, 0, 0, 0});
  ASSERT_TRUE(DeserializePlan(blob).ok());
  for (std::uint64_t lie : {std::uint64_t{1} << 32, std::uint64_t{12}}) {
    auto b = blob;
    for (int i = 0; i < 8; ++i) b[8 + static_cast<std::size_t>(i)] = static_cast<std::byte>((lie >> (8 * i)) & 0xFF);
    const std::uint64_t sum = XXH64(b.data(), b.size() - 8, 0);  // the checksum is no authentication
    for (int i = 0; i < 8; ++i) b[b.size() - 8 + static_cast<std::size_t>(i)] = static_cast<std::byte>(sum >> (8 * i));
    auto r = DeserializePlan(b);
    EXPECT_EQ(r.status().code(), ErrorCode::kCorruptData) << lie;
    EXPECT_NE(r.status().message().find("does not declare the recorded body size"), std::string::npos)
        << r.status().message();
  }
}

// Found by review: buckets out of source order were accepted, and MovesFrom (a binary
// search over the sorted buckets) then gave rank 0 rank 1's moves and rank 1 none.
TEST(PlanCodec, BucketsOutOfSourceOrderAreCorrupt) {
  // src_world 2, dst_world 1, runs 0, group {0}, two buckets of one 8-byte move each, with
  // sources `first` then `second`; no scratch, copies or reductions.
  auto blob = [](std::uint64_t first, std::uint64_t second) {
    return SealPlanBody(
        {2, 1, 0, 1, 0, 1, 0, 2, first, 0, 0, 0, 1, 0, 0, 8, 1, second, 0, 0, 0, 1, 0, 0, 8, 1, 0, 0, 0});
  };
  auto ok = DeserializePlan(blob(0, 1));
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_EQ(ok->MovesFrom(1).size(), 1u);
  auto r = DeserializePlan(blob(1, 0));
  EXPECT_EQ(r.status().code(), ErrorCode::kCorruptData);
  EXPECT_NE(r.status().message().find("sorted by source"), std::string::npos) << r.status().message();
}

// Found by review: reduce copies and reductions were not range-checked as moves are.
TEST(PlanCodec, ReductionRangesThatOverflow64BitsAreCorrupt) {
  // src_world 1, dst_world 1, runs 0, group {0}, no buckets, no scratch, then `copies` (8
  // varints each) and `sums` (5 each).
  auto blob = [](const std::vector<std::uint64_t>& copy, const std::vector<std::uint64_t>& sum) {
    std::vector<std::uint64_t> v = {1, 1, 0, 1, 0, 1, 0, 0, 0, copy.size() / 8};
    v.insert(v.end(), copy.begin(), copy.end());
    v.push_back(sum.size() / 5);
    v.insert(v.end(), sum.begin(), sum.end());
    return SealPlanBody(v);
  };
  constexpr std::uint64_t kMax = std::numeric_limits<std::uint64_t>::max();
  auto ok = DeserializePlan(blob({0, 0, 0, 64, 16, 2, 16, 16}, {0, 64, 32, 2, 0}));
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  auto copy = DeserializePlan(blob({0, 0, 0, kMax - 7, 16, 1, 0, 0}, {}));  // the slot run wraps
  EXPECT_EQ(copy.status().code(), ErrorCode::kCorruptData);
  EXPECT_NE(copy.status().message().find("reduce copy 0"), std::string::npos) << copy.status().message();
  auto strided = DeserializePlan(blob({0, 0, 1ull << 62, 0, 1, 4, 1ull << 62, 0}, {}));  // the source runs wrap
  EXPECT_EQ(strided.status().code(), ErrorCode::kCorruptData);
  auto sum = DeserializePlan(blob({}, {0, 1ull << 63, 1ull << 62, 3, 0}));  // 2^63 + 3 x 2^62
  EXPECT_EQ(sum.status().code(), ErrorCode::kCorruptData);
  EXPECT_NE(sum.status().message().find("reduction 0"), std::string::npos) << sum.status().message();
}

}  // namespace
}  // namespace shardwire
