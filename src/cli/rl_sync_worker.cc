// The processes `shardwire demo rl-sync` starts: one trainer rank or one engine rank.
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>

#include <fmt/format.h>

#include <nlohmann/json.hpp>
#include "cli/model_rules_option.h"
#include "cli/option_checks.h"

#include "cli/demo_checkpoint.h"
#include "cli/engine_shards.h"
#include "cli/rl_sync_demo.h"
#include "cli/rl_sync_protocol.h"
#include "cli/synthetic_update.h"
#include "shardwire/checkpoint.h"
#include "shardwire/coordinator.h"
#include "shardwire/engine_catch_up.h"
#include "shardwire/model_layouts.h"
#include "shardwire/shard_io.h"
#include "shardwire/weight_sync.h"

namespace shardwire::cli {
namespace {

struct WorkerArgs {
  std::string role;
  int rank = 0;
  std::string coordinator;  // HOST:PORT
  std::string job;
  std::string checkpoint;
  std::string config;
  std::string trainer_layout, engine_layout;
  std::string engine_dtype = "trainer";
  bool double_buffer = false;
  bool dynamic_membership = false;     // --restart-engines: engines join, restart and catch up
  bool catch_up = false;               // this engine process replaces a dead one: catch up first
  bool verify_digests = false;         // per-version integrity check
  std::string verify = "every";        // every | last
  std::string engine_memory = "auto";  // auto | shared | private (BufferMemory)
  std::uint32_t lanes = 0;             // trainer: transport lanes (0: kDefaultLanes)
  std::uint64_t staging_bytes = 0;     // 0: the default
  std::uint32_t staging_slots = 0;     // 0: automatic
  int max_concurrency = 4;             // K of the plan's rounds
  bool relay = false;                  // engine-to-engine relays of replicated bytes
  bool staging_only = false;           // never convert into mapped engine buffers
  bool lane_copies = false;            // the lanes copy every direct move (never the pushing threads)
  int steps = 0;
  double timeout_s = 120;
};

// Writes every shard of `rank` at `step` into `buffer` (the trainer's update).
Status WriteStep(const Checkpoint& checkpoint, const Layout& layout, int rank, std::uint64_t step,
                 std::span<std::byte> buffer) {
  for (const ShardRef& shard : layout.rank(rank).shards) {
    const TensorSpec& spec = layout.tensors()[shard.tensor];
    SW_ASSIGN_OR_RETURN(const TensorView full, checkpoint.Get(spec.name));
    const std::size_t bytes = static_cast<std::size_t>(shard.box.numel()) * DTypeSize(spec.dtype);
    WriteUpdatedBox(spec, full.data, shard.box, step, buffer.subspan(shard.byte_offset, bytes));
  }
  return Status::Ok();
}

// Recomputes every shard of `rank` at `step` and compares it with `buffer` byte for byte.
// `expected` is the caller's scratch, kept from step to step (see RunEngine).
Status VerifyStep(const Checkpoint& checkpoint, const Layout& layout, int rank, std::uint64_t step,
                  std::span<const std::byte> buffer, const std::string& who, std::vector<std::byte>& expected) {
  for (const ShardRef& shard : layout.rank(rank).shards) {
    const TensorSpec& spec = layout.tensors()[shard.tensor];
    const std::size_t bytes = static_cast<std::size_t>(shard.box.numel()) * DTypeSize(spec.dtype);
    expected.resize(bytes);
    // In the engine's format: FP8 weights and scales, casts (engine_shards.h).
    SW_RETURN_IF_ERROR(WriteEngineShard(checkpoint, spec, shard.box, step, expected));
    const std::byte* got = buffer.data() + shard.byte_offset;
    if (std::memcmp(got, expected.data(), bytes) != 0) {
      const auto diff = std::mismatch(expected.begin(), expected.end(), got);
      const auto offset = static_cast<std::size_t>(diff.first - expected.begin());
      return VerificationFailed(
          fmt::format("{} step {}: tensor {} shard {} differs from its recomputation at byte {} of the shard "
                      "(element {}): expected 0x{:02x}, got 0x{:02x}",
                      who, step, spec.name, ToString(shard.box), offset, offset / DTypeSize(spec.dtype),
                      static_cast<unsigned>(*diff.first), static_cast<unsigned>(*diff.second)));
    }
  }
  return Status::Ok();
}

// Fault injection for the demo's own failure-path tests: SHARDWIRE_DEMO_FAULT=
// "corrupt:<step>" makes trainer 0 flip one byte of its buffer after computing that
// step; "die:<step>" makes trainer 0 kill itself (SIGKILL) before pushing that step;
// "engine-die:<step>" makes the last engine rank kill itself before that step.
struct Fault {
  std::string kind;
  int step = -1;
};

Fault ReadFault(const std::string& role, int rank, int ranks) {
  const char* env = std::getenv("SHARDWIRE_DEMO_FAULT");
  if (env == nullptr) return {};
  const std::string spec(env);
  const auto colon = spec.find(':');
  if (colon == std::string::npos) return {};
  Fault f{spec.substr(0, colon), std::atoi(spec.c_str() + colon + 1)};
  const bool engine_fault = f.kind.rfind("engine-", 0) == 0;
  if (role == "trainer" && (engine_fault || rank != 0)) return {};
  if (role == "engine" && (!engine_fault || rank != ranks - 1)) return {};
  return f;
}

// Page faults of this process so far (all threads: the agent's lanes copy).
std::uint64_t MinorFaults() {
  rusage u{};
  if (::getrusage(RUSAGE_SELF, &u) != 0) return 0;
  return static_cast<std::uint64_t>(u.ru_minflt) + static_cast<std::uint64_t>(u.ru_majflt);
}

// Bytes of this process's memory in transparent huge pages (AnonHugePages of
// /proc/self/smaps_rollup; 0 when unreadable): whether the private arenas got 2 MiB pages.
std::uint64_t AnonHugeBytes() {
  std::FILE* f = std::fopen("/proc/self/smaps_rollup", "r");
  if (f == nullptr) return 0;
  char line[256];
  std::uint64_t kb = 0;
  while (std::fgets(line, sizeof line, f) != nullptr) {
    unsigned long long v = 0;
    if (std::sscanf(line, "AnonHugePages: %llu kB", &v) == 1) kb = v;
  }
  std::fclose(f);
  return kb * 1024;
}

// CLOCK_MONOTONIC seconds: comparable between the demo's processes on one host.
double MonotonicSeconds() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

// The options both roles share (the conversion must be planned alike by trainers and engines).
WeightSyncOptions SyncOptions(const WorkerArgs& a) {
  WeightSyncOptions options{a.job, a.timeout_s};
  options.verify_digests = a.verify_digests;
  options.dynamic_membership = a.dynamic_membership;
  if (a.staging_bytes > 0) options.conversion.staging_bytes = a.staging_bytes;
  options.conversion.staging_slots = a.staging_slots;
  options.max_concurrency = a.max_concurrency;
  options.relay_broadcasts = a.relay;
  options.convert_into_mapped = !a.staging_only;
  options.copy_into_mapped = !a.lane_copies;
  options.buffer_memory = a.engine_memory == "shared"    ? BufferMemory::kShared
                          : a.engine_memory == "private" ? BufferMemory::kPrivateHugePages
                                                         : BufferMemory::kAuto;
  options.lanes = a.lanes;
  return options;
}

Status RunTrainer(const WorkerArgs& a, Rendezvous& rendezvous, const Checkpoint& checkpoint,
                  const Layout& trainer_layout, const Layout& engine_layout) {
  const Fault fault = ReadFault("trainer", a.rank, trainer_layout.world_size());
  SW_ASSIGN_OR_RETURN(auto publisher,
                      WeightPublisher::Create(rendezvous, trainer_layout, engine_layout, a.rank, SyncOptions(a)));
  const double connect_begin = MonotonicSeconds();
  SW_RETURN_IF_ERROR(publisher->Connect());
  if (a.dynamic_membership) {
    // Engines connect when they join; the first push needs them all (later ones need none).
    SW_RETURN_IF_ERROR(publisher->WaitForEngines(engine_layout.world_size(), a.timeout_s).status());
  }
  const double connect_s = MonotonicSeconds() - connect_begin;
  const AgentStats connected = publisher->transport_stats();
  for (int step = 1; step <= a.steps; ++step) {
    const double compute_begin = MonotonicSeconds();
    SW_RETURN_IF_ERROR(
        WriteStep(checkpoint, trainer_layout, a.rank, static_cast<std::uint64_t>(step), publisher->weights()));
    const double compute_end = MonotonicSeconds();
    if (fault.step == step && fault.kind == "corrupt" && !publisher->weights().empty()) {
      publisher->weights()[publisher->weights().size() / 2] ^= std::byte{0x01};
    }
    if (fault.step == step && fault.kind == "die") raise(SIGKILL);
    // Barrier: every trainer has computed this step before any pushes it.
    SW_RETURN_IF_ERROR(PutString(rendezvous, ComputedKey(a.job, step, a.rank), "1"));
    for (int r = 0; r < trainer_layout.world_size(); ++r) {
      if (r == a.rank) continue;
      auto got = rendezvous.Get(ComputedKey(a.job, step, r), a.timeout_s);
      if (!got.ok()) return got.status().WithContext(fmt::format("trainer {} waiting for trainer {}", a.rank, r));
    }
    const std::uint64_t faults_before = MinorFaults();
    const AgentStats agent_before = publisher->transport_stats();
    SW_ASSIGN_OR_RETURN(const PushStats stats, publisher->Push(static_cast<std::uint64_t>(step)));
    // Taken at once: the report's /proc reads below (page faults, smaps_rollup) take
    // milliseconds under sanitizers, and the demo places this push's transfer window at
    // [push_end - transfer_s, push_end] against the engines' commit times.
    const double push_end = MonotonicSeconds();
    const AgentStats agent_after = publisher->transport_stats();
    nlohmann::json missed = nlohmann::json::array();
    for (const MissedEngine& m : stats.missed)
      missed.push_back({{"engine_rank", m.engine_rank}, {"reason", m.reason.ToString()}});
    nlohmann::json report{{"bytes", stats.bytes},
                          {"descriptors", stats.descriptors},
                          {"rows", stats.rows},
                          {"rounds", stats.rounds},
                          {"round_wait_s", stats.round_wait_s},
                          {"minor_faults", MinorFaults() - faults_before},
                          {"anon_huge_bytes", AnonHugeBytes()},
                          {"transfer_s", stats.transfer_s},
                          {"ready_wait_s", stats.ready_wait_s},
                          {"converted_bytes", stats.converted_bytes},
                          {"convert_s", stats.convert_s},
                          {"convert_cpu_s", stats.convert_cpu_s},
                          {"amax_exchange_s", stats.amax_exchange_s},
                          {"staging_bytes", stats.staging_bytes},
                          {"staging_peak_bytes", stats.staging_peak_bytes},
                          {"mapped_bytes", stats.mapped_bytes},
                          {"copied_bytes", stats.copied_bytes},
                          {"copy_read_bytes", stats.copy_read_bytes},
                          {"copy_cpu_s", stats.copy_cpu_s},
                          {"compute_begin", compute_begin},
                          {"compute_end", compute_end},
                          {"push_end", push_end},
                          {"missed", missed},
                          {"hold_s", stats.hold_s},
                          {"held_for", stats.held_for},
                          {"hold_expired", stats.hold_expired},

                          {"direct_copy_bytes", stats.direct_copy_bytes},
                          {"ucx_requests", stats.ucx_requests},
                          {"direct_copy_s", agent_after.direct_copy_s - agent_before.direct_copy_s},
                          {"direct_copy_cpu_s", agent_after.direct_copy_cpu_s - agent_before.direct_copy_cpu_s},
                          {"kernel_copy_bytes", stats.kernel_copy_bytes},
                          {"kernel_copy_s", agent_after.kernel_copy_s - agent_before.kernel_copy_s},
                          {"kernel_copy_cpu_s", agent_after.kernel_copy_cpu_s - agent_before.kernel_copy_cpu_s},
                          {"connect_s", connect_s},
                          {"prefaulted_pages", connected.prefaulted_pages},
                          {"prefault_s", connected.prefault_s}};
    SW_RETURN_IF_ERROR(PutString(rendezvous, StatsKey(a.job, step, "trainer", a.rank), report.dump()));
  }
  if (a.dynamic_membership && a.rank == 0) SW_RETURN_IF_ERROR(PutString(rendezvous, FinishedKey(a.job), "1"));
  return Status::Ok();
}

// The engine starts from the checkpoint on disk, as a freshly launched engine does (an FP8
// engine quantises it while loading, as vLLM does with quantization="fp8"): version 0.
Status LoadEngineStart(const WorkerArgs& a, const Checkpoint& checkpoint, const Layout& engine_layout,
                       std::span<std::byte> weights) {
  if (a.engine_dtype == "trainer") return LoadShardsFromCheckpoint(checkpoint, engine_layout, a.rank, weights);
  return WriteEngineRank(checkpoint, engine_layout, a.rank, 0, weights);
}

// --restart-engines: an engine that joins through the coordinator, serves every version it
// commits to engines that restart, and (a replacement) first catches up from the live engines.
Status RunDynamicEngine(const WorkerArgs& a, CoordinatorClient& client, const Checkpoint& checkpoint,
                        const ModelDescription& engine_model, const Layout& trainer_layout,
                        const Layout& engine_layout) {
  const std::string who = EngineRankLabel(a.rank);
  WeightSyncOptions options = SyncOptions(a);
  options.double_buffered = a.double_buffer;
  options.dynamic_membership = true;
  SW_ASSIGN_OR_RETURN(auto subscriber,
                      WeightSubscriber::Create(client, trainer_layout, engine_layout, a.rank, options));
  SW_ASSIGN_OR_RETURN(const EngineReplica where, LocateEngineRank(engine_model, a.job, a.engine_layout, a.rank));
  const std::unique_ptr<SourceRegistry> registry = MakeCoordinatorSourceRegistry(client);
  CommittedVersionSources sources(*registry, engine_model, where);
  nlohmann::json caught_up;        // what the catch-up did, in the first step report
  std::vector<std::byte> scratch;  // verification buffer, reused for every version
  if (a.catch_up) {
    const double begin = MonotonicSeconds();
    // The trainers hold their pushes until this process joins (or for at most their
    // catch_up_hold_s), so the version the live engines serve stays served while it is read.
    CatchUpOptions catch_up;
    catch_up.hold = subscriber.get();
    // The demo's trainers push back to back: trainer rank 0 acknowledges the hold within one
    // step (compute + push), so the catch-up loads the held version, not an older one.
    catch_up.hold_ack_wait_s = std::min(5.0, a.timeout_s / 4);
    auto report = CatchUpFromLiveEngines(*registry, engine_model, where, subscriber->incarnation(),
                                         subscriber->weights(), catch_up);
    if (report.ok() && report->version > 0) {
      // Checked like every pushed version: the bytes must equal version N recomputed here.
      SW_RETURN_IF_ERROR(
          VerifyStep(checkpoint, engine_layout, a.rank, report->version, subscriber->weights(), who, scratch));
      SW_RETURN_IF_ERROR(subscriber->AdoptVersion(report->version));
      nlohmann::json from = nlohmann::json::object();
      for (const auto& [instance, bytes] : report->load.bytes_per_instance) from[instance] = bytes;
      caught_up = {{"version", report->version},
                   {"seconds", MonotonicSeconds() - begin},
                   {"bytes", report->load.bytes_from_sources},
                   {"from", from},
                   {"from_disk", report->load.bytes_from_disk},
                   {"held", report->held},
                   {"attempts", report->attempts},
                   {"failures", report->failures},
                   {"load_s", report->load.seconds},
                   {"incarnation", subscriber->incarnation()},
                   {"verified", true}};
    } else {
      caught_up = {{"version", 0},
                   {"incarnation", subscriber->incarnation()},
                   {"why", report.ok() ? "no live engine serves a version" : report.status().ToString()}};
    }
  }
  if (subscriber->committed_version() == 0) {
    // No catch-up (first start, or nothing to catch up from): start from the checkpoint.
    SW_RETURN_IF_ERROR(LoadEngineStart(a, checkpoint, engine_layout, subscriber->weights()));
  }
  // The fault of the demo's failure tests hits the first process of the rank only.
  const Fault fault = a.catch_up ? Fault{} : ReadFault("engine", a.rank, engine_layout.world_size());
  SW_RETURN_IF_ERROR(subscriber->Connect());
  if (subscriber->committed_version() > 0) {
    (void)sources.Publish(subscriber->committed_version(), subscriber->weights());
  }
  const auto last = static_cast<std::uint64_t>(a.steps);
  while (subscriber->committed_version() < last) {
    // (Re)join: wait for a push to admit this process, or for the trainers to finish; the
    // trainers push every step, so no admission within --timeout means they are gone.
    std::uint64_t version = 0;
    const auto join_deadline =
        std::chrono::steady_clock::now() +
        std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(a.timeout_s));
    while (version == 0) {
      auto admitted = subscriber->Join(1.0);
      if (admitted.ok()) {
        version = *admitted;
      } else if (admitted.status().code() != ErrorCode::kTimedOut) {
        return admitted.status();
      } else if (GetString(client, FinishedKey(a.job), 0).ok()) {
        return Status::Ok();  // the last push went out before this process could join
      } else if (std::chrono::steady_clock::now() >= join_deadline) {
        return TimedOut(fmt::format("engine rank {}: no push admitted it within {} s and the trainers did not "
                                    "finish (are they still running?)",
                                    a.rank, a.timeout_s));
      }
    }
    SW_RETURN_IF_ERROR(PutString(client, AdmittedKey(a.job, a.rank), std::to_string(version)));
    for (; version <= last; ++version) {
      if (fault.kind == "engine-die" && fault.step == static_cast<int>(version)) raise(SIGKILL);
      sources.Withdraw(subscriber->back_buffer());  // the update writes it
      SW_RETURN_IF_ERROR(subscriber->BeginUpdate(version));
      auto update = subscriber->WaitForUpdate(version);
      const int step = static_cast<int>(version);
      if (!update.ok()) {
        nlohmann::json report{{"verified", false},
                              {"missed", update.status().ToString()},
                              {"committed_version", subscriber->committed_version()},
                              {"holds_committed_version", subscriber->holds_committed_version()}};
        SW_RETURN_IF_ERROR(PutString(client, StatsKey(a.job, step, "engine", a.rank), report.dump()));
        if (version == last) return Status::Ok();
        break;  // skipped by the trainers until it joins again
      }
      SW_RETURN_IF_ERROR(VerifyStep(checkpoint, engine_layout, a.rank, version, subscriber->weights(), who, scratch));
      (void)sources.Publish(version, subscriber->weights());  // restarting engines may load it now
      nlohmann::json report{{"bytes", update->bytes},
                            {"sources", update->sources},
                            {"wait_s", update->wait_s},
                            {"verified", true},
                            {"committed_version", subscriber->committed_version()}};
      if (!caught_up.is_null()) {
        report["caught_up"] = caught_up;
        caught_up = nullptr;
      }
      SW_RETURN_IF_ERROR(PutString(client, StatsKey(a.job, step, "engine", a.rank), report.dump()));
    }
  }
  return Status::Ok();
}

Status RunEngine(const WorkerArgs& a, Rendezvous& rendezvous, const Checkpoint& checkpoint,
                 const Layout& trainer_layout, const Layout& engine_layout) {
  const std::string who = EngineRankLabel(a.rank);
  WeightSyncOptions options = SyncOptions(a);
  options.double_buffered = a.double_buffer;
  SW_ASSIGN_OR_RETURN(auto subscriber,
                      WeightSubscriber::Create(rendezvous, trainer_layout, engine_layout, a.rank, options));
  SW_RETURN_IF_ERROR(LoadEngineStart(a, checkpoint, engine_layout, subscriber->weights()));
  // Verification scratch, sized once to the largest shard and kept for every step: a fresh
  // allocation per step (mmap, page faults, munmap of up to 65 MB in each engine process
  // between two pushes) is avoidable work beside the trainers on a small host.
  std::vector<std::byte> scratch;
  std::uint64_t largest = 0;
  for (const ShardRef& shard : engine_layout.rank(a.rank).shards) {
    largest = std::max<std::uint64_t>(largest, static_cast<std::uint64_t>(shard.box.numel()) *
                                                   DTypeSize(engine_layout.tensors()[shard.tensor].dtype));
  }
  scratch.resize(largest);
  SW_RETURN_IF_ERROR(VerifyStep(checkpoint, engine_layout, a.rank, 0, subscriber->weights(), who, scratch));
  SW_RETURN_IF_ERROR(subscriber->Connect());
  const Fault fault = ReadFault("engine", a.rank, engine_layout.world_size());
  for (int step = 1; step <= a.steps; ++step) {
    const auto version = static_cast<std::uint64_t>(step);
    if (fault.kind == "engine-die" && fault.step == step) raise(SIGKILL);
    SW_RETURN_IF_ERROR(subscriber->BeginUpdate(version));
    auto update = subscriber->WaitForUpdate(version);
    if (!update.ok() && update.status().code() == ErrorCode::kTimedOut) {
      // This engine missed the version (a trainer gave up on it, or it waited too long): it takes
      // the next one, which rewrites every byte. Single-buffered, its weights meanwhile may mix
      // the committed and the missed version (holds_committed_version false).
      nlohmann::json report{{"verified", false},
                            {"missed", update.status().ToString()},
                            {"committed_version", subscriber->committed_version()},
                            {"holds_committed_version", subscriber->holds_committed_version()}};
      SW_RETURN_IF_ERROR(PutString(rendezvous, StatsKey(a.job, step, "engine", a.rank), report.dump()));
      continue;
    }
    const double committed_at = MonotonicSeconds();
    SW_ASSIGN_OR_RETURN(const UpdateStats stats, std::move(update));
    const bool check = a.verify == "every" || step == a.steps;
    if (check) {
      SW_RETURN_IF_ERROR(VerifyStep(checkpoint, engine_layout, a.rank, version, subscriber->weights(), who, scratch));
    }
    nlohmann::json report{{"bytes", stats.bytes},
                          {"sources", stats.sources},
                          {"wait_s", stats.wait_s},
                          {"committed_at", committed_at},
                          {"relayed_from", stats.relayed_from},
                          {"relay_s", stats.relay_s},
                          {"anon_huge_bytes", AnonHugeBytes()},
                          {"verified", check},
                          {"unchecked", !check},
                          {"committed_version", subscriber->committed_version()}};
    SW_RETURN_IF_ERROR(PutString(rendezvous, StatsKey(a.job, step, "engine", a.rank), report.dump()));
  }
  return Status::Ok();
}

Status RunWorker(const WorkerArgs& a) {
  const DemoCheckpoint input{a.checkpoint, a.config};
  SW_ASSIGN_OR_RETURN(const ModelDescription model, DescribeDemoModel(input));
  SW_ASSIGN_OR_RETURN(const Checkpoint checkpoint, Checkpoint::Open(a.checkpoint));
  SW_ASSIGN_OR_RETURN(const Layout trainer_layout, MakeLayoutFromString(model, a.trainer_layout));
  SW_ASSIGN_OR_RETURN(const ModelDescription engine_model, DescribeDemoEngineModel(model, a.engine_dtype));
  SW_ASSIGN_OR_RETURN(const Layout engine_layout, MakeLayoutFromString(engine_model, a.engine_layout));
  CoordinatorClientOptions co;
  co.address = a.coordinator;
  co.unavailable_timeout_s = a.timeout_s;
  SW_ASSIGN_OR_RETURN(auto rendezvous, CoordinatorClient::Connect(co));
  if (a.role == "trainer") return RunTrainer(a, *rendezvous, checkpoint, trainer_layout, engine_layout);
  if (a.dynamic_membership) {
    return RunDynamicEngine(a, *rendezvous, checkpoint, engine_model, trainer_layout, engine_layout);
  }
  return RunEngine(a, *rendezvous, checkpoint, trainer_layout, engine_layout);
}

}  // namespace

void AddRlSyncWorkerCommand(CLI::App& app, int* exit_code) {
  auto args = std::make_shared<WorkerArgs>();
  CLI::App* cmd = app.add_subcommand("worker", "internal: one process of `demo rl-sync`");
  cmd->group("");  // hidden from --help
  cmd->add_option("--role", args->role)->required()->check(CLI::IsMember({"trainer", "engine"}));
  cmd->add_option("--rank", args->rank)->required()->check(NonNegativeNumber());
  cmd->add_option("--coordinator", args->coordinator)->required();
  cmd->add_option("--job", args->job)->required();
  cmd->add_option("--checkpoint", args->checkpoint)->required();
  cmd->add_option("--config", args->config);
  cmd->add_option("--trainer-layout", args->trainer_layout)->required();
  cmd->add_option("--engine-layout", args->engine_layout)->required();
  cmd->add_option("--steps", args->steps)->required();
  cmd->add_option("--engine-dtype", args->engine_dtype);
  cmd->add_flag("--double-buffer", args->double_buffer);
  cmd->add_flag("--dynamic-membership", args->dynamic_membership);
  cmd->add_flag("--catch-up", args->catch_up);
  cmd->add_flag("--verify-digests", args->verify_digests);
  cmd->add_option("--verify", args->verify)->check(CLI::IsMember({"every", "last"}));
  cmd->add_option("--engine-memory", args->engine_memory)->check(CLI::IsMember({"auto", "shared", "private"}));
  cmd->add_option("--lanes", args->lanes)->check(CLI::Range(0, static_cast<int>(kMaxLanes)));
  cmd->add_option("--staging-bytes", args->staging_bytes);
  cmd->add_option("--staging-slots", args->staging_slots);
  cmd->add_option("--concurrency", args->max_concurrency);
  cmd->add_flag("--relay", args->relay);
  cmd->add_flag("--staging-only", args->staging_only);
  cmd->add_flag("--lane-copies", args->lane_copies);
  cli::AddModelRulesOption(cmd);
  cmd->add_option("--timeout", args->timeout_s)->required();
  cmd->callback([args, exit_code] {
    const Status status = RunWorker(*args);
    if (!status.ok()) {
      const std::string who =
          args->role == "trainer" ? fmt::format("trainer {}", args->rank) : EngineRankLabel(args->rank);
      fmt::print(stderr, "shardwire: {}: {}\n", who, status.ToString());
      *exit_code = status.code() == ErrorCode::kVerificationFailed ? 3 : 1;
    }
  });
}

}  // namespace shardwire::cli
