#include "cli/p2p_commands.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <map>
#include <memory>
#include <mutex>
#include <thread>

#include <fmt/format.h>

#include "cli/demo_checkpoint.h"
#include "cli/metrics_option.h"
#include "cli/model_rules_option.h"
#include "cli/option_checks.h"
#include "model/atomic_file.h"
#include "shardwire/checkpoint.h"
#include "shardwire/coordinator.h"
#include "shardwire/model_layouts.h"
#include "shardwire/model_loading.h"
#include "shardwire/shard_io.h"
#include "shardwire/source_registry.h"
#include "transport/private_arena.h"

namespace shardwire::cli {
namespace {

std::atomic<bool> g_stop{false};

void OnSignal(int) { g_stop.store(true); }

void InstallStopHandlers() {
  struct sigaction sa {};
  sa.sa_handler = OnSignal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

Result<std::unique_ptr<CoordinatorClient>> Connect(const std::string& address) {
  CoordinatorClientOptions options;
  options.address = address;
  return CoordinatorClient::Connect(options);
}

void WaitForStop() {
  while (!g_stop.load()) std::this_thread::sleep_for(std::chrono::milliseconds(50));
}

// The interrupt hook of the work before serving (reading a checkpoint, a load): a SIGINT or
// SIGTERM stops it, and the command exits non-zero, instead of finishing the work first.
Status StopRequested() {
  return g_stop.load() ? FailedPrecondition("interrupted by SIGINT or SIGTERM; nothing was committed or served")
                       : Status::Ok();
}

// Destroys every source at once, each on its own thread: each deregisters within its
// own bound (ModelSourceOptions::shutdown_timeout_s, after at most a bounded heartbeat and
// re-registration), so stopping with the coordinator gone takes the slowest rank's bound,
// not their sum.
void StopSources(std::vector<std::unique_ptr<ModelSource>>& sources) {
  std::vector<std::thread> stoppers;
  stoppers.reserve(sources.size());
  for (auto& source : sources) stoppers.emplace_back([&source] { source.reset(); });
  for (auto& t : stoppers) t.join();
  sources.clear();
}

struct SeedOptions {
  std::string coordinator;
  std::string checkpoint;
  std::string config;
  std::string layout = "tp=1";
  std::string instance_id;
  std::string revision;
  double bandwidth = 0;
  bool quiet = false;
  std::optional<int> metrics_port;
};

Status RunSeed(const SeedOptions& o) {
  InstallStopHandlers();
  MetricsRegistry metrics;  // before the sources: it outlives them
  SW_ASSIGN_OR_RETURN(const auto metrics_http, StartMetricsEndpoint(o.metrics_port, metrics, "127.0.0.1", o.quiet));
  SW_ASSIGN_OR_RETURN(auto client, Connect(o.coordinator));
  auto registry = MakeCoordinatorSourceRegistry(*client);
  SW_ASSIGN_OR_RETURN(const ModelDescription model, cli::DescribeDemoModel({o.checkpoint, o.config}));
  SW_ASSIGN_OR_RETURN(const Checkpoint checkpoint, Checkpoint::Open(o.checkpoint));
  // The content digest is computed even under a user revision: loaders check a disk
  // fallback checkpoint against it (kSourceAttrContent).
  SW_ASSIGN_OR_RETURN(const std::string content, CheckpointRevision(checkpoint, StopRequested));
  const std::string revision = o.revision.empty() ? content : o.revision;
  SW_ASSIGN_OR_RETURN(const ModelIdentity identity, MakeModelIdentity(model, revision));
  SW_ASSIGN_OR_RETURN(const Layout layout, MakeLayoutFromString(model, o.layout));
  const std::string instance = o.instance_id.empty() ? fmt::format("seed-{}", ::getpid()) : o.instance_id;
  std::vector<std::unique_ptr<ModelSource>> ranks;
  for (int r = 0; r < layout.world_size(); ++r) {
    ModelSourceOptions so;
    so.instance_id = instance;
    so.layout = o.layout;
    so.rank = r;
    so.bandwidth_bytes_per_s = o.bandwidth;
    so.content_revision = content;
    if (o.metrics_port) so.agent.metrics = &metrics;
    SW_RETURN_IF_ERROR(StopRequested());
    SW_ASSIGN_OR_RETURN(auto source, ModelSource::Create(*registry, model, identity, so, [&](std::span<std::byte> buf) {
                          return LoadShardsFromCheckpoint(checkpoint, layout, r, buf, {.interrupt = StopRequested});
                        }));
    ranks.push_back(std::move(source));
  }
  if (!o.quiet)
    fmt::print("SEED READY instance={} layout={} identity={} revision={}\n", instance, o.layout, identity.Digest(),
               revision);
  std::fflush(stdout);
  WaitForStop();
  StopSources(ranks);  // deregisters
  return Status::Ok();
}

struct LoadOptions {
  std::string coordinator;
  std::string config;
  std::string layout = "tp=1";
  std::string verify_against;
  std::string fallback_checkpoint;
  std::string instance_id;
  std::string revision;
  bool serve = false;
  double bandwidth = 0;
  double stall_timeout_s = 3;
  bool quiet = false;
  std::string report;  ///< write the LOADED line (plus timestamps) to this file
  std::optional<int> metrics_port;
};

std::int64_t UnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

Status RunLoad(const LoadOptions& o) {
  InstallStopHandlers();
  MetricsRegistry metrics;  // before the loaders and sources: it outlives them
  SW_ASSIGN_OR_RETURN(const auto metrics_http, StartMetricsEndpoint(o.metrics_port, metrics, "127.0.0.1", o.quiet));
  SW_ASSIGN_OR_RETURN(auto client, Connect(o.coordinator));
  auto registry = MakeCoordinatorSourceRegistry(*client);
  ModelDescription model;
  if (!o.verify_against.empty()) {
    SW_ASSIGN_OR_RETURN(model, cli::DescribeDemoModel({o.verify_against, o.config}));
  } else {
    SW_ASSIGN_OR_RETURN(model, cli::DescribeConfig(o.config, 0));
  }
  SW_ASSIGN_OR_RETURN(const Layout layout, MakeLayoutFromString(model, o.layout));
  const std::string instance = o.instance_id.empty() ? fmt::format("load-{}", ::getpid()) : o.instance_id;
  const int world = layout.world_size();
  // The instance's parameter memory is allocated before the load, as an engine does (vLLM
  // allocates the model, then loads the weights into it): private 2 MiB-page memory,
  // populated for writing (transport::PrivateMapping, the same call the disk reference of
  // bench/p2p_load_bench uses), one thread per rank. Timed apart from the load
  // (alloc_seconds): on a VM, the first use of memory the host never backed costs the
  // kernel's zeroing of it (clear_page_erms), whoever loads into it.
  std::vector<transport::PrivateMapping> memory(static_cast<std::size_t>(world));
  std::vector<Status> alloc_status(static_cast<std::size_t>(world), Status::Ok());
  const auto alloc_start = std::chrono::steady_clock::now();
  {
    std::vector<std::thread> alloc_threads;
    for (int r = 0; r < world; ++r) {
      alloc_threads.emplace_back([&, r] {
        auto m = transport::PrivateMapping::Map(std::max<std::uint64_t>(layout.rank(r).buffer_bytes, 64));
        if (m.ok()) {
          memory[static_cast<std::size_t>(r)] = std::move(*m);
        } else {
          alloc_status[static_cast<std::size_t>(r)] = m.status().WithContext(fmt::format("rank {} memory", r));
        }
      });
    }
    for (auto& t : alloc_threads) t.join();
  }
  for (const Status& s : alloc_status) SW_RETURN_IF_ERROR(s);
  const double alloc_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - alloc_start).count();
  std::vector<std::unique_ptr<ModelLoader>> loaders(static_cast<std::size_t>(world));
  std::vector<Result<LoadReport>> reports(static_cast<std::size_t>(world), Internal("not run"));
  const auto start = std::chrono::steady_clock::now();
  const std::int64_t start_ms = UnixMs();
  std::vector<double> create_seconds(static_cast<std::size_t>(world), 0.0);
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      ModelLoaderOptions lo;
      if (o.metrics_port) lo.metrics = &metrics;
      const transport::PrivateMapping& mem = memory[static_cast<std::size_t>(r)];
      lo.buffer = std::span<std::byte>(mem.data(), mem.size());
      // Same-host sources are read into huge-page memory by kernel copy (what ReadPath::kAuto
      // picks for the loader's own private huge-page arena; docs/benchmarks_history.md "Issue 8 item 9").
      if (mem.huge_pages()) lo.agent.read_path = ReadPath::kKernelCopy;
      // All ranks run in this process: no more lanes (copy threads, each a UCX worker to
      // create) than cores in all. On the 2-core development VMs, tp=4 with the default 2
      // lanes per rank created 8 UCX workers per load (0.13-0.42 s of the load, mostly page
      // faults in UCX's shared-memory FIFOs) and ran 8 copy threads on 2 cores.
      lo.agent.lanes = std::max<std::uint32_t>(
          1, std::min<std::uint32_t>(kDefaultLanes, std::max(1u, std::thread::hardware_concurrency()) /
                                                        static_cast<std::uint32_t>(world)));
      lo.instance_id = instance;
      lo.layout = o.layout;
      lo.rank = r;
      lo.revision = o.revision;
      lo.checkpoint_path = o.fallback_checkpoint;
      lo.stall_timeout_s = o.stall_timeout_s;
      lo.lease_priority = start_ms;  // one priority for all ranks of the instance
      lo.interrupt = StopRequested;
      const auto create_start = std::chrono::steady_clock::now();
      auto loader = ModelLoader::Create(*registry, model, lo);
      create_seconds[static_cast<std::size_t>(r)] =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - create_start).count();
      if (!loader.ok()) {
        reports[static_cast<std::size_t>(r)] = loader.status();
        return;
      }
      loaders[static_cast<std::size_t>(r)] = std::move(*loader);
      reports[static_cast<std::size_t>(r)] = loaders[static_cast<std::size_t>(r)]->Load();
    });
  }
  for (auto& t : threads) t.join();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const std::int64_t end_ms = UnixMs();
  std::uint64_t bytes = 0, disk = 0;
  double digest_seconds = 0, rank_seconds = 0;  // summed over ranks (they run in parallel)
  // Phases, the slowest rank's (ranks run in parallel): ModelLoader::Create (agent,
  // registration of the memory), then LoadReport's list / handshake / transfer / finish.
  double create_max = 0, list_max = 0, handshake_max = 0, transfer_max = 0, finish_max = 0, paused_max = 0;
  std::map<std::string, std::uint64_t> per_instance;
  std::vector<std::string> failed;
  for (int r = 0; r < world; ++r) {
    const auto& rep = reports[static_cast<std::size_t>(r)];
    if (!rep.ok()) {
      std::string all;
      for (int k = 0; k < world; ++k) {
        const auto& other = reports[static_cast<std::size_t>(k)];
        if (!other.ok()) all += fmt::format("{}rank {}: {}", all.empty() ? "" : "; ", k, other.status().message());
      }
      return Status(rep.status().code(), fmt::format("instance {}: {}", instance, all));
    }
    bytes += rep->bytes_from_sources + rep->bytes_from_disk;
    disk += rep->bytes_from_disk;
    digest_seconds += rep->digest_seconds;
    rank_seconds += rep->seconds;
    create_max = std::max(create_max, create_seconds[static_cast<std::size_t>(r)]);
    list_max = std::max(list_max, rep->list_seconds);
    handshake_max = std::max(handshake_max, rep->handshake_seconds);
    transfer_max = std::max(transfer_max, rep->transfer_seconds);
    finish_max = std::max(finish_max, rep->finish_seconds);
    paused_max = std::max(paused_max, rep->paused_seconds);
    for (const auto& [id, b] : rep->bytes_per_instance) per_instance[id] += b;
    for (const auto& f : rep->failed) failed.push_back(fmt::format("rank {}: {}", r, f));
    if (o.quiet) continue;
    for (const auto& s : rep->skipped) fmt::print("  rank {} skipped {}\n", r, s);
    fmt::print("  rank {}: {} bytes ({} from disk) in {:.3f} s, {} moves, {} re-read, digest {:.3f} s\n", r,
               rep->bytes_from_sources + rep->bytes_from_disk, rep->bytes_from_disk, rep->seconds, rep->moves,
               rep->rereads, rep->digest_seconds);
  }
  std::string sources;
  for (const auto& [id, b] : per_instance) sources += fmt::format("{}{}:{}", sources.empty() ? "" : ",", id, b);
  if (!o.quiet) {
    for (const auto& f : failed) fmt::print("  failed source {}\n", f);
  }
  // A loaded instance serves the moment it commits (issue 8 item 5), before the
  // optional --verify-against check (a test oracle; the load itself verified every
  // move's digest). A failed check stops serving (the sources deregister) and exits 1.
  std::vector<std::unique_ptr<ModelSource>> sources_out;
  if (o.serve) {
    for (auto& loader : loaders) {
      ModelSourceOptions so;
      so.bandwidth_bytes_per_s = o.bandwidth;
      SW_ASSIGN_OR_RETURN(auto source, loader->BecomeSource(so));
      sources_out.push_back(std::move(source));
    }
  }
  auto buffer_of = [&](int r) {
    return o.serve ? sources_out[static_cast<std::size_t>(r)]->buffer()
                   : loaders[static_cast<std::size_t>(r)]->buffer();
  };
  std::string verified = "no";
  double disk_seconds = 0;
  if (!o.verify_against.empty()) {
    // The independent read doubles as the disk-load reference: the same shards, in
    // the same run, from the page cache the seed warmed (mmap + one copy per rank).
    SW_ASSIGN_OR_RETURN(const Checkpoint checkpoint, Checkpoint::Open(o.verify_against));
    for (int r = 0; r < world; ++r) {
      const auto buf = buffer_of(r);
      std::vector<std::byte> expected(buf.size());
      const auto disk_start = std::chrono::steady_clock::now();
      SW_RETURN_IF_ERROR(LoadShardsFromCheckpoint(checkpoint, layout, r, expected));
      disk_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - disk_start).count();
      if (!std::equal(expected.begin(), expected.end(), buf.begin())) {
        const auto at = std::mismatch(expected.begin(), expected.end(), buf.begin()).first - expected.begin();
        return VerificationFailed(
            fmt::format("instance {} rank {}: byte {} differs from {}", instance, r, at, o.verify_against));
      }
    }
    verified = "byte-for-byte";
  }
  const std::string line = fmt::format(
      "LOADED instance={} layout={} bytes={} disk_bytes={} seconds={:.4f} gbps={:.4f} sources={} failed={} "
      "verified={} disk_seconds={:.4f} start_ms={} end_ms={} digest_seconds={:.4f} rank_seconds={:.4f} "
      "alloc_seconds={:.4f} create_seconds={:.4f} list_seconds={:.4f} handshake_seconds={:.4f} "
      "transfer_seconds={:.4f} finish_seconds={:.4f} paused_seconds={:.2f}",
      instance, o.layout, bytes, disk, seconds, seconds > 0 ? static_cast<double>(bytes) / seconds / 1e9 : 0.0,
      sources.empty() ? "-" : sources, failed.size(), verified, disk_seconds, start_ms, end_ms, digest_seconds,
      rank_seconds, alloc_seconds, create_max, list_max, handshake_max, transfer_max, finish_max, paused_max);
  if (!o.quiet) fmt::print("{}\n", line);
  std::fflush(stdout);
  if (!o.report.empty()) {
    // A report that cannot be written fails the command (a script reading it with --quiet
    // would otherwise see success and no report).
    SW_RETURN_IF_ERROR(
        model::WriteFileAtomically(o.report, line + "\n").WithContext(fmt::format("--report {}", o.report)));
  }
  if (!o.serve) return Status::Ok();
  if (!o.quiet) fmt::print("SERVING instance={}\n", instance);
  std::fflush(stdout);
  WaitForStop();
  StopSources(sources_out);  // deregisters
  return Status::Ok();
}

}  // namespace

void AddSeedCommand(CLI::App& app, int* exit_code) {
  auto o = std::make_shared<SeedOptions>();
  CLI::App* cmd = app.add_subcommand("seed", "serve a checkpoint's shards as a P2P source instance until interrupted");
  cmd->add_option("--coordinator", o->coordinator,
                  "coordinator address HOST:PORT (token: SHARDWIRE_TOKEN; TLS: SHARDWIRE_TLS_ROOT_CERT names the CA "
                  "certificate)")
      ->required();
  cmd->add_option("--checkpoint", o->checkpoint, "checkpoint file, index or directory")->required();
  cmd->add_option("--config", o->config, "HF config.json (default: the one beside the checkpoint)");
  cmd->add_option("--layout", o->layout, "the instance's layout, e.g. tp=2")->capture_default_str();
  cmd->add_option("--instance-id", o->instance_id, "instance id (default: seed-<pid>)");
  cmd->add_option("--revision", o->revision, "content revision (default: xxh3 digest of the checkpoint)");
  cmd->add_option("--bandwidth", o->bandwidth, "bytes/s each rank serves at most (0 = unlimited)")
      ->capture_default_str()
      ->check(NonNegativeNumber());
  cmd->add_flag("--quiet", o->quiet, "print nothing but errors");
  AddMetricsPortOption(cmd, &o->metrics_port);
  AddModelRulesOption(cmd);
  cmd->callback([o, exit_code] {
    Status s = RunSeed(*o);
    if (!s.ok()) {
      fmt::print(stderr, "shardwire seed: {}\n", s.ToString());
      *exit_code = 1;
    }
  });
}

void AddLoadCommand(CLI::App& app, int* exit_code) {
  auto o = std::make_shared<LoadOptions>();
  CLI::App* cmd = app.add_subcommand("load", "load an instance from the coordinator's P2P sources");
  cmd->add_option("--coordinator", o->coordinator,
                  "coordinator address HOST:PORT (token: SHARDWIRE_TOKEN; TLS: SHARDWIRE_TLS_ROOT_CERT names the CA "
                  "certificate)")
      ->required();
  cmd->add_option("--config", o->config, "HF config.json of the model")->required();
  cmd->add_option("--layout", o->layout, "the new instance's layout, e.g. tp=4")->capture_default_str();
  cmd->add_option("--verify-against", o->verify_against, "checkpoint to compare every loaded byte with");
  cmd->add_option("--checkpoint", o->fallback_checkpoint, "checkpoint for the disk fallback (default: none)");
  cmd->add_option("--instance-id", o->instance_id, "instance id (default: load-<pid>)");
  cmd->add_option("--revision", o->revision, "content revision (default: the one the sources serve)");
  cmd->add_option("--stall-timeout", o->stall_timeout_s,
                  "seconds without progress before a source counts as dead (at least 0.1: a source given up on is "
                  "marked STALE for every loader)")
      ->check(AtLeast(kMinStallTimeoutSeconds))
      ->capture_default_str();
  cmd->add_option("--report", o->report, "also write the LOADED line to this file (atomically)");
  cmd->add_flag("--quiet", o->quiet, "print nothing but errors (use with --report)");
  AddMetricsPortOption(cmd, &o->metrics_port);
  CLI::Option* serve =
      cmd->add_flag("--serve", o->serve, "after loading, serve the instance as a source until interrupted");
  cmd->add_option("--bandwidth", o->bandwidth, "with --serve: bytes/s each rank serves at most")
      ->capture_default_str()
      ->check(NonNegativeNumber())
      ->needs(serve);  // without --serve nothing is served: a cap there would be ignored in silence
  AddModelRulesOption(cmd);
  cmd->callback([o, exit_code] {
    Status s = RunLoad(*o);
    if (!s.ok()) {
      fmt::print(stderr, "shardwire load: {}\n", s.ToString());
      *exit_code = 1;
    }
  });
}

}  // namespace shardwire::cli
