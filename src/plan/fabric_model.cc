#include "shardwire/fabric_model.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <tuple>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/regular_file.h"

namespace shardwire {
namespace {

using Json = nlohmann::json;

// The largest cluster modelled: link loads are dense arrays over GPUs.
constexpr std::int64_t kMaxGpus = std::int64_t{1} << 22;

constexpr std::string_view kKnownKeys[] = {"gpus_per_node",
                                           "nic_bytes_per_second",
                                           "nvlink_bytes_per_second",
                                           "link_latency_seconds",
                                           "node_nic_bytes_per_second",
                                           "nodes",
                                           "source_first_node",
                                           "destination_first_node",
                                           "source_nodes",
                                           "destination_nodes",
                                           "name",
                                           "description",
                                           "references"};

// Reads field `key` of `j` as a number; `positive` demands > 0, else >= 0.
Result<std::optional<double>> Number(const Json& j, std::string_view origin, const char* key, bool required,
                                     bool positive) {
  auto it = j.find(key);
  if (it == j.end()) {
    if (required) return InvalidArgument(fmt::format("{}: \"{}\" is missing", origin, key));
    return std::optional<double>{};
  }
  if (!it->is_number()) {
    return InvalidArgument(fmt::format("{}: \"{}\" must be a number, got {}", origin, key, it->dump()));
  }
  const double v = it->get<double>();
  if (!std::isfinite(v) || v < 0 || (positive && v == 0)) {
    return InvalidArgument(
        fmt::format("{}: \"{}\" is {}, must be {}", origin, key, it->dump(), positive ? "> 0" : ">= 0"));
  }
  return std::optional<double>{v};
}

Result<int> AsInt(const Json& v, std::string_view origin, const std::string& what, bool positive) {
  if (!v.is_number_integer()) {
    return InvalidArgument(fmt::format("{}: {} must be an integer, got {}", origin, what, v.dump()));
  }
  const std::int64_t n = v.get<std::int64_t>();
  if (n < (positive ? 1 : 0) || n > (1 << 24)) {
    return InvalidArgument(
        fmt::format("{}: {} is {}, must be {} and at most 2^24", origin, what, n, positive ? "> 0" : ">= 0"));
  }
  return static_cast<int>(n);
}

Result<std::optional<int>> Integer(const Json& j, std::string_view origin, const char* key, bool required,
                                   bool positive) {
  auto it = j.find(key);
  if (it == j.end()) {
    if (required) return InvalidArgument(fmt::format("{}: \"{}\" is missing", origin, key));
    return std::optional<int>{};
  }
  SW_ASSIGN_OR_RETURN(const int n, AsInt(*it, origin, fmt::format("\"{}\"", key), positive));
  return std::optional<int>{n};
}

Result<std::vector<int>> NodeList(const Json& j, std::string_view origin, const char* key) {
  auto it = j.find(key);
  if (it == j.end()) return std::vector<int>{};
  if (!it->is_array()) return InvalidArgument(fmt::format("{}: \"{}\" must be an array of node indices", origin, key));
  std::vector<int> out;
  for (std::size_t i = 0; i < it->size(); ++i) {
    SW_ASSIGN_OR_RETURN(const int n, AsInt((*it)[i], origin, fmt::format("\"{}\"[{}]", key, i), false));
    out.push_back(n);
  }
  return out;
}

// Places one side: explicit nodes or consecutive from `first`.
Result<std::vector<GpuLocation>> PlaceSide(const FabricSpec& spec, int world, const std::vector<int>& explicit_nodes,
                                           int first, const char* list_key) {
  const int g = spec.gpus_per_node;
  std::vector<GpuLocation> out(static_cast<std::size_t>(world));
  if (explicit_nodes.empty()) {
    for (int r = 0; r < world; ++r) out[static_cast<std::size_t>(r)] = {first + r / g, r % g};
    return out;
  }
  if (explicit_nodes.size() != static_cast<std::size_t>(world)) {
    return InvalidArgument(
        fmt::format("fabric: \"{}\" lists {} ranks, the layout has {}", list_key, explicit_nodes.size(), world));
  }
  std::vector<int> used;
  for (int r = 0; r < world; ++r) {
    const int node = explicit_nodes[static_cast<std::size_t>(r)];
    if (static_cast<std::size_t>(node) >= used.size()) used.resize(static_cast<std::size_t>(node) + 1, 0);
    const int gpu = used[static_cast<std::size_t>(node)]++;
    if (gpu >= g) {
      return InvalidArgument(
          fmt::format("fabric: \"{}\" puts more than {} ranks on node {} (gpus_per_node is {})", list_key, g, node, g));
    }
    out[static_cast<std::size_t>(r)] = {node, gpu};
  }
  return out;
}

int NodesUsed(const std::vector<GpuLocation>& side) {
  int n = 0;
  for (const GpuLocation& l : side) n = std::max(n, l.node + 1);
  return n;
}

}  // namespace

Result<FabricSpec> ParseFabricSpec(std::string_view json_text, std::string_view origin) {
  Json j;
  try {
    j = Json::parse(json_text);
  } catch (const Json::parse_error& e) {
    return InvalidArgument(fmt::format("{}: not JSON: {}", origin, e.what()));
  }
  if (!j.is_object()) return InvalidArgument(fmt::format("{}: must be a JSON object", origin));
  for (const auto& [key, value] : j.items()) {
    if (std::find(std::begin(kKnownKeys), std::end(kKnownKeys), key) == std::end(kKnownKeys)) {
      std::string known;
      for (std::string_view k : kKnownKeys) known += (known.empty() ? "" : ", ") + std::string(k);
      return InvalidArgument(fmt::format("{}: unknown key \"{}\" (keys: {})", origin, key, known));
    }
  }
  FabricSpec s;
  SW_ASSIGN_OR_RETURN(const auto g, Integer(j, origin, "gpus_per_node", true, true));
  s.gpus_per_node = *g;
  SW_ASSIGN_OR_RETURN(const auto nic, Number(j, origin, "nic_bytes_per_second", true, true));
  s.nic_bytes_per_second = *nic;
  SW_ASSIGN_OR_RETURN(const auto nvl, Number(j, origin, "nvlink_bytes_per_second", true, true));
  s.nvlink_bytes_per_second = *nvl;
  SW_ASSIGN_OR_RETURN(const auto lat, Number(j, origin, "link_latency_seconds", false, false));
  s.link_latency_seconds = lat.value_or(0.0);
  SW_ASSIGN_OR_RETURN(s.node_nic_bytes_per_second, Number(j, origin, "node_nic_bytes_per_second", false, true));
  SW_ASSIGN_OR_RETURN(s.nodes, Integer(j, origin, "nodes", false, true));
  SW_ASSIGN_OR_RETURN(s.source_first_node, Integer(j, origin, "source_first_node", false, false));
  SW_ASSIGN_OR_RETURN(s.destination_first_node, Integer(j, origin, "destination_first_node", false, false));
  SW_ASSIGN_OR_RETURN(s.source_nodes, NodeList(j, origin, "source_nodes"));
  SW_ASSIGN_OR_RETURN(s.destination_nodes, NodeList(j, origin, "destination_nodes"));
  if (auto it = j.find("name"); it != j.end()) {
    if (!it->is_string()) return InvalidArgument(fmt::format("{}: \"name\" must be a string", origin));
    s.name = it->get<std::string>();
  }
  return s;
}

Result<FabricSpec> LoadFabricSpec(const std::string& path) {
  if (::access(path.c_str(), F_OK) != 0 && errno == ENOENT) {
    return NotFound(fmt::format("fabric file {} does not exist", path));
  }
  std::string text;
  if (Status s = ReadRegularFile(path, &text, kMaxFabricFileBytes); !s.ok()) {
    return IoError(fmt::format("fabric file: {}", s.message()));
  }
  return ParseFabricSpec(text, "fabric file " + path);
}

Result<FabricPlacement> PlaceRanks(const FabricSpec& spec, int src_world, int dst_world) {
  if (spec.gpus_per_node < 1) return InvalidArgument("fabric: \"gpus_per_node\" must be > 0");
  if (src_world < 0 || dst_world < 0) return InvalidArgument("fabric: negative world size");
  const int g = spec.gpus_per_node;
  FabricPlacement p;
  const int src_first = spec.source_first_node.value_or(0);
  SW_ASSIGN_OR_RETURN(p.source, PlaceSide(spec, src_world, spec.source_nodes, src_first, "source_nodes"));
  const int dst_first = spec.destination_first_node.value_or(
      spec.source_nodes.empty() ? src_first + (src_world + g - 1) / g : NodesUsed(p.source));
  SW_ASSIGN_OR_RETURN(p.destination,
                      PlaceSide(spec, dst_world, spec.destination_nodes, dst_first, "destination_nodes"));
  const int needed = std::max(NodesUsed(p.source), NodesUsed(p.destination));
  const std::int64_t gpus = static_cast<std::int64_t>(std::max(needed, spec.nodes.value_or(0))) * g;
  if (gpus > kMaxGpus) {
    return InvalidArgument(fmt::format(
        "fabric: {} nodes x {} GPUs (\"nodes\", \"gpus_per_node\", first nodes and node lists) is more than {} GPUs",
        std::max(needed, spec.nodes.value_or(0)), g, kMaxGpus));
  }
  if (spec.nodes) {
    if (needed > *spec.nodes) {
      const bool src_side = NodesUsed(p.source) >= NodesUsed(p.destination);
      const auto& side = src_side ? p.source : p.destination;
      int rank = 0;
      while (side[static_cast<std::size_t>(rank)].node < *spec.nodes) ++rank;
      return InvalidArgument(fmt::format(
          "fabric: \"nodes\" is {} but the layouts need {} nodes of {} GPUs ({} {} ranks, {} {} ranks): {} rank {} "
          "lands on node {}",
          *spec.nodes, needed, g, src_world, "source", dst_world, "destination", src_side ? "source" : "destination",
          rank, side[static_cast<std::size_t>(rank)].node));
    }
    p.nodes = *spec.nodes;
  } else {
    p.nodes = needed;
  }
  return p;
}

std::string_view LinkKindName(LinkKind kind) {
  switch (kind) {
    case LinkKind::kNicEgress:
      return "nic-out";
    case LinkKind::kNicIngress:
      return "nic-in";
    case LinkKind::kNvlinkEgress:
      return "nvlink-out";
    case LinkKind::kNvlinkIngress:
      return "nvlink-in";
    case LinkKind::kNodeEgress:
      return "node-out";
    case LinkKind::kNodeIngress:
      return "node-in";
  }
  return "?";
}

std::string LinkLoad::Name() const {
  return gpu < 0 ? fmt::format("{} node {}", LinkKindName(kind), node)
                 : fmt::format("{} node {} gpu {}", LinkKindName(kind), node, gpu);
}

Result<FabricPrediction> PredictTransfer(const TransferPlan& plan, const FabricSpec& spec) {
  FabricPrediction out;
  SW_ASSIGN_OR_RETURN(out.placement, PlaceRanks(spec, plan.src_world(), plan.dst_world()));
  const FabricPlacement& p = out.placement;
  const int g = spec.gpus_per_node;
  const std::size_t gpus = static_cast<std::size_t>(p.nodes) * static_cast<std::size_t>(g);
  const std::size_t nodes = static_cast<std::size_t>(p.nodes);
  // Dense link index: 4 per-GPU kinds, then 2 per-node kinds.
  const std::size_t link_count = 4 * gpus + 2 * nodes;
  auto gpu_link = [&](LinkKind k, const GpuLocation& l) {
    return static_cast<std::size_t>(k) * gpus + static_cast<std::size_t>(l.node) * static_cast<std::size_t>(g) +
           static_cast<std::size_t>(l.gpu);
  };
  auto node_link = [&](LinkKind k, int node) {
    return 4 * gpus + (k == LinkKind::kNodeEgress ? 0 : nodes) + static_cast<std::size_t>(node);
  };
  auto bandwidth = [&](std::size_t link) {
    if (link >= 4 * gpus) return *spec.node_nic_bytes_per_second;
    const auto kind = static_cast<LinkKind>(link / gpus);
    return kind == LinkKind::kNicEgress || kind == LinkKind::kNicIngress ? spec.nic_bytes_per_second
                                                                         : spec.nvlink_bytes_per_second;
  };
  const bool node_limit = spec.node_nic_bytes_per_second.has_value();

  // Network buckets by round.
  const std::uint32_t rounds = plan.rounds();
  std::vector<std::vector<std::size_t>> by_round(rounds);
  for (std::size_t i = 0; i < plan.buckets().size(); ++i) {
    const Bucket& b = plan.buckets()[i];
    if (b.delivery == DeliveryKind::kLocal) {
      out.local_bytes += b.bytes * plan.dst_groups()[b.dst_group].size();
    } else {
      by_round[b.round].push_back(i);
    }
  }
  std::vector<std::uint64_t> total(link_count, 0), in_round(link_count, 0);
  std::vector<std::uint32_t> bound(link_count, 0);
  std::vector<std::size_t> touched;
  std::vector<std::size_t> round_bottleneck;  // dense link id per round
  out.rounds.reserve(rounds);
  auto add = [&](std::size_t link, std::uint64_t bytes) {
    if (in_round[link] == 0) touched.push_back(link);
    in_round[link] += bytes;
  };
  for (std::uint32_t r = 0; r < rounds; ++r) {
    RoundPrediction rp;
    for (std::size_t i : by_round[r]) {
      const Bucket& b = plan.buckets()[i];
      const GpuLocation& s = p.source[b.src_rank];
      for (std::uint32_t d : plan.dst_groups()[b.dst_group]) {
        const GpuLocation& t = p.destination[d];
        rp.bytes += b.bytes;
        if (b.bytes == 0) continue;
        if (s.node == t.node) {
          out.nvlink_bytes += b.bytes;
          add(gpu_link(LinkKind::kNvlinkEgress, s), b.bytes);
          add(gpu_link(LinkKind::kNvlinkIngress, t), b.bytes);
        } else {
          out.nic_bytes += b.bytes;
          add(gpu_link(LinkKind::kNicEgress, s), b.bytes);
          add(gpu_link(LinkKind::kNicIngress, t), b.bytes);
          if (node_limit) {
            add(node_link(LinkKind::kNodeEgress, s.node), b.bytes);
            add(node_link(LinkKind::kNodeIngress, t.node), b.bytes);
          }
        }
      }
    }
    // Deterministic: the lowest link id wins ties.
    std::sort(touched.begin(), touched.end());
    std::size_t worst = link_count;
    for (std::size_t link : touched) {
      const double t = static_cast<double>(in_round[link]) / bandwidth(link) + spec.link_latency_seconds;
      if (worst == link_count || t > rp.seconds) {
        rp.seconds = t;
        worst = link;
      }
      total[link] += in_round[link];
      in_round[link] = 0;
    }
    touched.clear();
    if (worst != link_count) ++bound[worst];
    round_bottleneck.push_back(worst);
    out.predicted_seconds += rp.seconds;
    out.rounds.push_back(rp);
  }

  // Links that carried bytes, by decreasing seconds.
  std::vector<std::size_t> used;
  for (std::size_t link = 0; link < link_count; ++link) {
    if (total[link] > 0) used.push_back(link);
  }
  std::vector<double> seconds(link_count, 0);
  for (std::size_t link : used) seconds[link] = static_cast<double>(total[link]) / bandwidth(link);
  std::stable_sort(used.begin(), used.end(), [&](std::size_t a, std::size_t b) { return seconds[a] > seconds[b]; });
  std::vector<std::size_t> position(link_count, 0);
  for (std::size_t i = 0; i < used.size(); ++i) {
    const std::size_t link = used[i];
    position[link] = i;
    LinkLoad l;
    if (link >= 4 * gpus) {
      l.kind = link < 4 * gpus + nodes ? LinkKind::kNodeEgress : LinkKind::kNodeIngress;
      l.node = static_cast<int>((link - 4 * gpus) % nodes);
    } else {
      l.kind = static_cast<LinkKind>(link / gpus);
      l.node = static_cast<int>((link % gpus) / static_cast<std::size_t>(g));
      l.gpu = static_cast<int>(link % static_cast<std::size_t>(g));
    }
    l.bytes = total[link];
    l.seconds = seconds[link];
    l.rounds_bound = bound[link];
    for (int r = 0; r < plan.src_world(); ++r) {
      const GpuLocation& s = p.source[static_cast<std::size_t>(r)];
      if (s.node == l.node && (l.gpu < 0 || s.gpu == l.gpu)) l.source_ranks.push_back(r);
    }
    for (int r = 0; r < plan.dst_world(); ++r) {
      const GpuLocation& t = p.destination[static_cast<std::size_t>(r)];
      if (t.node == l.node && (l.gpu < 0 || t.gpu == l.gpu)) l.destination_ranks.push_back(r);
    }
    out.link_bound_seconds = std::max(out.link_bound_seconds, l.seconds);
    const bool ingress =
        l.kind == LinkKind::kNicIngress || l.kind == LinkKind::kNvlinkIngress || l.kind == LinkKind::kNodeIngress;
    if (ingress && (out.ingress_bound_rank < 0 || l.seconds > out.ingress_bound_seconds)) {
      out.ingress_bound_seconds = l.seconds;
      out.ingress_bound_bytes = l.bytes;
      out.ingress_bound_rank = l.destination_ranks.empty() ? -1 : l.destination_ranks.front();
    }
    out.links.push_back(std::move(l));
  }
  for (std::uint32_t r = 0; r < rounds; ++r) {
    out.rounds[r].bottleneck = round_bottleneck[r] == link_count ? 0 : position[round_bottleneck[r]];
  }
  return out;
}

}  // namespace shardwire
