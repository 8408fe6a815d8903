// Fabric model: predicts how long a TransferPlan takes on a described GPU cluster.
//
// The cluster (a *fabric*) is nodes of `gpus_per_node` GPUs. Every GPU has its own NIC
// (per-GPU NIC bandwidth, as in H100/H200 DGX/HGX systems with one 400 Gb/s ConnectX-7 per
// GPU) and NVLink to the GPUs of its node. Source (trainer) and destination (engine) ranks
// are placed on GPUs; by default trainers fill nodes 0 .. ceil(S/g)-1 (rank r on node
// r / g, GPU r % g) and engines fill the next nodes (rank r on node ceil(S/g) + r / g, GPU
// r % g), so engine replica e of a tp=8 layout sits on one node. The fabric file can
// override both (first nodes, or an explicit node per rank).
//
// Model (assumptions, also in docs/planner.md "Fabric model"):
//  * Links are full duplex: every GPU has a NIC egress and a NIC ingress link, an NVLink
//    egress and an NVLink ingress link, each with its own bandwidth (bytes/s). With
//    `node_nic_bytes_per_second` a node also has an aggregate NIC egress and ingress link.
//  * A move between GPUs of one node (or the same GPU, e.g. colocated trainer and engine)
//    uses NVLink; a move between nodes uses the source GPU's NIC egress and the destination
//    GPU's NIC ingress. The switch fabric is non-blocking (no congestion, no routing).
//  * LOCAL buckets (same process) cost nothing on any link.
//  * A BROADCAST bucket is counted once per destination: the source writes each member of
//    the destination group directly (what the publisher does; no relay tree).
//  * Bytes are the plan's bytes, in the destination dtype of the planned model: plan an FP8
//    config (quantization_config quant_method "fp8") to count FP8 weights and F32 scales.
//  * Rounds are synchronous: round r starts when round r - 1 has finished everywhere.
//    A link carries all its bytes of a round at its full bandwidth (flows sharing a link
//    share it fairly, the link is never idle while it has bytes), so
//      round time = max over links of (bytes on the link in the round / bandwidth + latency)
//      prediction = sum over rounds of round time.
//    `link_latency_seconds` is paid once per link per round in which it carries bytes.
//  * Two lower bounds come with it: the link bound (max over links of all their bytes /
//    bandwidth: what a schedule without round barriers could reach) and the ingress bound
//    (max over destination GPUs of the bytes entering it over NIC / NIC bandwidth, over
//    NVLink / NVLink bandwidth, and per node / node NIC bandwidth when given: no plan that
//    writes every destination byte once can beat it for this placement).
//
// Thread-safety: pure functions; results are values.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "shardwire/status.h"
#include "shardwire/transfer_plan.h"

namespace shardwire {

/// A described cluster, as read from a JSON fabric file (see ParseFabricSpec).
struct FabricSpec {
  int gpus_per_node = 0;                            ///< GPUs per node (> 0)
  double nic_bytes_per_second = 0;                  ///< per GPU, per direction (> 0), bytes/s
  double nvlink_bytes_per_second = 0;               ///< per GPU, per direction, within a node (> 0), bytes/s
  double link_latency_seconds = 0;                  ///< per link per round (>= 0), seconds
  std::optional<double> node_nic_bytes_per_second;  ///< aggregate NIC limit per node, per direction
  std::optional<int> nodes;                         ///< cluster size; unset: as many as placed
  std::optional<int> source_first_node;             ///< default 0
  std::optional<int> destination_first_node;        ///< default: first node after the sources
  std::vector<int> source_nodes;                    ///< explicit node per source rank (overrides first node)
  std::vector<int> destination_nodes;               ///< explicit node per destination rank
  std::string name;                                 ///< free text ("name" in the file)
};

/// Parses a fabric file's JSON text. `origin` names the file in messages. Keys:
///   gpus_per_node (integer > 0), nic_bytes_per_second (number > 0),
///   nvlink_bytes_per_second (number > 0) — required;
///   link_latency_seconds (number >= 0), node_nic_bytes_per_second (number > 0),
///   nodes (integer > 0), source_first_node / destination_first_node (integer >= 0),
///   source_nodes / destination_nodes (arrays of integers >= 0), name / description /
///   references (strings or arrays of strings, ignored) — optional.
/// Errors (kInvalidArgument, message naming origin and field): not JSON or not an object,
/// a required field missing, a field not a number (or not an integer where one is
/// needed), negative, zero where it must be positive, an unknown key.
Result<FabricSpec> ParseFabricSpec(std::string_view json_text, std::string_view origin = "fabric");

/// Largest fabric file LoadFabricSpec reads, bytes.
inline constexpr std::uint64_t kMaxFabricFileBytes = std::uint64_t{16} << 20;

/// Reads and parses a fabric file. kNotFound when it does not exist; kIoError when it cannot
/// be read, is not a regular file (a FIFO, /dev/zero: nothing read, no wait) or holds more than
/// kMaxFabricFileBytes; else as ParseFabricSpec.
Result<FabricSpec> LoadFabricSpec(const std::string& path);

/// A GPU of the cluster.
struct GpuLocation {
  int node = 0;
  int gpu = 0;  ///< index within the node, 0 .. gpus_per_node - 1
  bool operator==(const GpuLocation&) const = default;
};

/// Where every source and destination rank runs.
struct FabricPlacement {
  std::vector<GpuLocation> source;       ///< per source rank
  std::vector<GpuLocation> destination;  ///< per destination rank
  int nodes = 0;                         ///< nodes in the cluster
};

/// Places `src_world` source and `dst_world` destination ranks on the fabric (default
/// mapping in the file comment; with an explicit node list, a node's ranks of one side
/// take its GPUs 0, 1, ... in rank order). Errors (kInvalidArgument, naming the field):
/// an explicit node list whose length differs from the world size; more ranks of one side
/// on a node than gpus_per_node; a placement reaching node `nodes` or beyond (the cluster
/// is smaller than the layouts); a cluster of more than 2^22 GPUs (nodes x gpus_per_node,
/// counting the nodes the placement reaches).
Result<FabricPlacement> PlaceRanks(const FabricSpec& spec, int src_world, int dst_world);

/// What a link is.
enum class LinkKind : std::uint8_t {
  kNicEgress,      ///< a GPU's NIC, sending
  kNicIngress,     ///< a GPU's NIC, receiving
  kNvlinkEgress,   ///< a GPU's NVLink, sending
  kNvlinkIngress,  ///< a GPU's NVLink, receiving
  kNodeEgress,     ///< a node's aggregate NIC limit, sending
  kNodeIngress,    ///< a node's aggregate NIC limit, receiving
};
/// "nic-out", "nic-in", "nvlink-out", "nvlink-in", "node-out", "node-in".
std::string_view LinkKindName(LinkKind kind);

/// One link and its load over the whole plan.
struct LinkLoad {
  LinkKind kind = LinkKind::kNicEgress;
  int node = 0;
  int gpu = -1;                        ///< -1 for node links
  std::uint64_t bytes = 0;             ///< bytes over the whole plan
  double seconds = 0;                  ///< bytes / bandwidth (no latency)
  std::uint32_t rounds_bound = 0;      ///< rounds whose time this link set (the first such link)
  std::vector<int> source_ranks;       ///< source ranks placed on this GPU / node
  std::vector<int> destination_ranks;  ///< destination ranks placed on this GPU / node
  /// e.g. "nic-in node 3 gpu 5" or "node-out node 0".
  std::string Name() const;
};

/// One schedule round.
struct RoundPrediction {
  double seconds = 0;          ///< max over links of bytes / bandwidth + latency
  std::uint64_t bytes = 0;     ///< bytes delivered in the round (network buckets)
  std::size_t bottleneck = 0;  ///< index into FabricPrediction::links of the link that set it
};

/// The prediction for one plan on one fabric. Seconds are wall-clock seconds.
struct FabricPrediction {
  double predicted_seconds = 0;           ///< sum of round times (round-synchronous schedule)
  double link_bound_seconds = 0;          ///< max over links of bytes / bandwidth
  double ingress_bound_seconds = 0;       ///< see the file comment
  int ingress_bound_rank = -1;            ///< destination rank on the busiest destination GPU
  std::uint64_t ingress_bound_bytes = 0;  ///< bytes into that GPU (or node) over the bounding link
  std::uint64_t nic_bytes = 0;            ///< bytes that cross a NIC (between nodes)
  std::uint64_t nvlink_bytes = 0;         ///< bytes over NVLink (within a node)
  std::uint64_t local_bytes = 0;          ///< bytes of LOCAL buckets (no link)
  std::vector<RoundPrediction> rounds;
  /// Every link that carries bytes, by decreasing seconds (ties: kind, node, gpu).
  std::vector<LinkLoad> links;
  FabricPlacement placement;
};

/// Predicts `plan` on `spec` (model and assumptions in the file comment). Errors: as
/// PlaceRanks (kInvalidArgument) — checked before anything is computed.
Result<FabricPrediction> PredictTransfer(const TransferPlan& plan, const FabricSpec& spec);

}  // namespace shardwire
