#include "cli/p2p_load_demo.h"

#include <signal.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include <fmt/format.h>

#include "cli/child_processes.h"
#include "cli/demo_checkpoint.h"
#include "cli/model_rules_option.h"
#include "shardwire/checkpoint.h"
#include "shardwire/coordinator.h"
#include "shardwire/model_layouts.h"

namespace shardwire::cli {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

struct P2pDemoOptions {
  std::string checkpoint;
  std::string config;
  std::string generate;
  int layers = 0;
  std::string work_dir;
  int fleet = 8;
  double fleet_bandwidth = 0;  // bytes/s per source rank; 0 = derived from the model size
  double timeout_s = 120;
};

// key=value fields of a LOADED line.
std::map<std::string, std::string> ParseReport(const std::string& line) {
  std::map<std::string, std::string> out;
  std::istringstream in(line);
  std::string token;
  while (in >> token) {
    const auto eq = token.find('=');
    if (eq != std::string::npos) out[token.substr(0, eq)] = token.substr(eq + 1);
  }
  return out;
}

class Demo {
 public:
  Demo(const P2pDemoOptions& o, DemoCheckpoint input, std::string dir, CoordinatorClient& client)
      : o_(o), input_(std::move(input)), dir_(std::move(dir)), client_(client) {}

  Status Seed(const std::string& id, const std::string& layout, const std::string& revision, double bandwidth) {
    std::vector<std::string> args = {"seed",         "--coordinator",   client_.address(),
                                     "--checkpoint", input_.checkpoint, "--layout",
                                     layout,         "--instance-id",   id,
                                     "--quiet"};
    if (!input_.config.empty()) args.insert(args.end(), {"--config", input_.config});
    if (!revision.empty()) args.insert(args.end(), {"--revision", revision});
    if (bandwidth > 0) args.insert(args.end(), {"--bandwidth", fmt::format("{:.0f}", bandwidth)});
    for (const auto& rules : ModelRulesFiles()) args.insert(args.end(), {"--model-rules", rules});
    SW_RETURN_IF_ERROR(children_.Spawn(id, args));
    return AwaitServing(id);
  }

  Status StartLoad(const std::string& id, const std::string& layout, const std::string& revision, double bandwidth,
                   double stall_s = 2) {
    std::vector<std::string> args = {"load",
                                     "--coordinator",
                                     client_.address(),
                                     "--config",
                                     ConfigPath(),
                                     "--layout",
                                     layout,
                                     "--instance-id",
                                     id,
                                     "--verify-against",
                                     input_.checkpoint,
                                     "--serve",
                                     "--quiet",
                                     "--report",
                                     ReportPath(id),
                                     "--stall-timeout",
                                     fmt::format("{}", stall_s)};
    if (!revision.empty()) args.insert(args.end(), {"--revision", revision});
    if (bandwidth > 0) args.insert(args.end(), {"--bandwidth", fmt::format("{:.0f}", bandwidth)});
    for (const auto& rules : ModelRulesFiles()) args.insert(args.end(), {"--model-rules", rules});
    if (std::getenv("SW_P2P_DEBUG")) std::erase(args, std::string("--quiet"));
    layouts_[id] = layout;
    return children_.Spawn(id, args);
  }

  // Waits until every rank of `id` is READY in the registry.
  Status AwaitServing(const std::string& id) {
    const auto deadline = Clock::now() + std::chrono::duration<double>(o_.timeout_s);
    while (Clock::now() < deadline) {
      SW_ASSIGN_OR_RETURN(auto records, client_.ListSources("", SourceState::kReady));
      int ready = 0, world = 0;
      for (const auto& r : records) {
        if (r.instance_id == id) ++ready, world = r.world_size;
      }
      if (world > 0 && ready == world) return Status::Ok();
      for (const ChildExit& e : children_.ReapExited()) {
        return Internal(fmt::format("{} exited before serving ({})", e.label, e.Describe()));
      }
      if (ChildProcesses::InterruptRequested()) return ChildProcesses::Interrupted();
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return TimedOut(fmt::format("{} did not serve within {} s", id, o_.timeout_s));
  }

  Result<std::map<std::string, std::string>> AwaitReport(const std::string& id) {
    const auto deadline = Clock::now() + std::chrono::duration<double>(o_.timeout_s);
    while (Clock::now() < deadline) {
      std::ifstream in(ReportPath(id));
      std::string line;
      if (in && std::getline(in, line) && !line.empty()) {
        auto fields = ParseReport(line);
        reports_[id] = fields;
        return fields;
      }
      for (const ChildExit& e : children_.ReapExited()) {
        if (e.label == id || (!e.ok() && !killed_.contains(e.label))) {
          return Internal(fmt::format("{} exited ({})", e.label, e.Describe()));
        }
      }
      if (ChildProcesses::InterruptRequested()) return ChildProcesses::Interrupted();
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return TimedOut(fmt::format("{} did not finish loading within {} s", id, o_.timeout_s));
  }

  // A ratio with the digits that matter: "315", "2.53", "0.0042" (never "0.00", never "2.53e+04").
  static std::string Ratio(double r) {
    if (r >= 100) return fmt::format("{:.0f}", r);
    if (r >= 0.01 || r == 0) return fmt::format("{:.2f}", r);
    return fmt::format("{:.2g}", r);
  }

  void PrintRow(const std::string& id) {
    const auto& r = reports_[id];
    const double seconds = std::stod(r.at("seconds"));
    const double disk = std::stod(r.at("disk_seconds"));
    fmt::print("  {:<12} {:<6} {:>9} B {:>8.4f} s {:>7.3f} GB/s  disk {:>7.4f} s ({:>5}x)  {}  from {}{}\n", id,
               layouts_[id], r.at("bytes"), seconds, std::stod(r.at("gbps")), disk,
               Ratio(disk > 0 ? seconds / disk : 0.0), r.at("verified"), r.at("sources"),
               r.at("failed") != "0" ? fmt::format("  ({} source failures re-planned)", r.at("failed")) : "");
  }

  ChildProcesses& children() { return children_; }
  // Kills a child on purpose (its death is then not an error).
  void Kill(const std::string& label) {
    const pid_t pid = children_.PidOf(label);
    killed_.insert(label);
    if (pid > 0) ::kill(pid, SIGKILL);
  }
  std::string ConfigPath() const {
    if (!input_.config.empty()) return input_.config;
    auto checkpoint = Checkpoint::Open(input_.checkpoint);
    return checkpoint.ok() ? checkpoint->config_path() : "";
  }
  std::map<std::string, std::map<std::string, std::string>>& reports() { return reports_; }

 private:
  std::string ReportPath(const std::string& id) const { return (fs::path(dir_) / (id + ".report")).string(); }

  const P2pDemoOptions& o_;
  DemoCheckpoint input_;
  std::string dir_;
  CoordinatorClient& client_;
  ChildProcesses children_;
  std::map<std::string, std::string> layouts_;
  std::set<std::string> killed_;
  std::map<std::string, std::map<std::string, std::string>> reports_;
};

Status RunP2pDemo(const P2pDemoOptions& o) {
  const std::string work_dir =
      o.work_dir.empty() ? (fs::temp_directory_path() / "shardwire-demo").string() : o.work_dir;
  SW_ASSIGN_OR_RETURN(const DemoCheckpoint input,
                      ResolveDemoCheckpoint(o.checkpoint, o.config, o.generate, o.layers, work_dir));
  SW_ASSIGN_OR_RETURN(const ModelDescription model, DescribeDemoModel(input));
  const std::string dir = (fs::path(work_dir) / fmt::format("p2p-{}", ::getpid())).string();
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return IoError(fmt::format("cannot create {}: {}", dir, ec.message()));

  CoordinatorServerOptions server_options;
  server_options.source_stale_after_s = 5;
  SW_ASSIGN_OR_RETURN(auto server, CoordinatorServer::Start(server_options));
  CoordinatorClientOptions client_options;
  client_options.address = server->address();
  SW_ASSIGN_OR_RETURN(auto client, CoordinatorClient::Connect(client_options));
  Demo demo(o, input, dir, *client);
  fmt::print("P2P model loading: {} ({} tensors, {} bytes), coordinator {} (embedded)\n", input.checkpoint,
             model.tensors.size(), model.total_bytes(), server->address());
  fmt::print(
      "Every instance is one process with all its ranks; every load is compared byte for byte with the\n"
      "checkpoint; 'disk' is the same shards read from the checkpoint (page cache warm) in the same run.\n\n");

  SW_RETURN_IF_ERROR(demo.Seed("seed-tp2", "tp=2", "", 0));
  fmt::print("seed-tp2 (tp=2) serves the checkpoint from disk\n");
  // Waves: TP sizes 4 and 1, then 8 and 2 (row-parallel o_proj / down_proj shards
  // change shape at every TP change). Each loaded instance serves the next waves.
  std::vector<std::vector<std::pair<std::string, std::string>>> waves;
  for (const auto& wave : std::vector<std::vector<std::pair<std::string, std::string>>>{
           {{"w1-tp4", "tp=4"}, {"w1-tp1", "tp=1"}}, {{"w2-tp8", "tp=8"}, {"w2-tp2", "tp=2"}}}) {
    waves.emplace_back();
    for (const auto& [id, layout] : wave) {
      auto l = MakeLayoutFromString(model, layout);
      if (l.ok()) {
        waves.back().emplace_back(id, layout);
      } else {
        fmt::print("{} skipped: this model cannot take {}: {}\n", id, layout, l.status().message());
      }
    }
  }
  int wave_no = 0;
  for (const auto& wave : waves) {
    ++wave_no;
    for (const auto& [id, layout] : wave) SW_RETURN_IF_ERROR(demo.StartLoad(id, layout, "", 0));
    fmt::print("wave {}:\n", wave_no);
    for (const auto& [id, layout] : wave) {
      SW_RETURN_IF_ERROR(demo.AwaitReport(id).status());
      SW_RETURN_IF_ERROR(demo.AwaitServing(id));
      demo.PrintRow(id);
    }
  }
  // Wave 3: a slow (bandwidth-capped) source joins, a new instance starts reading
  // from everyone, and the slow source is killed (SIGKILL) mid-load.
  // Its share of the load (about a fifth) takes it ~4 s at this cap; the loader's
  // process needs ~1 s to start, so the kill at 2 s lands mid-read.
  const double slow = std::max(4e3, static_cast<double>(model.total_bytes()) / 40);
  SW_RETURN_IF_ERROR(demo.Seed("victim", "tp=2", "", slow));
  SW_RETURN_IF_ERROR(demo.StartLoad("w3-tp4", "tp=4", "", 0, 1.0));
  std::this_thread::sleep_for(std::chrono::milliseconds(2000));
  demo.Kill("victim");
  fmt::print(
      "wave 3: source 'victim' (capped at {:.0f} B/s per rank) killed with SIGKILL 2 s after the load started:\n",
      slow);
  SW_RETURN_IF_ERROR(demo.AwaitReport("w3-tp4").status());
  demo.PrintRow("w3-tp4");
  demo.children().KillAll(2.0);

  // The fleet: a fresh revision so only its own seed serves it.
  const double per_rank_cap =
      o.fleet_bandwidth > 0 ? o.fleet_bandwidth : std::max(50e3, static_cast<double>(model.total_bytes()) / 2 / 1.0);
  fmt::print(
      "\nFleet: 1 seed + {} loaders started together; every source rank capped at {:.0f} B/s (a source NIC);\n"
      "each loaded instance serves the rest at once.\n",
      o.fleet, per_rank_cap);
  const std::string revision = fmt::format("fleet-{}", ::getpid());
  Demo fleet(o, input, dir, *client);
  SW_RETURN_IF_ERROR(fleet.Seed("fleet-seed", "tp=2", revision, per_rank_cap));
  // Reference: one load alone from the seed.
  SW_RETURN_IF_ERROR(fleet.StartLoad("single", "tp=2", revision, 0));
  SW_ASSIGN_OR_RETURN(auto single, fleet.AwaitReport("single"));
  // One round: the single load's own time (its LOADED line: from the start of
  // loading to the commit), the same measure as the fleet's times below.
  const double t1 = std::stod(single.at("seconds"));
  fleet.children().KillAll(1.0);
  Demo fleet2(o, input, dir, *client);
  const std::string revision2 = revision + "b";
  SW_RETURN_IF_ERROR(fleet2.Seed("fleet-seed", "tp=2", revision2, per_rank_cap));
  for (int i = 0; i < o.fleet; ++i) {
    SW_RETURN_IF_ERROR(fleet2.StartLoad(fmt::format("node-{}", i), "tp=2", revision2, per_rank_cap));
  }
  // Times count from the moment the first loader began loading (after its process
  // started, connected and described the model: 8 processes starting at once on a
  // 2-core host take seconds), so rounds compare load times, not process start-up.
  std::vector<std::pair<std::int64_t, std::string>> done;
  std::int64_t first_start = std::numeric_limits<std::int64_t>::max();
  for (int i = 0; i < o.fleet; ++i) {
    const std::string id = fmt::format("node-{}", i);
    SW_ASSIGN_OR_RETURN(auto r, fleet2.AwaitReport(id));
    first_start = std::min<std::int64_t>(first_start, std::stoll(r.at("start_ms")));
    done.emplace_back(static_cast<std::int64_t>(std::stoll(r.at("end_ms"))), id);
  }
  std::sort(done.begin(), done.end());
  fmt::print("single load from the seed alone: {:.3f} s of loading (= one round)\n", t1);
  for (const auto& [end, id] : done) {
    const auto& r = fleet2.reports()[id];
    const double t = static_cast<double>(end - first_start) / 1e3;
    fmt::print("  round {:>4.1f}  {:<8} began {:>6.3f} s, done {:>6.3f} s  from {}\n", t / t1, id,
               static_cast<double>(std::stoll(r.at("start_ms")) - first_start) / 1e3, t, r.at("sources"));
  }
  const double last = static_cast<double>(done.back().first - first_start) / 1e3;
  fmt::print("fleet of {} loaded in {:.3f} s = {:.2f} single-load times (goal: at most 1 + log2({}) = {:.0f})\n",
             o.fleet, last, last / t1, o.fleet, 1 + std::log2(static_cast<double>(o.fleet)));
  fleet2.children().KillAll(1.0);
  fs::remove_all(dir, ec);
  return Status::Ok();
}

}  // namespace

void AddP2pLoadCommand(CLI::App& demo, int* exit_code) {
  auto o = std::make_shared<P2pDemoOptions>();
  CLI::App* cmd = demo.add_subcommand("p2p-load", "P2P model loading across TP sizes, with a source killed mid-load");
  cmd->add_option("--checkpoint", o->checkpoint,
                  "checkpoint (default: $SHARDWIRE_SHARED_DIR/models/tiny-llama3-bf16, else shared/models/ beside the "
                  "source tree, else generated)");
  cmd->add_option("--config", o->config, "HF config.json (default: the one beside the checkpoint)");
  cmd->add_option("--generate", o->generate, "HF config to generate a checkpoint from");
  cmd->add_option("--layers", o->layers, "with --generate: decoder layers (0 = as in the config)");
  cmd->add_option("--work-dir", o->work_dir, "where generated checkpoints and reports go");
  cmd->add_option("--fleet", o->fleet, "loaders started together in the fleet part")->capture_default_str();
  cmd->add_option("--fleet-bandwidth", o->fleet_bandwidth, "bytes/s per source rank in the fleet (0 = auto)");
  cmd->add_option("--timeout", o->timeout_s, "seconds any single wait may take")->capture_default_str();
  AddModelRulesOption(cmd);  // passed on to the seed and load processes
  cmd->callback([o, exit_code] {
    Status s = RunP2pDemo(*o);
    if (!s.ok()) {
      fmt::print(stderr, "shardwire demo p2p-load: {}\n", s.ToString());
      *exit_code = ChildProcesses::InterruptRequested() ? 130 : 1;
    }
  });
}

}  // namespace shardwire::cli
