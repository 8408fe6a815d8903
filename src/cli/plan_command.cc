#include "cli/plan_command.h"

#include <algorithm>
#include <charconv>
#include <chrono>
#include <fstream>
#include <map>
#include <optional>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli/byte_units.h"
#include "cli/model_rules_option.h"
#include "cli/option_checks.h"
#include "cli/plan_svg.h"
#include "shardwire/fabric_model.h"
#include "shardwire/model_config.h"
#include "shardwire/model_layouts.h"
#include "shardwire/plan_codec.h"
#include "shardwire/planner.h"
#include "shardwire/traffic_matrix.h"

namespace shardwire::cli {
namespace {

constexpr const char* kLayoutHelp = R"(Layout strings (comma-separated key=value):
  trainers:  fsdp=N | hsdp=RxS  [,tp=T] [,ep=E] [,pp=P]    e.g. fsdp=8  hsdp=2x8  fsdp=64,tp=4  fsdp=256,ep=8
  engines:   tp=T [,ep=E (E = 1 or T)] [,pp=P] [,dp=replicas]   e.g. tp=4,dp=2  tp=8,ep=8,dp=16  pp=2,tp=4)";

struct Args {
  std::string config;
  std::string from;
  std::string to;
  int layers = 0;
  bool json = false;
  std::uint64_t bucket_mib = 64;
  std::string concurrency = "4";  // K, or "auto" (with --fabric: the K the fabric model predicts fastest)
  std::string replica_policy = "spread";
  std::string save;
  std::string fabric;
  std::string svg;
};

constexpr int kBottleneckLinks = 5;  // links listed as the bottleneck
// --concurrency auto keeps the smallest K whose prediction is within this factor of the fastest:
// the fabric model has no incast term, so beyond that a larger K (more writers into one NIC at
// once) buys almost nothing on paper and costs congestion on a real fabric.
constexpr double kAutoConcurrencySlack = 1.05;
constexpr int kSvgMaxCells = 256;    // heat map cells per axis

std::string RankList(const std::vector<int>& ranks) {
  if (ranks.empty()) return "-";
  std::string s;
  for (std::size_t i = 0; i < ranks.size() && i < 8; ++i) s += (i ? "," : "") + std::to_string(ranks[i]);
  return ranks.size() > 8 ? s + ",..." : s;
}

nlohmann::json FabricJson(const FabricSpec& spec, const FabricPrediction& p) {
  nlohmann::json links = nlohmann::json::array();
  for (std::size_t i = 0; i < p.links.size() && i < static_cast<std::size_t>(kBottleneckLinks); ++i) {
    const LinkLoad& l = p.links[i];
    links.push_back({{"link", l.Name()},
                     {"kind", LinkKindName(l.kind)},
                     {"node", l.node},
                     {"gpu", l.gpu},
                     {"bytes", l.bytes},
                     {"seconds", l.seconds},
                     {"rounds_bound", l.rounds_bound},
                     {"source_ranks", l.source_ranks},
                     {"destination_ranks", l.destination_ranks}});
  }
  return {{"name", spec.name},
          {"nodes", p.placement.nodes},
          {"gpus_per_node", spec.gpus_per_node},
          {"nic_bytes_per_second", spec.nic_bytes_per_second},
          {"nvlink_bytes_per_second", spec.nvlink_bytes_per_second},
          {"link_latency_seconds", spec.link_latency_seconds},
          {"predicted_seconds", p.predicted_seconds},
          {"rounds", p.rounds.size()},
          {"link_bound_seconds", p.link_bound_seconds},
          {"ingress_bound_seconds", p.ingress_bound_seconds},
          {"ingress_bound_rank", p.ingress_bound_rank},
          {"ingress_bound_bytes", p.ingress_bound_bytes},
          {"prediction_over_ingress_bound",
           p.ingress_bound_seconds > 0 ? p.predicted_seconds / p.ingress_bound_seconds : 0.0},
          {"nic_bytes", p.nic_bytes},
          {"nvlink_bytes", p.nvlink_bytes},
          {"local_bytes", p.local_bytes},
          {"bottleneck_links", links}};
}

void PrintFabric(const FabricSpec& spec, const FabricPrediction& p) {
  fmt::print("fabric      {}{}{} nodes x {} GPUs; NIC {:.1f} GB/s per GPU, NVLink {:.1f} GB/s, latency {} s\n",
             spec.name, spec.name.empty() ? "" : ": ", p.placement.nodes, spec.gpus_per_node,
             spec.nic_bytes_per_second / 1e9, spec.nvlink_bytes_per_second / 1e9, spec.link_latency_seconds);
  fmt::print("traffic     NIC {:.3f} GB, NVLink {:.3f} GB, LOCAL {:.3f} GB\n", static_cast<double>(p.nic_bytes) / 1e9,
             static_cast<double>(p.nvlink_bytes) / 1e9, static_cast<double>(p.local_bytes) / 1e9);
  const double ratio = p.ingress_bound_seconds > 0 ? p.predicted_seconds / p.ingress_bound_seconds : 0;
  fmt::print("prediction  {:.3f} s in {} rounds (round-synchronous); link bound {:.3f} s\n", p.predicted_seconds,
             p.rounds.size(), p.link_bound_seconds);
  fmt::print("ingress     bound {:.3f} s (destination rank {}: {:.3f} GB in); prediction / ingress bound = {:.3f}\n",
             p.ingress_bound_seconds, p.ingress_bound_rank, static_cast<double>(p.ingress_bound_bytes) / 1e9, ratio);
  fmt::print("bottleneck  busiest links (bytes / bandwidth; rounds whose time the link set):\n");
  for (std::size_t i = 0; i < p.links.size() && i < static_cast<std::size_t>(kBottleneckLinks); ++i) {
    const LinkLoad& l = p.links[i];
    fmt::print("  {:<22} {:>10.3f} GB {:>8.3f} s  sets {:>4} of {} rounds  source ranks {}  destination ranks {}\n",
               l.Name(), static_cast<double>(l.bytes) / 1e9, l.seconds, l.rounds_bound, p.rounds.size(),
               RankList(l.source_ranks), RankList(l.destination_ranks));
  }
  // The links that set the most round times (where the rounds lose against the bound).
  std::vector<const LinkLoad*> setters;
  for (const LinkLoad& l : p.links) {
    if (l.rounds_bound > 0) setters.push_back(&l);
  }
  std::stable_sort(setters.begin(), setters.end(),
                   [](const LinkLoad* a, const LinkLoad* b) { return a->rounds_bound > b->rounds_bound; });
  if (!setters.empty()) fmt::print("rounds      links that set the most round times:\n");
  for (std::size_t i = 0; i < setters.size() && i < static_cast<std::size_t>(kBottleneckLinks); ++i) {
    const LinkLoad& l = *setters[i];
    fmt::print("  {:<22} sets {:>4} of {} rounds; {:.3f} GB, {:.3f} s in all  source ranks {}  destination ranks {}\n",
               l.Name(), l.rounds_bound, p.rounds.size(), static_cast<double>(l.bytes) / 1e9, l.seconds,
               RankList(l.source_ranks), RankList(l.destination_ranks));
  }
}

nlohmann::json Traffic(const std::vector<std::uint64_t>& per_rank) {
  const TrafficStats s = Summarize(per_rank);
  return {{"min", s.min}, {"mean", s.mean}, {"max", s.max}};
}

Status Run(const Args& a) {
  // The fabric file is read and checked before anything else is computed.
  std::optional<FabricSpec> fabric;
  if (!a.fabric.empty()) {
    Result<FabricSpec> spec = LoadFabricSpec(a.fabric);
    if (!spec.ok()) return spec.status().WithContext("--fabric");
    fabric = std::move(spec).value();
  }
  SW_ASSIGN_OR_RETURN(const ModelConfig config, LoadModelConfig(a.config));
  SW_ASSIGN_OR_RETURN(ModelDescription model, DescribeModel(config));
  if (a.layers > 0) {
    SW_ASSIGN_OR_RETURN(model, WithLayers(model, a.layers));
  }
  Result<Layout> src = MakeLayoutFromString(model, a.from);
  if (!src.ok()) return src.status().WithContext("--from");
  Result<Layout> dst = MakeLayoutFromString(model, a.to);
  if (!dst.ok()) return dst.status().WithContext("--to");
  if (fabric) {
    const Result<FabricPlacement> placed = PlaceRanks(*fabric, src->world_size(), dst->world_size());
    if (!placed.ok()) return placed.status().WithContext("--fabric " + a.fabric);
  }
  PlanOptions options;
  options.bucket_bytes = a.bucket_mib << 20;
  options.replica_policy = a.replica_policy == "first" ? ReplicaPolicy::kFirstReplica : ReplicaPolicy::kSpread;
  // K: given, or (auto) each power of two up to the larger world (a larger K changes nothing),
  // planned and predicted on the fabric, keeping the smallest K within kAutoConcurrencySlack of
  // the fastest.
  std::vector<std::pair<int, double>> tried;  // (K, predicted seconds), with auto
  if (a.concurrency == "auto") {
    if (!fabric) return InvalidArgument("--concurrency auto needs --fabric (K is chosen by the predicted time)");
    const int most = std::max(src->world_size(), dst->world_size());
    double best = 0;
    for (int k = 1;; k *= 2) {
      options.max_concurrency = k;
      SW_ASSIGN_OR_RETURN(const TransferPlan candidate, PlanTransfer(*src, *dst, options));
      Result<FabricPrediction> p = PredictTransfer(candidate, *fabric);
      if (!p.ok()) return p.status().WithContext("--fabric " + a.fabric);
      tried.emplace_back(k, p->predicted_seconds);
      if (tried.size() == 1 || p->predicted_seconds < best) best = p->predicted_seconds;
      if (k >= most) break;
    }
    for (const auto& [k, predicted] : tried) {
      if (predicted <= best * kAutoConcurrencySlack) {
        options.max_concurrency = k;
        break;
      }
    }
  } else {
    int k = 0;
    const char* end = a.concurrency.data() + a.concurrency.size();
    const auto [at, ec] = std::from_chars(a.concurrency.data(), end, k);
    if (ec != std::errc() || at != end || k < 1 || k > 4096) {
      return InvalidArgument(
          fmt::format("--concurrency: '{}' is neither an integer in [1, 4096] nor 'auto'", a.concurrency));
    }
    options.max_concurrency = k;
  }
  const auto t0 = std::chrono::steady_clock::now();
  SW_ASSIGN_OR_RETURN(const TransferPlan plan, PlanTransfer(*src, *dst, options));
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  std::map<DeliveryKind, std::pair<std::uint64_t, std::uint64_t>> by_delivery;  // buckets, bytes
  for (const Bucket& b : plan.buckets()) {
    auto& [count, bytes] = by_delivery[b.delivery];
    ++count;
    bytes += b.bytes * plan.dst_groups()[b.dst_group].size();
  }
  std::size_t max_src_part = 0, max_dst_part = 0;
  for (int r = 0; r < plan.src_world(); ++r) {
    max_src_part = std::max(max_src_part, SerializePlanPart(plan, PlanSide::kSource, r).size());
  }
  for (int r = 0; r < plan.dst_world(); ++r) {
    max_dst_part = std::max(max_dst_part, SerializePlanPart(plan, PlanSide::kDestination, r).size());
  }
  if (!a.save.empty()) {
    const auto blob = SerializePlan(plan);
    FILE* f = std::fopen(a.save.c_str(), "wb");
    if (f == nullptr || std::fwrite(blob.data(), 1, blob.size(), f) != blob.size()) {
      if (f) std::fclose(f);
      return IoError("cannot write " + a.save);
    }
    std::fclose(f);
  }
  std::optional<FabricPrediction> prediction;
  if (fabric) {
    Result<FabricPrediction> p = PredictTransfer(plan, *fabric);
    if (!p.ok()) return p.status().WithContext("--fabric " + a.fabric);
    prediction = std::move(p).value();
  }
  if (!a.svg.empty()) {
    const TrafficMatrix matrix = ComputeTrafficMatrix(plan, kSvgMaxCells, kSvgMaxCells);
    const std::string title =
        fmt::format("{}: {} -> {}", config.architecture.empty() ? config.model_type : config.architecture,
                    src->description(), dst->description());
    const std::string svg = PlanSvg(matrix, prediction ? &*prediction : nullptr, title);
    std::ofstream out(a.svg, std::ios::binary | std::ios::trunc);
    out << svg;
    out.close();
    if (!out) return IoError("cannot write --svg " + a.svg);
  }
  const auto sent = plan.BytesSentPerSource();
  const auto received = plan.BytesReceivedPerDestination();
  if (a.json) {
    nlohmann::json j{{"model", config.architecture.empty() ? config.model_type : config.architecture},
                     {"tensors", model.tensors.size()},
                     {"from", src->description()},
                     {"to", dst->description()},
                     {"source_ranks", plan.src_world()},
                     {"destination_ranks", plan.dst_world()},
                     {"plan_seconds", seconds},
                     {"bytes_delivered", plan.total_bytes()},
                     {"runs_before_coalescing", plan.runs_before_coalescing()},
                     {"moves", plan.moves().size()},
                     {"buckets", plan.buckets().size()},
                     {"rounds", plan.rounds()},
                     {"destination_groups", plan.dst_groups().size()},
                     {"sent_per_source", Traffic(sent)},
                     {"received_per_destination", Traffic(received)},
                     {"max_source_part_bytes", max_src_part},
                     {"max_destination_part_bytes", max_dst_part}};
    j["concurrency"] = options.max_concurrency;
    if (!tried.empty()) {
      nlohmann::json t = nlohmann::json::array();
      for (const auto& [k, predicted] : tried) t.push_back({{"concurrency", k}, {"predicted_seconds", predicted}});
      j["concurrency_tried"] = t;
    }
    if (prediction) j["fabric"] = FabricJson(*fabric, *prediction);
    for (const auto& [kind, cb] : by_delivery) {
      j["deliveries"][std::string(DeliveryKindName(kind))] = {{"buckets", cb.first}, {"bytes", cb.second}};
    }
    fmt::print("{}\n", j.dump(2));
    return Status::Ok();
  }
  fmt::print("model       {} ({} tensors, {} per copy)\n",
             config.architecture.empty() ? config.model_type : config.architecture, model.tensors.size(),
             FormatBytes(static_cast<double>(model.total_bytes())));
  fmt::print("from        {} ({} ranks)\nto          {} ({} ranks)\n", src->description(), plan.src_world(),
             dst->description(), plan.dst_world());
  fmt::print(
      "plan        {:.3f} s; {} contiguous runs -> {} moves; {} buckets in {} rounds (K={}); {} destination groups\n",
      seconds, plan.runs_before_coalescing(), plan.moves().size(), plan.buckets().size(), plan.rounds(),
      options.max_concurrency, plan.dst_groups().size());
  if (!tried.empty()) {
    std::string list;
    for (const auto& [k, predicted] : tried) list += fmt::format("{}K={} {:.3f} s", list.empty() ? "" : ", ", k, predicted);
    fmt::print("concurrency auto: K={}, the smallest within {:.0f}% of the fastest prediction of {}\n",
               options.max_concurrency, (kAutoConcurrencySlack - 1) * 100, list);
  }
  for (const auto& [kind, cb] : by_delivery) {
    fmt::print("  {:<10} {} buckets, {} delivered\n", DeliveryKindName(kind), cb.first,
               FormatBytes(static_cast<double>(cb.second)));
  }
  const TrafficStats s = Summarize(sent), d = Summarize(received);
  fmt::print("sent        per source rank: min {} mean {} max {}\n", FormatBytes(static_cast<double>(s.min)),
             FormatBytes(s.mean), FormatBytes(static_cast<double>(s.max)));
  fmt::print("received    per destination rank: min {} mean {} max {}\n", FormatBytes(static_cast<double>(d.min)),
             FormatBytes(d.mean), FormatBytes(static_cast<double>(d.max)));
  fmt::print("serialised  largest part: source {:.1f} KiB, destination {:.1f} KiB\n",
             static_cast<double>(max_src_part) / 1024, static_cast<double>(max_dst_part) / 1024);
  if (prediction) PrintFabric(*fabric, *prediction);
  return Status::Ok();
}

}  // namespace

void AddPlanCommand(CLI::App& app, int* exit_code) {
  auto a = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand("plan", "plan the byte moves between two layouts of a model and summarise them");
  cmd->footer(kLayoutHelp);
  cmd->add_option("--config", a->config, "Hugging Face config.json of the model")->required();
  cmd->add_option("--from", a->from, "source layout, e.g. fsdp=256,ep=8")->required();
  cmd->add_option("--to", a->to, "destination layout, e.g. tp=8,ep=8,dp=16")->required();
  cmd->add_option("--layers", a->layers, "override the number of decoder layers")->check(NonNegativeNumber());
  cmd->add_flag("--json", a->json, "print the summary as JSON");
  cmd->add_option("--bucket-mib", a->bucket_mib, "bucket size cap, MiB")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--concurrency", a->concurrency,
                  "K: peers a rank talks to at once (1-4096), or 'auto' with --fabric: the smallest K (powers of "
                  "two up to the larger world) whose plan the fabric model predicts within 5% of the fastest")
      ->capture_default_str();
  cmd->add_option("--replica-policy", a->replica_policy, "spread (balance over replicas) or first (one replica sends)")
      ->capture_default_str()
      ->check(CLI::IsMember({"spread", "first"}));
  AddModelRulesOption(cmd);
  cmd->add_option("--save", a->save, "write the serialised plan to this file");
  cmd->add_option("--fabric", a->fabric,
                  "JSON fabric file (GPUs per node, NIC and NVLink bytes/s, ...): predict the push's time, the "
                  "ingress bound and the bottleneck links (docs/planner.md, Fabric model)");
  cmd->add_option("--svg", a->svg,
                  "write an SVG heat map of bytes per (source rank, destination rank), with the busiest links "
                  "when --fabric is given");
  cmd->callback([a, exit_code] {
    const Status status = Run(*a);
    if (!status.ok()) {
      fmt::print(stderr, "shardwire plan: {}\n", status.ToString());
      *exit_code = 1;
    }
  });
}

}  // namespace shardwire::cli
