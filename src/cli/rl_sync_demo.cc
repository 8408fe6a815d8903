// `shardwire demo rl-sync`: the parent process. It checks the input, hosts the
// rendezvous, starts the trainer and engine processes, prints each step's figures as
// the processes report them, and cleans up its children on every path.
#include "cli/rl_sync_demo.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include <nlohmann/json.hpp>
#include "cli/model_rules_option.h"
#include "cli/option_checks.h"

#include "cli/byte_units.h"
#include "cli/child_processes.h"
#include "cli/demo_checkpoint.h"
#include "cli/engine_shards.h"
#include "cli/memcpy_reference.h"
#include "cli/metrics_option.h"
#include "cli/rl_sync_protocol.h"
#include "shardwire/agent.h"
#include "shardwire/coordinator.h"
#include "shardwire/model_layouts.h"
#include "shardwire/planner.h"
#include "shardwire/push_conversion.h"

namespace shardwire::cli {
namespace {

using nlohmann::json;

constexpr double kPollSlice_s = 0.25;

// Engine processes that died during the run (a dead engine is reported, not fatal: the
// trainers push on to the others and the engine misses every later version).
struct DeadEngines {
  std::map<std::string, std::string> why;  // label -> how it ended
  bool Contains(const std::string& label) const { return why.count(label) > 0; }
};

// With --restart-engines: restarts engine processes that die, as an orchestrator would.
struct EngineRestarts {
  bool enabled = false;
  std::function<Status(const std::string& label)> respawn;  // starts a catching-up replacement
  std::map<std::string, int> count;                         // label -> restarts so far
};
// A worker's exit status 3 means it found bytes that differ from their recomputation
// (rl_sync_worker.cc exits so on kVerificationFailed): that fails the run, unlike an engine
// that dies (the trainers push on to the others).
bool FailedVerification(const ChildExit& e) { return e.signal == 0 && e.exit_code == 3; }

// Waits for one worker's report, watching for children that die and for Ctrl-C. A trainer
// that dies ends the run; an engine that dies is restarted (--restart-engines) or recorded
// in `dead` (nullopt: `key`'s engine is among them, no report will come). `skipped`, when
// it returns true, ends the wait with nullopt too (the engine did not take part in the step).
Result<std::optional<json>> AwaitReport(Rendezvous& rendezvous, ChildProcesses& children, const std::string& key,
                                        const std::string& label, DeadEngines& dead, EngineRestarts& restarts,
                                        double timeout_s, const std::function<bool()>& skipped = {}) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  while (true) {
    if (ChildProcesses::InterruptRequested()) return ChildProcesses::Interrupted();
    if (dead.Contains(label)) return std::optional<json>{};
    auto value = GetString(rendezvous, key, kPollSlice_s);
    if (value.ok()) return std::optional<json>(json::parse(*value, nullptr, /*allow_exceptions=*/false));
    if (value.status().code() != ErrorCode::kTimedOut) return value.status();
    if (skipped && skipped()) return std::optional<json>{};
    std::vector<ChildExit> exits = children.ReapExited();
    auto trainer_failed = [](const ChildExit& e) { return !e.ok() && e.label.rfind("engine", 0) != 0; };
    if (std::any_of(exits.begin(), exits.end(), trainer_failed)) {
      // A trainer that failed may have failed because another one died (a push waits for its
      // peers' ROUND_DONE, amaxes and addends): give the others a moment to show it, and name a
      // trainer killed by a signal first (the cause), then the ones that failed after it.
      const auto grace = std::chrono::steady_clock::now() + std::chrono::seconds(1);
      while (std::chrono::steady_clock::now() < grace) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        for (ChildExit& e : children.ReapExited()) exits.push_back(std::move(e));
      }
      std::vector<ChildExit> failed;
      std::copy_if(exits.begin(), exits.end(), std::back_inserter(failed), trainer_failed);
      std::stable_partition(failed.begin(), failed.end(), [](const ChildExit& e) { return e.signal != 0; });
      std::string why;
      for (const ChildExit& e : failed) why += (why.empty() ? "" : "; then ") + e.Describe();
      return Internal(why);
    }
    for (const ChildExit& e : exits) {
      if (e.ok()) continue;
      if (FailedVerification(e)) return VerificationFailed(e.Describe());
      if (restarts.enabled) {
        SW_RETURN_IF_ERROR(restarts.respawn(e.label));
        fmt::print("            {}: restarted it (restart {}); it catches up from the live engines, then joins\n",
                   e.Describe(), ++restarts.count[e.label]);
        continue;
      }
      dead.why[e.label] = e.Describe();
      fmt::print("            {}: the trainers push on to the other engines\n", e.Describe());
    }
    if (std::chrono::steady_clock::now() > deadline) {
      return TimedOut(fmt::format("no report under {} after {:.0f} s", key, timeout_s));
    }
  }
}

struct StepFigures {
  std::uint64_t bytes = 0;
  std::uint64_t descriptors = 0;
  double hold_s = 0;                     // trainer rank 0 held this push for catching-up engines
  std::string held_for, hold_expired;    // their engine ranks ("3", "1, 3")
  std::uint64_t rows = 0;                // contiguous rows inside those descriptors
  std::uint64_t faults = 0;              // page faults of the trainer processes during the push
  std::uint64_t converted_bytes = 0;     // produced by conversion (FP8 weights, scales, casts)
  double convert_s = 0;                  // slowest trainer's conversion time (overlaps its WRITEs)
  double convert_cpu_s = 0;              // conversion CPU seconds, summed over trainers
  std::uint64_t staging_peak_bytes = 0;  // largest staging use of any trainer
  std::uint64_t staging_bytes = 0;       // largest staging buffer of any trainer
  std::uint64_t mapped_bytes = 0;        // converted bytes written straight into mapped engine buffers
  std::uint64_t direct_copy_bytes = 0;   // bytes the trainers' lanes copied into mapped engine arenas
  std::uint64_t ucx_requests = 0;        // UCX data requests (rows not copied directly)
  std::uint64_t kernel_copy_bytes = 0;   // bytes the trainers' lanes wrote by process_vm_writev (private engine arenas)
  double copy_s = 0, copy_cpu_s = 0;     // lanes' direct + kernel copies: wall and CPU seconds, summed over lanes
  std::uint64_t copied_bytes = 0;        // bytes the pushing threads copied into mapped engine buffers (every replica)
  std::uint64_t copy_read_bytes = 0;     // the source bytes they read for them (each once)
  double pushed_copy_cpu_s = 0;          // their CPU seconds, summed over threads and trainers
  double connect_s = 0;                  // step 1: slowest trainer's Connect (pre-faulting, waiting for engines)
  std::uint64_t prefaulted_pages = 0;    // step 1 only: pages all trainers pre-faulted at Connect
  std::uint64_t trainer_huge = 0, engine_huge = 0;  // bytes in transparent huge pages (AnonHugePages), summed
  std::vector<std::pair<double, double>> transfer_windows, compute_windows;  // per trainer, CLOCK_MONOTONIC s

  // Seconds during which some trainer was transferring while another computed its update
  // (on a 2-core host that computation takes a core from the transfer).
  double ComputeOverlap() const {
    double overlap = 0;
    for (std::size_t i = 0; i < transfer_windows.size(); ++i)
      for (std::size_t j = 0; j < compute_windows.size(); ++j)
        if (i != j)
          overlap += std::max(0.0, std::min(transfer_windows[i].second, compute_windows[j].second) -
                                       std::max(transfer_windows[i].first, compute_windows[j].first));
    return overlap;
  }
  double transfer_s = 0;                 // first post of any trainer to the last remote completion
  json trainer_reports = json::array();  // per trainer: its window and its wait for READY (--json)
  double engine_wait_s = 0;              // slowest engine: READY to commit
  int verified = 0;
  int unchecked = 0;                  // engine ranks that committed the version without checking it (--verify last)
  double last_commit = 0;             // CLOCK_MONOTONIC s of the last engine rank's commit (its forwards done)
  int relayed = 0;                    // engine ranks that got the version through a relay
  double relay_s = 0;                 // slowest engine rank's forwards to its relay children (after its commit)
  std::map<int, std::string> missed;  // engine rank -> why it missed this version (first reason seen)
};

Status Run(const RlSyncOptions& o) {
  const std::string work_dir =
      o.work_dir.empty() ? (std::filesystem::temp_directory_path() / "shardwire-demo").string() : o.work_dir;
  const std::string trainer_spec = o.trainer_layout.empty() ? fmt::format("fsdp={}", o.trainers) : o.trainer_layout;
  const std::string engine_spec = o.engine_layout.empty() ? (o.engines > 1 ? fmt::format("tp={},dp={}", o.tp, o.engines)
                                                                           : fmt::format("tp={}", o.tp))
                                                          : o.engine_layout;
  // --engine-dtype auto: the generated config's quantization_config decides (an FP8 block-128
  // release such as DeepSeek-V3's: bf16 trainers, FP8 engines); otherwise the trainer's format.
  std::string engine_dtype = o.engine_dtype;
  bool unquantised = false;
  if (engine_dtype == "auto") {
    engine_dtype = "trainer";
    if (!o.generate.empty()) {
      SW_ASSIGN_OR_RETURN(const auto block, ConfigFp8BlockSize(o.generate));
      if (block) {
        if ((*block)[0] != 128 || (*block)[1] != 128) {
          return Unsupported(fmt::format("{}: weight_block_size [{}, {}]; the demo's FP8 engines use 128x128 blocks",
                                         o.generate, (*block)[0], (*block)[1]));
        }
        engine_dtype = "fp8-block";
        unquantised = true;
        fmt::print("{} is FP8 block-128 (quantization_config): bf16 trainers, FP8 engines\n", o.generate);
      }
    }
  }
  if (!o.generate.empty()) {
    // Check the layouts against the model before spending time generating it.
    SW_ASSIGN_OR_RETURN(const ModelDescription planned, DescribeConfig(o.generate, o.layers, unquantised));
    SW_RETURN_IF_ERROR(MakeLayoutFromString(planned, trainer_spec).status());
    SW_ASSIGN_OR_RETURN(const ModelDescription planned_engine, DescribeDemoEngineModel(planned, engine_dtype));
    SW_RETURN_IF_ERROR(MakeLayoutFromString(planned_engine, engine_spec).status());
  }
  SW_ASSIGN_OR_RETURN(const DemoCheckpoint input,
                      ResolveDemoCheckpoint(o.checkpoint, o.config, o.generate, o.layers, work_dir, unquantised));
  SW_ASSIGN_OR_RETURN(const ModelDescription model, DescribeDemoModel(input));
  SW_ASSIGN_OR_RETURN(const Layout trainer_layout, MakeLayoutFromString(model, trainer_spec));
  SW_ASSIGN_OR_RETURN(const ModelDescription engine_model, DescribeDemoEngineModel(model, engine_dtype));
  SW_ASSIGN_OR_RETURN(const Layout engine_layout, MakeLayoutFromString(engine_model, engine_spec));
  const int trainers = trainer_layout.world_size();
  const int engine_ranks = engine_layout.world_size();
  // Every trainer runs on this host: its lanes copy into the engines, so the host's cores are
  // shared among the trainers (at least 1 lane each, at most kDefaultLanes) unless told.
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const auto trainer_lanes =
      o.trainer_lanes > 0 ? o.trainer_lanes
                          : std::clamp<std::uint32_t>(static_cast<std::uint32_t>(cores / trainers), 1, kDefaultLanes);
  // The push as the workers will run it: moves unchanged where the formats agree, converted
  // (FP8 block quantisation, casts) where they differ.
  SW_ASSIGN_OR_RETURN(
      const PushConversion conversion,
      PushConversion::Create(trainer_layout, engine_layout, {}, PlanOptions{.max_concurrency = o.max_concurrency}));
  const TransferPlan& plan = conversion.direct_plan();
  std::uint64_t bytes_per_step = 0;
  for (int r = 0; r < trainer_layout.world_size(); ++r) bytes_per_step += conversion.BytesFrom(r);

  fmt::print("checkpoint  {} ({} {}, {} tensors, {})\n", input.checkpoint,
             model.config.architecture.empty() ? model.config.model_type : model.config.architecture,
             DTypeName(model.tensors.front().spec.dtype), model.tensors.size(),
             FormatBytes(static_cast<double>(model.total_bytes())));
  fmt::print("trainers    {} processes, {}, {} transport lane(s) each{}\n", trainers, trainer_layout.description(),
             trainer_lanes, o.trainer_lanes > 0 ? "" : fmt::format(" (automatic: {} cores here)", cores));
  fmt::print("engines     {} processes, {}\n", engine_ranks, engine_layout.description());
  if (conversion.converts()) {
    std::uint64_t converted = 0;
    for (std::uint32_t e = 0; e < engine_layout.tensors().size(); ++e)
      converted += conversion.kind(e) != PushTensorKind::kDirect;
    fmt::print("engine fmt  {}: {} of {} engine tensors converted in the push ({} moves unchanged, {} converted)\n",
               engine_dtype, converted, engine_layout.tensors().size(), plan.moves().size(),
               conversion.converted_plan().moves().size());
  }
  fmt::print("plan        {} moves ({} contiguous runs before coalescing), {} per step, {} round(s) at K = {}\n",
             plan.moves().size() + conversion.converted_plan().moves().size(),
             plan.runs_before_coalescing() + conversion.converted_plan().runs_before_coalescing(),
             FormatBytes(static_cast<double>(bytes_per_step)), plan.rounds(), o.max_concurrency);

  // The rendezvous: an in-process coordinator unless --coordinator names one
  // (token from SHARDWIRE_TOKEN, which the workers inherit).
  // --metrics-port: the in-process coordinator's metrics (requests, sources by state).
  MetricsRegistry metrics;
  SW_ASSIGN_OR_RETURN(const auto metrics_http, cli::StartMetricsEndpoint(o.metrics_port, metrics));
  std::unique_ptr<CoordinatorServer> server;
  std::string coordinator = o.coordinator;
  if (coordinator.empty()) {
    CoordinatorServerOptions so;
    so.listen_address = fmt::format("127.0.0.1:{}", o.port);
    if (o.metrics_port) so.metrics = &metrics;
    SW_ASSIGN_OR_RETURN(server, CoordinatorServer::Start(so));
    coordinator = server->address();
  }
  const std::string job = o.job.empty() ? fmt::format("rl-sync-{}", getpid()) : o.job;
  ChildProcesses children;
  auto worker_args = [&](const std::string& role, int rank) {
    std::vector<std::string> args{"worker",
                                  "--role",
                                  role,
                                  "--rank",
                                  std::to_string(rank),
                                  "--coordinator",
                                  coordinator,
                                  "--job",
                                  job,
                                  "--checkpoint",
                                  input.checkpoint,
                                  "--trainer-layout",
                                  trainer_spec,
                                  "--engine-layout",
                                  engine_spec,
                                  "--steps",
                                  std::to_string(o.steps),
                                  "--engine-dtype",
                                  engine_dtype,
                                  "--timeout",
                                  fmt::format("{}", o.timeout_s)};
    if (!input.config.empty()) args.insert(args.end(), {"--config", input.config});
    if (o.double_buffer || o.restart_engines) args.push_back("--double-buffer");
    if (o.restart_engines) args.push_back("--dynamic-membership");
    if (o.verify_digests) args.push_back("--verify-digests");
    args.insert(args.end(), {"--concurrency", std::to_string(o.max_concurrency)});
    if (o.relay) args.push_back("--relay");
    args.insert(args.end(), {"--verify", o.verify});
    args.insert(args.end(), {"--engine-memory", o.engine_memory});
    if (role == "trainer") args.insert(args.end(), {"--lanes", std::to_string(trainer_lanes)});
    if (o.staging_bytes > 0) args.insert(args.end(), {"--staging-bytes", std::to_string(o.staging_bytes)});
    if (o.staging_slots > 0) args.insert(args.end(), {"--staging-slots", std::to_string(o.staging_slots)});
    if (o.staging_only) args.push_back("--staging-only");
    if (o.lane_copies) args.push_back("--lane-copies");
    for (const auto& rules : cli::ModelRulesFiles()) args.insert(args.end(), {"--model-rules", rules});
    return args;
  };
  for (int r = 0; r < trainers; ++r) {
    SW_RETURN_IF_ERROR(children.Spawn(fmt::format("trainer {}", r), worker_args("trainer", r)));
  }
  for (int r = 0; r < engine_ranks; ++r) {
    SW_RETURN_IF_ERROR(children.Spawn(EngineRankLabel(r), worker_args("engine", r)));
  }
  CoordinatorClientOptions co;
  co.address = coordinator;
  co.unavailable_timeout_s = o.timeout_s;
  SW_ASSIGN_OR_RETURN(auto rendezvous, CoordinatorClient::Connect(co));
  EngineRestarts restarts;
  restarts.enabled = o.restart_engines;
  restarts.respawn = [&](const std::string& label) {
    const int rank = std::stoi(label.substr(label.rfind(' ') + 1));
    auto args = worker_args("engine", rank);
    args.push_back("--catch-up");
    return children.Spawn(label, args);
  };
  // Dynamic membership: an engine rank takes part from the version it was (re)admitted at.
  auto admitted_after = [&](int rank, int step) {
    return [&, rank, step] {
      auto admitted = GetString(*rendezvous, AdmittedKey(job, rank), 0);
      return admitted.ok() && std::stoll(*admitted) > step;
    };
  };

  json summary{{"checkpoint", input.checkpoint},
               {"trainer_layout", trainer_layout.description()},
               {"engine_layout", engine_layout.description()},
               {"engine_dtype", engine_dtype},
               {"bytes_per_step", bytes_per_step},
               {"steps", json::array()}};
  DeadEngines dead;
  int missed_versions = 0;  // engine-rank versions missed (dead, stalled or rejoining engines)
  double total_s = 0, steady_s = 0, steady_copy_cpu_s = 0, steady_deliver_s = 0;
  std::uint64_t steady_copy_bytes = 0;
  std::uint64_t total_bytes = 0, steady_bytes = 0;
  std::vector<double> step_gbps;  // per step, for the ratios to the memcpy reference at the end
  for (int step = 1; step <= o.steps; ++step) {
    StepFigures f;
    for (int r = 0; r < trainers; ++r) {
      SW_ASSIGN_OR_RETURN(const auto report, AwaitReport(*rendezvous, children, StatsKey(job, step, "trainer", r),
                                                         fmt::format("trainer {}", r), dead, restarts, o.timeout_s));
      const json& t = *report;
      for (const json& m : t.value("missed", json::array())) {
        f.missed.emplace(m.value("engine_rank", -1), m.value("reason", std::string()));
      }
      if (t.value("hold_s", 0.0) > 0) {
        f.hold_s = t.value("hold_s", 0.0);
        for (const json& e : t.value("held_for", json::array()))
          f.held_for += (f.held_for.empty() ? "" : ", ") + std::to_string(e.get<int>());
        for (const json& e : t.value("hold_expired", json::array()))
          f.hold_expired += (f.hold_expired.empty() ? "" : ", ") + std::to_string(e.get<int>());
      }
      f.bytes += t.value("bytes", std::uint64_t{0});
      f.descriptors += t.value("descriptors", std::uint64_t{0});
      f.faults += t.value("minor_faults", std::uint64_t{0});
      f.rows += t.value("rows", std::uint64_t{0});
      f.converted_bytes += t.value("converted_bytes", std::uint64_t{0});
      f.convert_s = std::max(f.convert_s, t.value("convert_s", 0.0));
      f.convert_cpu_s += t.value("convert_cpu_s", 0.0);
      f.staging_peak_bytes = std::max(f.staging_peak_bytes, t.value("staging_peak_bytes", std::uint64_t{0}));
      f.staging_bytes = std::max(f.staging_bytes, t.value("staging_bytes", std::uint64_t{0}));
      f.mapped_bytes += t.value("mapped_bytes", std::uint64_t{0});
      f.trainer_huge += t.value("anon_huge_bytes", std::uint64_t{0});
      // This trainer's transfer window [push_end - transfer_s, push_end] and its compute window.
      const double end = t.value("push_end", 0.0);
      f.transfer_windows.emplace_back(end - t.value("transfer_s", 0.0), end);
      f.compute_windows.emplace_back(t.value("compute_begin", 0.0), t.value("compute_end", 0.0));
      f.transfer_s = std::max(f.transfer_s, t.value("transfer_s", 0.0));
      f.direct_copy_bytes += t.value("direct_copy_bytes", std::uint64_t{0});
      f.ucx_requests += t.value("ucx_requests", std::uint64_t{0});
      f.kernel_copy_bytes += t.value("kernel_copy_bytes", std::uint64_t{0});
      f.copy_s += t.value("direct_copy_s", 0.0) + t.value("kernel_copy_s", 0.0);
      f.copy_cpu_s += t.value("direct_copy_cpu_s", 0.0) + t.value("kernel_copy_cpu_s", 0.0);
      f.copied_bytes += t.value("copied_bytes", std::uint64_t{0});
      f.copy_read_bytes += t.value("copy_read_bytes", std::uint64_t{0});
      f.pushed_copy_cpu_s += t.value("copy_cpu_s", 0.0);
      f.trainer_reports.push_back({{"rank", r},
                                   {"transfer_s", t.value("transfer_s", 0.0)},
                                   {"ready_wait_s", t.value("ready_wait_s", 0.0)},
                                   {"push_begin", end - t.value("transfer_s", 0.0)},
                                   {"push_end", end},
                                   {"direct_copy_bytes", t.value("direct_copy_bytes", std::uint64_t{0})},
                                   {"ucx_requests", t.value("ucx_requests", std::uint64_t{0})},
                                   {"direct_copy_s", t.value("direct_copy_s", 0.0)},
                                   {"direct_copy_cpu_s", t.value("direct_copy_cpu_s", 0.0)},
                                   {"kernel_copy_bytes", t.value("kernel_copy_bytes", std::uint64_t{0})},
                                   {"kernel_copy_s", t.value("kernel_copy_s", 0.0)},
                                   {"kernel_copy_cpu_s", t.value("kernel_copy_cpu_s", 0.0)},
                                   {"copied_bytes", t.value("copied_bytes", std::uint64_t{0})},
                                   {"copy_read_bytes", t.value("copy_read_bytes", std::uint64_t{0})},
                                   {"copy_cpu_s", t.value("copy_cpu_s", 0.0)},
                                   {"connect_s", t.value("connect_s", 0.0)},
                                   {"prefaulted_pages", t.value("prefaulted_pages", std::uint64_t{0})},
                                   {"prefault_s", t.value("prefault_s", 0.0)}});
      if (step == 1) {
        f.connect_s = std::max(f.connect_s, t.value("connect_s", 0.0));
        f.prefaulted_pages += t.value("prefaulted_pages", std::uint64_t{0});
      }
    }
    for (int r = 0; r < engine_ranks; ++r) {
      SW_ASSIGN_OR_RETURN(
          const auto report,
          AwaitReport(*rendezvous, children, StatsKey(job, step, "engine", r), EngineRankLabel(r), dead, restarts,
                      o.timeout_s, o.restart_engines ? admitted_after(r, step) : std::function<bool()>{}));
      if (!report) continue;  // died or rejoining: the trainers' reports say why it missed the version
      const json& e = *report;
      if (e.contains("caught_up")) {
        const json& c = e["caught_up"];
        if (c.value("version", 0) > 0) {
          std::string from;
          for (const auto& [instance, bytes] : c["from"].items()) {
            from += fmt::format("{}{} {}", from.empty() ? "" : ", ", instance,
                                FormatBytes(static_cast<double>(bytes.get<std::uint64_t>())));
          }
          fmt::print(
              "            {} (process {} of the rank) caught up to v{} from live engines ({}; {} from disk) in "
              "{:.3f} s (its P2P load {:.3f} s){}, verified, then received v{}\n",
              EngineRankLabel(r), c.value("incarnation", 0), c.value("version", 0), from,
              FormatBytes(static_cast<double>(c.value("from_disk", std::uint64_t{0}))), c.value("seconds", 0.0),
              c.value("load_s", 0.0), c.value("held", false) ? " with the pushes held" : "", step);
          if (c.value("attempts", 1) > 1 || !c.value("failures", json::array()).empty()) {
            std::string why;
            for (const json& w : c.value("failures", json::array()))
              why += (why.empty() ? "" : "; ") + w.get<std::string>();
            fmt::print("            (its load took {:.3f} s; {} attempt(s); before: {})\n", c.value("load_s", 0.0),
                       c.value("attempts", 1), why);
          }
        } else {
          fmt::print(
              "            {} (process {} of the rank) started from the checkpoint on disk, not from live engines "
              "({}), then received v{}\n",
              EngineRankLabel(r), c.value("incarnation", 0), c.value("why", std::string()), step);
        }
      }
      f.engine_wait_s = std::max(f.engine_wait_s, e.value("wait_s", 0.0));
      f.engine_huge += e.value("anon_huge_bytes", std::uint64_t{0});
      f.last_commit = std::max(f.last_commit, e.value("committed_at", 0.0));
      f.relayed += e.value("relayed_from", -1) >= 0 ? 1 : 0;
      f.relay_s = std::max(f.relay_s, e.value("relay_s", 0.0));
      f.verified += e.value("verified", false) ? 1 : 0;
      f.unchecked += e.value("unchecked", false) ? 1 : 0;
    }
    // The step's time is the union of the trainers' transfer windows (first post of any
    // trainer to the last completion), not the longest single window: trainers that push
    // one after the other would otherwise be credited with each other's bytes.
    double deliver_s = 0;  // first write of any trainer to the last engine rank's commit
    if (!f.transfer_windows.empty()) {
      double first = f.transfer_windows.front().first, last = f.transfer_windows.front().second;
      for (const auto& [b, e] : f.transfer_windows) {
        first = std::min(first, b);
        last = std::max(last, e);
      }
      f.transfer_s = std::max(f.transfer_s, last - first);
      if (f.last_commit > first) deliver_s = f.last_commit - first;
    }
    const double gbps = f.transfer_s > 0 ? static_cast<double>(f.bytes) / f.transfer_s / 1e9 : 0;
    if (step == 1) {
      fmt::print(
          "connect     slowest trainer {:.3f} s (Connect, waiting for the engines to publish included), {} "
          "pages of engine arenas pre-faulted (before step 1)\n",
          f.connect_s, f.prefaulted_pages);
      fmt::print("memory      in 2 MiB pages (AnonHugePages): trainers {}, engines {} (--engine-memory {})\n",
                 FormatBytes(static_cast<double>(f.trainer_huge)), FormatBytes(static_cast<double>(f.engine_huge)),
                 o.engine_memory);
    }
    fmt::print(
        "step {}/{}  moved {:>10} in {:.4f} s = {:6.2f} GB/s  ({} descriptors for {} rows, {} page faults, "
        "{:.4f} s beside another trainer's compute, {} copied directly by the lanes, {} by kernel copy, {} UCX "
        "requests)  {}\n",
        step, o.steps, FormatBytes(static_cast<double>(f.bytes)), f.transfer_s, gbps, f.descriptors, f.rows, f.faults,
        f.ComputeOverlap(), FormatBytes(static_cast<double>(f.direct_copy_bytes)),
        FormatBytes(static_cast<double>(f.kernel_copy_bytes)), f.ucx_requests,
        f.unchecked > 0 && f.verified == 0
            ? fmt::format("committed by {}/{} engine ranks, not checked (--verify last)", f.unchecked, engine_ranks)
            : fmt::format("verified {}/{} engine ranks byte for byte", f.verified, engine_ranks));
    if (deliver_s > 0) {
      fmt::print(
          "            every engine rank committed {:.4f} s after the first write ({} for all engine ranks = "
          "{:.2f} GB/s; {} of them through engine-to-engine relays{})\n",
          deliver_s, FormatBytes(static_cast<double>(bytes_per_step)),
          static_cast<double>(bytes_per_step) / deliver_s / 1e9, f.relayed,
          f.relayed > 0 ? fmt::format(", the slowest rank's forwards {:.4f} s", f.relay_s) : "");
    }
    if (step > 1) steady_deliver_s += deliver_s;
    missed_versions += static_cast<int>(f.missed.size());
    if (f.copy_cpu_s > 0) {
      fmt::print("            lanes' copies: {:.4f} CPU-s in {:.4f} s of lane time = {:.2f} GB per CPU-second\n",
                 f.copy_cpu_s, f.copy_s,
                 static_cast<double>(f.direct_copy_bytes + f.kernel_copy_bytes) / f.copy_cpu_s / 1e9);
    }
    if (f.pushed_copy_cpu_s > 0) {
      fmt::print(
          "            pushing threads copied {} into mapped engine buffers, reading {} of source once for every "
          "replica (fan-out {:.2f}): {:.4f} CPU-s = {:.2f} GB written per CPU-second\n",
          FormatBytes(static_cast<double>(f.copied_bytes)), FormatBytes(static_cast<double>(f.copy_read_bytes)),
          f.copy_read_bytes > 0 ? static_cast<double>(f.copied_bytes) / static_cast<double>(f.copy_read_bytes) : 0.0,
          f.pushed_copy_cpu_s, static_cast<double>(f.copied_bytes) / f.pushed_copy_cpu_s / 1e9);
    }
    for (const auto& [rank, why] : f.missed) {  // why names the engine rank and the version
      fmt::print("            {}\n", why);
    }
    if (f.hold_s > 0) {
      fmt::print(
          "            push v{} started {:.3f} s late: held for engine rank(s) {} catching up from live "
          "engines{}\n",
          step, f.hold_s, f.held_for,
          f.hold_expired.empty() ? "" : fmt::format(" (hold of rank(s) {} ran out)", f.hold_expired));
    }
    if (f.converted_bytes > 0) {
      fmt::print(
          "            converted {} on the way ({:.4f} s of conversion in the slowest trainer, overlapping its "
          "writes); staging peak {} of {} allocated per trainer\n",
          FormatBytes(static_cast<double>(f.converted_bytes)), f.convert_s,
          FormatBytes(static_cast<double>(f.staging_peak_bytes)), FormatBytes(static_cast<double>(f.staging_bytes)));
      fmt::print(
          "            conversion CPU {:.4f} CPU-s (all trainers); {} of it converted straight into mapped engine "
          "buffers (no staging, no second copy)\n",
          f.convert_cpu_s, FormatBytes(static_cast<double>(f.mapped_bytes)));
    }
    std::fflush(stdout);
    total_s += f.transfer_s;
    total_bytes += f.bytes;
    step_gbps.push_back(gbps);
    if (step > 1) {  // the first push also maps the peers' memory
      steady_copy_cpu_s += f.copy_cpu_s + f.pushed_copy_cpu_s;
      steady_copy_bytes += f.direct_copy_bytes + f.kernel_copy_bytes + f.copied_bytes;
      steady_s += f.transfer_s;
      steady_bytes += f.bytes;
    }
    summary["steps"].push_back({{"step", step},
                                {"bytes", f.bytes},
                                {"transfer_s", f.transfer_s},
                                {"gb_per_s", gbps},
                                {"descriptors", f.descriptors},
                                {"rows", f.rows},
                                {"page_faults", f.faults},
                                {"converted_bytes", f.converted_bytes},
                                {"convert_s", f.convert_s},
                                {"convert_cpu_s", f.convert_cpu_s},
                                {"staging_peak_bytes", f.staging_peak_bytes},
                                {"staging_bytes", f.staging_bytes},
                                {"mapped_bytes", f.mapped_bytes},
                                {"compute_overlap_s", f.ComputeOverlap()},
                                {"direct_copy_bytes", f.direct_copy_bytes},
                                {"ucx_requests", f.ucx_requests},
                                {"kernel_copy_bytes", f.kernel_copy_bytes},
                                {"copy_s", f.copy_s},
                                {"copy_cpu_s", f.copy_cpu_s},
                                {"copied_bytes", f.copied_bytes},
                                {"copy_read_bytes", f.copy_read_bytes},
                                {"pushed_copy_cpu_s", f.pushed_copy_cpu_s},
                                {"engine_wait_s", f.engine_wait_s},
                                {"deliver_s", deliver_s},
                                {"relayed", f.relayed},
                                {"trainers", f.trainer_reports},
                                {"verified", f.verified},
                                {"unchecked", f.unchecked},
                                {"missed", f.missed.size()}});
  }
  SW_ASSIGN_OR_RETURN(const auto exits, children.WaitAll(o.timeout_s));
  for (const ChildExit& e : exits) {
    if (e.ok()) continue;
    if (e.label.rfind("engine", 0) != 0) return Internal(e.Describe());
    // An engine that found wrong bytes fails the run even after the last push (no trainer is
    // left to fail for want of its READY).
    if (FailedVerification(e)) return VerificationFailed(e.Describe());
    dead.why[e.label] = e.Describe();
  }
  const double mean_gbps = total_s > 0 ? static_cast<double>(total_bytes) / total_s / 1e9 : 0;
  // Reference measured now: memcpy of one step's bytes with as many threads as the trainers
  // have copying lanes, capped at this host's cores (2 here): one trainer with two lanes, or two
  // with one each, copy on both cores, so the reference is two threads as well.
  const int copy_threads = std::clamp(trainers * static_cast<int>(trainer_lanes), 1, cores);
  const double memcpy_gbps = MeasureMemcpyGBps(bytes_per_step, copy_threads);
  const double memcpy_per_cpu = MeasureMemcpyGBPerCpuSecond(bytes_per_step, copy_threads);
  int restarted = 0;
  for (const auto& [label, n] : restarts.count) restarted += n;
  std::string outcome =
      o.verify == "every" ? "every engine rank verified every step" : "every engine rank verified the last step";
  if (!dead.why.empty()) {
    outcome = fmt::format(
        "every surviving engine rank verified every version it committed; {} engine rank(s) "
        "died and missed the versions after",
        dead.why.size());
  } else if (restarted > 0 || missed_versions > 0) {
    outcome = fmt::format(
        "every engine rank verified every version it committed; {} engine process(es) "
        "restarted, {} engine-rank versions missed while an engine was down or rejoining",
        restarted, missed_versions);
  }
  fmt::print("summary     {} steps, {} moved in {:.3f} s of transfer = {:.2f} GB/s; {}\n", o.steps,
             FormatBytes(static_cast<double>(total_bytes)), total_s, mean_gbps, outcome);
  const double steady_gbps = steady_s > 0 ? static_cast<double>(steady_bytes) / steady_s / 1e9 : mean_gbps;
  if (o.steps > 1) {
    fmt::print("steady      steps 2..{}: {:.2f} GB/s (step 1 reported on its own line above)\n", o.steps, steady_gbps);
    if (steady_deliver_s > 0) {
      fmt::print(
          "delivery    steps 2..{}: {:.4f} s per step from the first write to the last commit = {:.2f} GB/s of "
          "engine weights ({})\n",
          o.steps, steady_deliver_s / (o.steps - 1),
          static_cast<double>(bytes_per_step) * (o.steps - 1) / steady_deliver_s / 1e9,
          o.relay ? "engine-to-engine relays" : "trainers write every engine rank");
    }
  }
  fmt::print("reference   memcpy, {} thread(s), same bytes, this run: {:.2f} GB/s -> steady/memcpy = {:.2f}\n",
             copy_threads, memcpy_gbps, memcpy_gbps > 0 ? steady_gbps / memcpy_gbps : 0);
  if (memcpy_gbps > 0 && !step_gbps.empty()) {
    std::string ratios;
    double worst = step_gbps.front() / memcpy_gbps;
    for (double g : step_gbps) {
      ratios += fmt::format("{}{:.2f}", ratios.empty() ? "" : " ", g / memcpy_gbps);
      worst = std::min(worst, g / memcpy_gbps);
    }
    fmt::print("per step    step/memcpy, steps 1..{}: {} (worst {:.2f}; engine buffers: {})\n", o.steps, ratios, worst,
               o.engine_memory);
    std::vector<double> over;
    for (double g : step_gbps) over.push_back(g / memcpy_gbps);
    summary["step_over_memcpy"] = over;
  }
  if (steady_copy_cpu_s > 0 && memcpy_per_cpu > 0) {
    const double copies_per_cpu = static_cast<double>(steady_copy_bytes) / steady_copy_cpu_s / 1e9;
    fmt::print(
        "copy speed  steps 2..{}: copies (lanes and pushing threads) {:.2f} GB written per CPU-second, memcpy (same "
        "run) {:.2f} -> copies/memcpy = {:.2f} (CPU time: hardly moved by other load on the host)\n",
        o.steps, copies_per_cpu, memcpy_per_cpu, copies_per_cpu / memcpy_per_cpu);
    summary["copies_gb_per_cpu_s"] = copies_per_cpu;
  }
  summary["memcpy_gb_per_cpu_s"] = memcpy_per_cpu;
  summary["total_bytes"] = total_bytes;
  summary["total_transfer_s"] = total_s;
  summary["gb_per_s"] = mean_gbps;
  summary["steady_gb_per_s"] = steady_gbps;
  summary["memcpy_gb_per_s"] = memcpy_gbps;
  summary["memcpy_threads"] = copy_threads;
  if (!o.json_out.empty()) {
    std::ofstream out(o.json_out);
    out << summary.dump(2) << "\n";
    if (!out) return IoError("cannot write " + o.json_out);
  }
  return Status::Ok();
}

}  // namespace

void AddRlSyncCommand(CLI::App& demo, int* exit_code) {
  auto o = std::make_shared<RlSyncOptions>();
  CLI::App* cmd =
      demo.add_subcommand("rl-sync",
                          "RL weight sync: FSDP trainer processes push a model into TP inference engines over UCX, "
                          "every step verified byte for byte");
  cmd->add_option("--trainers", o->trainers, "trainer processes (FSDP ranks)")
      ->capture_default_str()
      ->check(CLI::Range(1, 256));
  cmd->add_option("--engines", o->engines, "inference engines (replicas)")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  cmd->add_option("--tp", o->tp, "tensor-parallel ranks per engine")->capture_default_str()->check(CLI::Range(1, 64));
  cmd->add_option("--trainer-layout", o->trainer_layout,
                  "trainer layout string instead of --trainers: fsdp=N | hsdp=RxS [,tp=T] [,ep=E] [,pp=P]")
      ->excludes("--trainers");
  cmd->add_option("--engine-layout", o->engine_layout,
                  "engine layout string instead of --engines/--tp: tp=T [,ep=T] [,pp=P] [,dp=R]")
      ->excludes("--engines")
      ->excludes("--tp");
  cmd->add_option("--steps", o->steps, "weight versions to push")->capture_default_str()->check(CLI::Range(1, 100000));
  cmd->add_option("--engine-dtype", o->engine_dtype,
                  "engine weight format: trainer (the checkpoint's dtypes), fp8-block (FP8 E4M3 with 128x128 "
                  "block scales, as DeepSeek-V3's FP8 release; quantised in the push), or auto (fp8-block when the "
                  "--generate config has an FP8 block-128 quantization_config, else trainer)")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "trainer", "fp8-block"}));
  cmd->add_option("--checkpoint", o->checkpoint,
                  "safetensors file, index JSON or directory (default: $SHARDWIRE_SHARED_DIR/models/tiny-llama3-bf16, "
                  "else shared/models/tiny-llama3-bf16 beside the source tree, else a generated TinyLlama-shaped "
                  "checkpoint)");
  cmd->add_option("--config", o->config, "HF config.json (default: the one beside the checkpoint)");
  cmd->add_option("--generate", o->generate,
                  "generate a checkpoint with the shapes of this HF config.json ('tinyllama-1.1b' = built in)")
      ->excludes("--checkpoint");
  cmd->add_option("--layers", o->layers, "with --generate: decoder layers (0 = as in the config)")
      ->check(NonNegativeNumber());
  cmd->add_option("--work-dir", o->work_dir, "where generated checkpoints are kept (default: $TMPDIR/shardwire-demo)");
  cmd->add_option("--port", o->port, "port of the in-process coordinator on 127.0.0.1 (0 = any free port)")
      ->capture_default_str();
  cmd->add_option("--coordinator", o->coordinator,
                  "HOST:PORT of a running coordinator (`shardwire serve`) to use instead of an in-process one (token: "
                  "SHARDWIRE_TOKEN; TLS: SHARDWIRE_TLS_ROOT_CERT names the CA certificate)")
      ->excludes("--port")
      ->check(NonEmpty("HOST:PORT"));
  cmd->add_option("--timeout", o->timeout_s, "seconds any single wait may take")
      ->capture_default_str()
      ->check(PositiveNumber());
  cmd->add_option("--verify", o->verify,
                  "when engines check their weights byte for byte against a recomputation: every step, or only the "
                  "last one (the pushes then run without the engines' verification work between them, as in "
                  "bench/python_push_vs_gloo.py)")
      ->capture_default_str()
      ->check(CLI::IsMember({"every", "last"}));
  cmd->add_option("--engine-memory", o->engine_memory,
                  "memory of the trainers' and engines' weight buffers: private huge pages (engines written by "
                  "kernel copy, process_vm_writev), shared memory (the trainers map the engines' buffers and write "
                  "them with streaming stores after pre-faulting them at Connect), or auto (trainers private; "
                  "engines shared where a first write per 4 KiB page costs under 6 us or the push converts into "
                  "mapped engine buffers, else private)")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "shared", "private"}));
  cmd->add_option("--trainer-lanes", o->trainer_lanes,
                  "transport lanes (copy threads) per trainer (0 = automatic: this host's cores shared among the "
                  "trainers, at least 1 and at most 2 each)")
      ->capture_default_str()
      ->check(CLI::Range(0, static_cast<int>(kMaxLanes)));
  cmd->add_flag("--double-buffer", o->double_buffer,
                "engines hold two buffers: they serve the committed version from one while the next lands in the "
                "other (2x engine weight memory)");
  cmd->add_option("--concurrency", o->max_concurrency,
                  "K: in each round of the plan no trainer rank writes more than K engine ranks and no engine rank "
                  "is written by more than K trainer ranks; the push honours the rounds")
      ->capture_default_str()
      ->check(PositiveNumber());
  cmd->add_flag("--relay", o->relay,
                "engine-to-engine relays: the trainers write one replica of each engine rank's shards and each "
                "replica forwards them to the next ones (K-ary tree) once it committed; trainers send each byte once");
  cmd->add_flag("--verify-digests", o->verify_digests,
                "per-version integrity check: each trainer sends the XXH3 digest of the bytes it wrote to each "
                "engine rank, and the engine commits the version only if what landed hashes the same");
  cmd->add_flag("--restart-engines", o->restart_engines,
                "engines join and leave through the coordinator; an engine process that dies is restarted, as an "
                "orchestrator would, loads the latest committed version from the live engines (P2P) and receives "
                "the next push (implies --double-buffer, so each committed version stays servable for a whole push)");
  cmd->add_option("--staging-bytes", o->staging_bytes,
                  "converting push: each trainer's staging bound in bytes (0 = the default, 64 MiB)")
      ->check(NonNegativeNumber());
  cmd->add_option("--staging-slots", o->staging_slots,
                  "converting push: slots of the staging ring, >= 2 (0 = automatic: up to 8)")
      ->check(NonNegativeNumber());
  cmd->add_flag("--staging-only", o->staging_only,
                "converting push: always convert into the staging ring and WRITE from it, even into engine "
                "buffers the transport maps into the trainer (the fallback path, for comparison)");
  cmd->add_flag("--lane-copies", o->lane_copies,
                "the trainers' transport lanes copy every moved byte, one transfer per engine rank, even into "
                "engine buffers mapped into the trainer (the path before read-once-write-to-every-replica, for "
                "comparison)");
  cli::AddModelRulesOption(cmd);
  cmd->add_option("--json", o->json_out, "also write the summary as JSON to this file");
  cli::AddMetricsPortOption(cmd, &o->metrics_port);
  cmd->add_option("--job", o->job, "job name, the prefix of every rendezvous key (default: rl-sync-<pid>)");
  cmd->callback([o, exit_code] {
    const Status status = Run(*o);
    if (!status.ok()) {
      fmt::print(stderr, "shardwire demo rl-sync: {}\n", status.ToString());
      *exit_code = ChildProcesses::InterruptRequested() ? 130 : 1;
    }
  });
}

}  // namespace shardwire::cli
