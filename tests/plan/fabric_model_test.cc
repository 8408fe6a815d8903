// Fabric model: a small case computed by hand (every number derived in the comments),
// the traffic matrix, and fabric files that must be rejected before anything is computed.
#include "shardwire/fabric_model.h"

#include <gtest/gtest.h>

#include "shardwire/layout.h"
#include "shardwire/planner.h"
#include "shardwire/traffic_matrix.h"

namespace shardwire {
namespace {

// One F32 tensor "w" [8, 1024] = 32768 bytes. Sources: FSDP over 2 ranks (rank 0 holds
// rows 0-3 = 16384 bytes, rank 1 rows 4-7 = 16384 bytes). Destinations: 2 replicas of
// TP 1 (each holds all 32768 bytes), so both destination ranks form one destination
// group and each source sends its 16384 bytes to both (a BROADCAST bucket per source).
TransferPlan SmallPlan(int k) {
  std::vector<TensorSpec> tensors{{"w", DType::kF32, {8, 1024}}};
  const Layout src = MakeFsdpLayout(tensors, 2).value();
  const Layout dst = MakeTpLayout(tensors, {-1}, 1, 2).value();
  PlanOptions options;
  options.max_concurrency = k;
  return PlanTransfer(src, dst, options).value();
}

// 2 nodes x 2 GPUs. NIC 16384 B/s, NVLink 65536 B/s, latency 0.25 s per link per round.
// Sources on node 0 (rank 0 on GPU 0, rank 1 on GPU 1); destination rank 0 on node 0
// GPU 0 (the same GPU as source 0: colocated), destination rank 1 on node 1 GPU 0.
constexpr const char* kTwoByTwo = R"({
  "name": "2x2 hand case",
  "gpus_per_node": 2, "nodes": 2,
  "nic_bytes_per_second": 16384, "nvlink_bytes_per_second": 65536,
  "link_latency_seconds": 0.25,
  "source_nodes": [0, 0], "destination_nodes": [0, 1]
})";

const LinkLoad& Find(const FabricPrediction& p, LinkKind kind, int node, int gpu) {
  for (const LinkLoad& l : p.links) {
    if (l.kind == kind && l.node == node && l.gpu == gpu) return l;
  }
  static const LinkLoad none{};
  ADD_FAILURE() << "no link " << LinkKindName(kind) << " node " << node << " gpu " << gpu;
  return none;
}

TEST(FabricModel, HandComputedTwoNodesTwoGpusOneRound) {
  const TransferPlan plan = SmallPlan(4);
  ASSERT_EQ(plan.rounds(), 1u);  // K = 4: both (source, group) pairs fit in round 0
  const FabricSpec spec = ParseFabricSpec(kTwoByTwo).value();
  const FabricPrediction p = PredictTransfer(plan, spec).value();
  EXPECT_EQ(p.placement.source, (std::vector<GpuLocation>{{0, 0}, {0, 1}}));
  EXPECT_EQ(p.placement.destination, (std::vector<GpuLocation>{{0, 0}, {1, 0}}));
  // Flows (16384 bytes each):
  //   src0 (n0g0) -> dst0 (n0g0): same node, NVLink;  src0 -> dst1 (n1g0): NIC
  //   src1 (n0g1) -> dst0 (n0g0): same node, NVLink;  src1 -> dst1 (n1g0): NIC
  // Link loads: nic-out n0g0 16384 (1 s), nic-out n0g1 16384 (1 s), nic-in n1g0 32768 (2 s),
  //   nvlink-out n0g0 16384 (0.25 s), nvlink-out n0g1 16384 (0.25 s), nvlink-in n0g0 32768 (0.5 s).
  EXPECT_EQ(p.nic_bytes, 32768u);
  EXPECT_EQ(p.nvlink_bytes, 32768u);
  EXPECT_EQ(p.local_bytes, 0u);
  ASSERT_EQ(p.links.size(), 6u);
  EXPECT_EQ(p.links[0].kind, LinkKind::kNicIngress);  // the busiest link first
  EXPECT_EQ(p.links[0].Name(), "nic-in node 1 gpu 0");
  EXPECT_EQ(p.links[0].bytes, 32768u);
  EXPECT_DOUBLE_EQ(p.links[0].seconds, 2.0);
  EXPECT_EQ(p.links[0].destination_ranks, std::vector<int>{1});
  EXPECT_TRUE(p.links[0].source_ranks.empty());
  EXPECT_EQ(Find(p, LinkKind::kNicEgress, 0, 0).bytes, 16384u);
  EXPECT_EQ(Find(p, LinkKind::kNicEgress, 0, 1).bytes, 16384u);
  EXPECT_EQ(Find(p, LinkKind::kNvlinkEgress, 0, 0).bytes, 16384u);
  EXPECT_EQ(Find(p, LinkKind::kNvlinkEgress, 0, 1).bytes, 16384u);
  const LinkLoad& nvl_in = Find(p, LinkKind::kNvlinkIngress, 0, 0);
  EXPECT_EQ(nvl_in.bytes, 32768u);
  EXPECT_DOUBLE_EQ(nvl_in.seconds, 0.5);
  EXPECT_EQ(nvl_in.source_ranks, std::vector<int>{0});  // source 0 shares the GPU
  EXPECT_EQ(nvl_in.destination_ranks, std::vector<int>{0});
  // One round: max over links of bytes / bandwidth + latency = 2 + 0.25 (nic-in n1g0).
  ASSERT_EQ(p.rounds.size(), 1u);
  EXPECT_DOUBLE_EQ(p.rounds[0].seconds, 2.25);
  EXPECT_EQ(p.rounds[0].bytes, 65536u);
  EXPECT_EQ(p.rounds[0].bottleneck, 0u);
  EXPECT_EQ(p.links[0].rounds_bound, 1u);
  EXPECT_DOUBLE_EQ(p.predicted_seconds, 2.25);
  EXPECT_DOUBLE_EQ(p.link_bound_seconds, 2.0);
  // Ingress bound: max over destination GPUs: n1g0 NIC 32768 / 16384 = 2 s beats n0g0
  // NVLink 32768 / 65536 = 0.5 s.
  EXPECT_DOUBLE_EQ(p.ingress_bound_seconds, 2.0);
  EXPECT_EQ(p.ingress_bound_rank, 1);
  EXPECT_EQ(p.ingress_bound_bytes, 32768u);
}

TEST(FabricModel, HandComputedRoundsAddUp) {
  // K = 1: a source may send to one destination and a destination receive from one
  // source at a time; a broadcast to 2 counts min(2, 1) = 1 send. Pair (src0, {0,1})
  // takes round 0, pair (src1, {0,1}) round 1 (equal bytes: lower source first).
  const TransferPlan plan = SmallPlan(1);
  ASSERT_EQ(plan.rounds(), 2u);
  const FabricPrediction p = PredictTransfer(plan, ParseFabricSpec(kTwoByTwo).value()).value();
  ASSERT_EQ(p.rounds.size(), 2u);
  // Round 0: nic-out n0g0 16384 (1 s), nic-in n1g0 16384 (1 s), NVLink 0.25 s each:
  // 1 + 0.25 = 1.25 s; nic-out n0g0 and nic-in n1g0 tie, the lower link id (nic-out) wins.
  EXPECT_DOUBLE_EQ(p.rounds[0].seconds, 1.25);
  EXPECT_EQ(p.links[p.rounds[0].bottleneck].Name(), "nic-out node 0 gpu 0");
  // Round 1: the same from n0g1: 1.25 s, bound by nic-out n0g1.
  EXPECT_DOUBLE_EQ(p.rounds[1].seconds, 1.25);
  EXPECT_EQ(p.links[p.rounds[1].bottleneck].Name(), "nic-out node 0 gpu 1");
  EXPECT_DOUBLE_EQ(p.predicted_seconds, 2.5);
  // The bounds do not depend on the rounds: nic-in n1g0 carries 32768 bytes either way.
  EXPECT_DOUBLE_EQ(p.link_bound_seconds, 2.0);
  EXPECT_DOUBLE_EQ(p.ingress_bound_seconds, 2.0);
}

TEST(FabricModel, NodeLimitAndDefaultPlacement) {
  // Default placement with 1 GPU per node: sources on nodes 0, 1; destinations on 2, 3.
  // Every flow crosses a NIC. Node limit 8192 B/s: node-out n0 carries source 0's 2 x 16384
  // bytes = 4 s; node-in n2 carries 32768 bytes = 4 s; GPU NICs at 65536 B/s take 0.5 s.
  const TransferPlan plan = SmallPlan(4);
  const FabricSpec spec = ParseFabricSpec(R"({"gpus_per_node": 1, "nic_bytes_per_second": 65536,
      "nvlink_bytes_per_second": 1e9, "node_nic_bytes_per_second": 8192})")
                              .value();
  const FabricPrediction p = PredictTransfer(plan, spec).value();
  EXPECT_EQ(p.placement.nodes, 4);
  EXPECT_EQ(p.placement.destination, (std::vector<GpuLocation>{{2, 0}, {3, 0}}));
  EXPECT_EQ(p.nic_bytes, 65536u);
  EXPECT_EQ(p.nvlink_bytes, 0u);
  EXPECT_DOUBLE_EQ(p.link_bound_seconds, 4.0);
  EXPECT_DOUBLE_EQ(p.predicted_seconds, 4.0);  // one round, no latency
  EXPECT_DOUBLE_EQ(p.ingress_bound_seconds, 4.0);
  EXPECT_EQ(p.links[0].gpu, -1);  // a node link is the bottleneck
  EXPECT_EQ(p.links[0].Name(), "node-out node 0");
}

// FSDP 8 -> TP 2 x 4 replicas of one F32 [64, 256] tensor: source s holds rows 8s..8s+7
// (8192 bytes) and broadcasts them to TP rank s / 4 of all 4 engines (G = 4). One GPU per
// node, NIC 8192 B/s: each pair is 1 s on each member's NIC ingress and 4 s on the
// source's NIC egress. Every link carries 4 s in all (a source: 4 copies; a destination:
// 4 sources), so the ingress bound is 4 s.
//  * K = 4: a broadcast takes min(4, 4) = 4 send slots, a member 4 receives: all 8 pairs
//    fit one round of 4 s: prediction = bound.
//  * K = 2: a member receives from 2 sources per round, so 2 rounds, each as long as a
//    source's 4 s egress: 8 s = G / K x the bound (the factor docs/planner.md explains).
TEST(FabricModel, BroadcastRoundsCostGOverKWhenKIsSmallerThanTheGroup) {
  std::vector<TensorSpec> tensors{{"w", DType::kF32, {64, 256}}};
  const Layout src = MakeFsdpLayout(tensors, 8).value();
  const Layout dst = MakeTpLayout(tensors, {0}, 2, 4).value();
  const FabricSpec spec =
      ParseFabricSpec(R"({"gpus_per_node": 1, "nic_bytes_per_second": 8192, "nvlink_bytes_per_second": 8192})").value();
  for (const int k : {4, 2}) {
    PlanOptions options;
    options.max_concurrency = k;
    const TransferPlan plan = PlanTransfer(src, dst, options).value();
    const FabricPrediction p = PredictTransfer(plan, spec).value();
    EXPECT_DOUBLE_EQ(p.ingress_bound_seconds, 4.0) << "K=" << k;
    EXPECT_DOUBLE_EQ(p.link_bound_seconds, 4.0) << "K=" << k;
    EXPECT_EQ(p.rounds.size(), k == 4 ? 1u : 2u) << "K=" << k;
    EXPECT_DOUBLE_EQ(p.predicted_seconds, k == 4 ? 4.0 : 8.0) << "K=" << k;
  }
}

TEST(FabricModel, TrafficMatrixEqualsThePlansBytes) {
  const TransferPlan plan = SmallPlan(4);
  const TrafficMatrix m = ComputeTrafficMatrix(plan);
  ASSERT_EQ(m.rows, 2);
  ASSERT_EQ(m.cols, 2);
  for (int s = 0; s < 2; ++s) {
    for (int d = 0; d < 2; ++d) EXPECT_EQ(m.at(s, d), 16384u) << s << "," << d;
  }
  // FSDP 5 -> TP 3 of a [30, 6] F32 tensor: source rank s holds rows 6s..6s+5, TP rank d
  // holds rows 10d..10d+9 (column-parallel: dim 0), so the overlaps in rows are
  //   d0: s0 6, s1 4 | d1: s1 2, s2 6, s3 2 | d2: s3 4, s4 6 (x 24 bytes per row).
  std::vector<TensorSpec> tensors{{"w", DType::kF32, {30, 6}}};
  const TransferPlan p2 =
      PlanTransfer(MakeFsdpLayout(tensors, 5).value(), MakeTpLayout(tensors, {0}, 3, 1).value()).value();
  const TrafficMatrix full = ComputeTrafficMatrix(p2);
  const std::uint64_t rows[5][3] = {{6, 0, 0}, {4, 2, 0}, {0, 6, 0}, {0, 2, 4}, {0, 0, 6}};
  for (int s = 0; s < 5; ++s) {
    for (int d = 0; d < 3; ++d) EXPECT_EQ(full.at(s, d), rows[s][d] * 24) << s << "," << d;
  }
  // Aggregated to at most 2 x 2 cells: blocks of 3 sources and 2 destinations.
  const TrafficMatrix small = ComputeTrafficMatrix(p2, 2, 2);
  EXPECT_EQ(small.src_block, 3);
  EXPECT_EQ(small.dst_block, 2);
  EXPECT_EQ(small.at(0, 0), (6 + 4 + 2 + 6) * 24u);
  EXPECT_EQ(small.at(0, 1), 0u);
  EXPECT_EQ(small.at(1, 0), 2 * 24u);
  EXPECT_EQ(small.at(1, 1), (4 + 6) * 24u);
}

std::string ErrorOf(const std::string& json, int src_world = 2, int dst_world = 2) {
  Result<FabricSpec> spec = ParseFabricSpec(json, "f.json");
  if (!spec.ok()) {
    EXPECT_EQ(spec.status().code(), ErrorCode::kInvalidArgument);
    return spec.status().message();
  }
  Result<FabricPlacement> placed = PlaceRanks(*spec, src_world, dst_world);
  if (!placed.ok()) {
    EXPECT_EQ(placed.status().code(), ErrorCode::kInvalidArgument);
    return placed.status().message();
  }
  return "";
}

TEST(FabricModel, BadFabricFilesNameTheField) {
  const std::string ok = R"("gpus_per_node": 2, "nic_bytes_per_second": 5e10, "nvlink_bytes_per_second": 4.5e11)";
  EXPECT_EQ(ErrorOf("{" + ok + "}"), "");
  EXPECT_EQ(ErrorOf(R"({"gpus_per_node": 8, "nvlink_bytes_per_second": 1})"),
            "f.json: \"nic_bytes_per_second\" is missing");
  EXPECT_EQ(ErrorOf(R"({"gpus_per_node": 8, "nic_bytes_per_second": -5, "nvlink_bytes_per_second": 1})"),
            "f.json: \"nic_bytes_per_second\" is -5, must be > 0");
  EXPECT_EQ(ErrorOf(R"({"gpus_per_node": 8, "nic_bytes_per_second": "400G", "nvlink_bytes_per_second": 1})"),
            "f.json: \"nic_bytes_per_second\" must be a number, got \"400G\"");
  EXPECT_EQ(ErrorOf(R"({"gpus_per_node": 8, "nic_bytes_per_second": 1, "nvlink_bytes_per_second": 0})"),
            "f.json: \"nvlink_bytes_per_second\" is 0, must be > 0");
  EXPECT_EQ(ErrorOf(R"({"gpus_per_node": 2.5, "nic_bytes_per_second": 1, "nvlink_bytes_per_second": 1})"),
            "f.json: \"gpus_per_node\" must be an integer, got 2.5");
  EXPECT_EQ(ErrorOf("{" + ok + R"(, "link_latency_seconds": -1e-6})"),
            "f.json: \"link_latency_seconds\" is -1e-06, must be >= 0");
  EXPECT_EQ(ErrorOf("{" + ok + R"(, "nodes": 0})"), "f.json: \"nodes\" is 0, must be > 0 and at most 2^24");
  EXPECT_EQ(ErrorOf("{" + ok + R"(, "source_nodes": [0, -1]})"),
            "f.json: \"source_nodes\"[1] is -1, must be >= 0 and at most 2^24");
  EXPECT_NE(ErrorOf("{" + ok + R"(, "nic_gbps": 400})").find("f.json: unknown key \"nic_gbps\""), std::string::npos);
  EXPECT_NE(ErrorOf("{" + ok).find("f.json: not JSON"), std::string::npos);
  EXPECT_EQ(ErrorOf("[1, 2]"), "f.json: must be a JSON object");
  // A cluster smaller than the layouts: 16 sources and 16 destinations on 2-GPU nodes
  // need 8 + 8 nodes; the destinations start on node 8.
  EXPECT_EQ(ErrorOf("{" + ok + R"(, "nodes": 12})", 16, 16),
            "fabric: \"nodes\" is 12 but the layouts need 16 nodes of 2 GPUs (16 source ranks, 16 destination "
            "ranks): destination rank 8 lands on node 12");
  EXPECT_EQ(ErrorOf("{" + ok + R"(, "source_nodes": [0, 0, 0]})"),
            "fabric: \"source_nodes\" lists 3 ranks, the layout has 2");
  EXPECT_EQ(ErrorOf("{" + ok + R"(, "destination_nodes": [0, 0, 0]})", 2, 3),
            "fabric: \"destination_nodes\" puts more than 2 ranks on node 0 (gpus_per_node is 2)");
  // A cluster too large to model (link loads are dense arrays): an error, not an allocation.
  EXPECT_EQ(ErrorOf(R"({"gpus_per_node": 16777216, "nic_bytes_per_second": 1, "nvlink_bytes_per_second": 1,
      "destination_first_node": 16777216})"),
            "fabric: 16777217 nodes x 16777216 GPUs (\"nodes\", \"gpus_per_node\", first nodes and node lists) is "
            "more than 4194304 GPUs");
  // PredictTransfer checks the placement before it computes anything.
  const Result<FabricPrediction> p =
      PredictTransfer(SmallPlan(4), ParseFabricSpec("{" + ok + R"(, "nodes": 1})").value());
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(p.status().message().find("\"nodes\" is 1"), std::string::npos) << p.status().message();
}

}  // namespace
}  // namespace shardwire
