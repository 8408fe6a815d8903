// bench/plan_scale: plans real large-model configs at cluster scale and prints the
// planner's cost beside the cost of the transfer it plans (same run).
//
// Usage: plan_scale [--models-dir DIR] [config.json ...]
// Default: DeepSeek-V3 and Kimi-K2-Instruct from ../shared/models, each planned from a
// 256-rank trainer (FSDP x EP, fsdp=256,ep=8) to 16 engines x 8 ranks, once as TP
// (tp=8,dp=16) and once as TP x EP (tp=8,ep=8,dp=16).
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <xxhash.h>

#include "shardwire/model_config.h"
#include "shardwire/model_layouts.h"
#include "shardwire/plan_codec.h"
#include "shardwire/planner.h"

namespace {

using Clock = std::chrono::steady_clock;
double Since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

double PeakRssGb() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) * 1024 / 1e9;
}

// Minor page faults of this process so far: each is a first touch of a page the kernel must
// zero and map, which costs ~10x more under a shadow-paging hypervisor than on bare metal.
long MinorFaults() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_minflt;
}

// Reference: single-thread memcpy GB/s on this machine, measured now (256 MiB).
double MemcpyGbps() {
  const std::size_t n = 256u << 20;
  std::vector<char> a(n, 1), b(n, 0);
  double best = 0;
  for (int i = 0; i < 3; ++i) {
    const auto t = Clock::now();
    std::memcpy(b.data(), a.data(), n);
    best = std::max(best, static_cast<double>(n) / Since(t) / 1e9);
  }
  return best;
}

std::string Gb(double bytes) { return fmt::format("{:.2f} GB", bytes / 1e9); }

int PlanOne(const shardwire::ModelDescription& model, const std::string& name, const std::string& from,
            const std::string& to, double memcpy_gbps) {
  using namespace shardwire;
  const long faults0 = MinorFaults();
  const auto t0 = Clock::now();
  auto src = MakeLayoutFromString(model, from);
  auto dst = MakeLayoutFromString(model, to);
  if (!src.ok() || !dst.ok()) {
    fmt::print(stderr, "{}: {}\n", name, (!src.ok() ? src.status() : dst.status()).ToString());
    return 1;
  }
  const double layout_s = Since(t0);
  const long faults1 = MinorFaults();
  const auto t1 = Clock::now();
  auto plan = PlanTransfer(*src, *dst);
  if (!plan.ok()) {
    fmt::print(stderr, "{}: {}\n", name, plan.status().ToString());
    return 1;
  }
  const double plan_s = Since(t1);
  const long faults2 = MinorFaults();
  const auto t2 = Clock::now();
  std::size_t max_src_part = 0, max_dst_part = 0;
  // XXH3-64 over every serialised part in rank order: two builds that print the same digest
  // planned the same moves, buckets and rounds (a check for planner changes meant to be faster only).
  const std::unique_ptr<XXH3_state_t, decltype(&XXH3_freeState)> state(XXH3_createState(), &XXH3_freeState);
  XXH3_state_t* digest = state.get();
  XXH3_64bits_reset(digest);
  for (int r = 0; r < plan->src_world(); ++r) {
    const auto part = SerializePlanPart(*plan, PlanSide::kSource, r);
    XXH3_64bits_update(digest, part.data(), part.size());
    max_src_part = std::max(max_src_part, part.size());
  }
  for (int r = 0; r < plan->dst_world(); ++r) {
    const auto part = SerializePlanPart(*plan, PlanSide::kDestination, r);
    XXH3_64bits_update(digest, part.data(), part.size());
    max_dst_part = std::max(max_dst_part, part.size());
  }
  const std::uint64_t plan_digest = XXH3_64bits_digest(digest);
  const double serialize_s = Since(t2);
  const auto sent = plan->BytesSentPerSource();
  const auto received = plan->BytesReceivedPerDestination();
  const TrafficStats s = Summarize(sent), d = Summarize(received);
  std::size_t broadcasts = 0;
  for (const Bucket& b : plan->buckets()) broadcasts += b.delivery == DeliveryKind::kBroadcast;
  const double bytes = static_cast<double>(plan->total_bytes());
  // The transfer this plan describes, at one core's memcpy speed per destination rank
  // (the best a destination can absorb here): the time the plan is amortised against.
  const double transfer_s = static_cast<double>(d.max) / (memcpy_gbps * 1e9);
  fmt::print("{} : {} -> {}\n", name, src->description(), dst->description());
  fmt::print("  tensors {}, source ranks {}, destination ranks {}, bytes delivered {}\n", model.tensors.size(),
             plan->src_world(), plan->dst_world(), Gb(bytes));
  fmt::print("  time: layouts {:.3f} s, plan {:.3f} s, all {} parts serialised {:.3f} s\n", layout_s, plan_s,
             plan->src_world() + plan->dst_world(), serialize_s);
  fmt::print("  page faults: layouts {}, plan {}\n", faults1 - faults0, faults2 - faults1);
  fmt::print("  moves: {} runs -> {} after coalescing; {} buckets ({} broadcast), {} rounds, {} destination groups\n",
             plan->runs_before_coalescing(), plan->moves().size(), plan->buckets().size(), broadcasts, plan->rounds(),
             plan->dst_groups().size());
  fmt::print("  send per source      min {} mean {} max {}  (max/mean {:.3f})\n", Gb(static_cast<double>(s.min)),
             Gb(s.mean), Gb(static_cast<double>(s.max)), s.mean > 0 ? static_cast<double>(s.max) / s.mean : 0);
  fmt::print("  receive per dest     min {} mean {} max {}\n", Gb(static_cast<double>(d.min)), Gb(d.mean),
             Gb(static_cast<double>(d.max)));
  fmt::print("  largest serialised part: source {:.1f} KiB, destination {:.1f} KiB (goal <= 1024 KiB)\n",
             static_cast<double>(max_src_part) / 1024, static_cast<double>(max_dst_part) / 1024);
  fmt::print("  plan digest (XXH3-64 of all serialised parts): {:016x}\n", plan_digest);
  fmt::print("  peak RSS so far {:.2f} GB (goal < 2 GB); plan time {:.3f} s (goal < 1 s) vs the transfer it plans at "
             "memcpy speed {:.1f} s -> plan/transfer = {:.4f}\n\n",
             PeakRssGb(), plan_s, transfer_s, transfer_s > 0 ? plan_s / transfer_s : 0);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  namespace fs = std::filesystem;
  std::string models_dir = (fs::path(SHARDWIRE_SOURCE_DIR).parent_path() / "shared" / "models").string();
  std::vector<std::string> configs;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--models-dir") == 0 && i + 1 < argc) {
      models_dir = argv[++i];
    } else {
      configs.push_back(argv[i]);
    }
  }
  if (configs.empty()) {
    configs = {models_dir + "/DeepSeek-V3/config.json", models_dir + "/Kimi-K2-Instruct/config.json"};
  }
  const double memcpy_gbps = MemcpyGbps();
  fmt::print("reference: memcpy, 1 thread, 256 MiB: {:.2f} GB/s\n\n", memcpy_gbps);
  int failures = 0;
  for (const std::string& path : configs) {
    auto config = shardwire::LoadModelConfig(path);
    if (!config.ok()) {
      fmt::print(stderr, "{}\n", config.status().ToString());
      ++failures;
      continue;
    }
    const auto t = Clock::now();
    auto model = shardwire::DescribeModel(*config);
    if (!model.ok()) {
      fmt::print(stderr, "{}\n", model.status().ToString());
      ++failures;
      continue;
    }
    const std::string name = fs::path(path).parent_path().filename().string();
    fmt::print("{}: described {} tensors in {:.3f} s\n", name, model->tensors.size(), Since(t));
    failures += PlanOne(*model, name, "fsdp=256,ep=8", "tp=8,dp=16", memcpy_gbps);
    failures += PlanOne(*model, name, "fsdp=256,ep=8", "tp=8,ep=8,dp=16", memcpy_gbps);
  }
  return failures == 0 ? 0 : 1;
}
