// bench/p2p_load_bench: P2P model loading (issue 8 item 9), every figure beside a
// reference measured in the same run.
//
//  1. A generated TinyLlama-1.1B-shaped bf16 checkpoint (--layers, default 10: 1.14 GB).
//  2. Disk load of the target layout's shards (mmap + one copy into memory allocated before
//     the load, as LoadShardsFromCheckpoint does for a seed or a fallback), page cache cold
//     (`sync; echo 3 > /proc/sys/vm/drop_caches`; where that is refused, the closest real
//     thing: posix_fadvise(DONTNEED) on every checkpoint file) and warm, one thread per rank
//     and the ranks in turn. The fair comparison: an engine allocates its parameter memory,
//     then loads the weights into it (vLLM allocates the model, then loads), so the disk
//     loads and the P2P load land in memory of the same kind allocated the same way
//     (transport::PrivateMapping: private, 2 MiB pages, populated), and allocation is
//     timed apart ("alloc") from the load ("load") for both. Warm disk loads run before
//     the P2P loads and after each; the reference is the fastest of them all.
//  3. P2P load: a `shardwire seed` (--seed-layout, default tp=2) and `shardwire load`
//     (--load-layout, default tp=4, --verify-against the checkpoint: exit 0 only when
//     every byte matches) as separate processes through an in-process coordinator. Its
//     LOADED line gives alloc_seconds (the instance's memory, before the load) and seconds
//     (from the start of loading to the commit: agents, listing, planning, READs, digests)
//     with the slowest rank's phases (create, list, handshake, transfer, finish); compared
//     with the warm and cold disk loads, load phase alone and alloc + load.
//  4. Digest verification: the loader's hashing time (xxh3-64 over the landed bytes,
//     summed over ranks) against the ranks' load time, and xxh3 over 256 MiB against
//     memcpy of the same bytes on one thread.
//  5. Fleet (item 5): a seed capped at --fleet-cap B/s per rank (default: a single load
//     takes --fleet-round s, default 1) serving a small checkpoint (default a 2-layer
//     Llama-shaped 3.7 MB one; --fleet-layers N: TinyLlama shapes with N layers);
//     one load alone (= one round), then --fleet loaders (default 8, all --serve)
//     started together; the time until the last commits, in rounds, against the goal
//     1 + log2(fleet).
//
// Usage: p2p_load_bench [--layers N] [--work DIR] [--seed-layout L] [--load-layout L]
//                       [--repeats N] [--fleet N] [--fleet-layers N] [--fleet-cap B/s] [--fleet-round S]
//                       [--skip-cold] [--skip-fleet] [--shardwire PATH]
// Needs ~3x the checkpoint in /dev/shm + RAM (seed and loader arenas).
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <span>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "shardwire/checkpoint.h"
#include "shardwire/checkpoint_generator.h"
#include "shardwire/coordinator.h"
#include "shardwire/model_config.h"
#include "shardwire/model_description.h"
#include "shardwire/model_layouts.h"
#include "shardwire/shard_io.h"
#include "transport/private_arena.h"
#include "workflows/xxh3_dispatch.h"

extern char** environ;

namespace {

using namespace shardwire;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

double Since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

struct Args {
  std::string shardwire = SHARDWIRE_BIN;
  int layers = 10;
  std::string work = "/tmp/shardwire-p2p-bench";
  std::string seed_layout = "tp=2";
  std::string load_layout = "tp=4";
  int repeats = 3;
  int fleet = 8;
  int fleet_layers = 0;
  double fleet_cap = 0;
  double fleet_round = 1.0;
  bool skip_cold = false;
  bool skip_fleet = false;
  bool fleet_only = false;
};

// A child process (stdout and stderr into a file), SIGKILLed and reaped when dropped.
class Child {
 public:
  Child(const std::string& program, const std::vector<std::string>& args, const std::string& out) : out_(out) {
    std::vector<std::string> a = {program};
    a.insert(a.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& s : a) argv.push_back(s.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    if (posix_spawn(&pid_, program.c_str(), &fa, nullptr, argv.data(), environ) != 0) pid_ = -1;
    posix_spawn_file_actions_destroy(&fa);
  }
  ~Child() { Kill(); }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  // Exit code (or -signal), -1000 on timeout.
  int Wait(double timeout_s) {
    const auto deadline = Clock::now() + std::chrono::duration<double>(timeout_s);
    while (pid_ > 0) {
      int st = 0;
      if (waitpid(pid_, &st, WNOHANG) == pid_) {
        pid_ = -1;
        return WIFEXITED(st) ? WEXITSTATUS(st) : -WTERMSIG(st);
      }
      if (Clock::now() > deadline) return -1000;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return -1001;
  }
  void Kill() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
      pid_ = -1;
    }
  }
  const std::string& out() const { return out_; }

 private:
  pid_t pid_ = -1;
  std::string out_;
};

std::string Slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::map<std::string, std::string> Fields(const std::string& line) {
  std::map<std::string, std::string> out;
  std::istringstream in(line);
  std::string tok;
  while (in >> tok) {
    const auto eq = tok.find('=');
    if (eq != std::string::npos) out[tok.substr(0, eq)] = tok.substr(eq + 1);
  }
  return out;
}

[[noreturn]] void Die(const std::string& what) {
  fmt::print(stderr, "p2p_load_bench: {}\n", what);
  std::exit(1);
}

template <typename T>
T Must(Result<T> r, const char* what) {
  if (!r.ok()) Die(fmt::format("{}: {}", what, r.status().ToString()));
  return std::move(*r);
}

// Generates (or reuses) a TinyLlama-shaped checkpoint; returns its directory.
std::string Generate(const Args& a, int layers) {
  const std::string out = fmt::format("{}/generate-{}.out", a.work, layers);
  Child c(a.shardwire, {"generate", "--config", "tinyllama-1.1b", "--layers", std::to_string(layers), "--out", a.work},
          out);
  if (c.Wait(600) != 0) Die("shardwire generate failed: " + Slurp(out));
  std::string text = Slurp(out), last;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) last = line;
  return fs::path(last).parent_path().string();
}

// The fleet's default model: Llama-shaped, 2 layers, 3.7 MB. Small on purpose: with
// every source rank capped so that one load takes --fleet-round seconds, up to 2 x 8
// capped transfers run at once, and their sum must stay well below what this host
// can copy, or the fleet measures the host instead of the doubling.
std::string GenerateSmall(const Args& a) {
  constexpr const char* kLlama = R"({"model_type": "llama", "hidden_size": 256, "num_hidden_layers": 2,
      "num_attention_heads": 8, "num_key_value_heads": 8, "intermediate_size": 512, "vocab_size": 1024,
      "torch_dtype": "bfloat16"})";
  const std::string dir = a.work + "/fleet-llama-2L";
  const ModelConfig config = Must(ParseModelConfig(kLlama, "fleet"), "fleet config");
  const ModelDescription model = Must(DescribeModel(config), "fleet model");
  if (Status st = GenerateCheckpointDirectory(model, dir, {.seed = 3}); !st.ok()) Die(st.ToString());
  return dir;
}

ModelDescription Describe(const std::string& dir) {
  const std::string text = Slurp(dir + "/config.json");
  const ModelConfig config = Must(ParseModelConfig(text, dir), "config");
  return Must(DescribeModel(config), "describe");
}

// Drops the page cache (or, where refused, the checkpoint files' pages). Returns how.
std::string DropCaches(const std::string& dir) {
  ::sync();
  {
    std::ofstream f("/proc/sys/vm/drop_caches");
    if (f && (f << "3\n") && f.flush()) return "drop_caches";
  }
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().extension() != ".safetensors") continue;
    const int fd = ::open(e.path().c_str(), O_RDONLY);
    if (fd < 0) continue;
    (void)::fdatasync(fd);
    (void)::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    ::close(fd);
  }
  return "posix_fadvise(DONTNEED) (drop_caches refused)";
}

// Wall seconds of a disk load of every rank's shards of `layout`, in two phases timed apart:
// `alloc` allocates each rank's destination memory, `load` copies the shards into it
// (Checkpoint::Open, mmap, LoadShardsFromCheckpoint). With `huge_pages` the memory is what
// `shardwire load` allocates for the P2P load (transport::PrivateMapping: private, 2 MiB
// pages, populated; the same call), so both loads land in memory of the same kind,
// allocated the same way, before the load starts, as an engine allocates its parameters
// before it loads weights into them. Without, zero-filled std::vectors (4 KiB pages, first
// touch by the kernel's zeroing at allocation): the reference of earlier runs.
// One thread per rank (as `shardwire load` runs its ranks) or the ranks in turn.
struct DiskTimes {
  double alloc = 0, load = 0;
  double total() const { return alloc + load; }
};
DiskTimes DiskLoad(const std::string& dir, const Layout& layout, bool threads_per_rank, bool huge_pages) {
  const int world = layout.world_size();
  std::vector<transport::PrivateMapping> huge(static_cast<std::size_t>(world));
  std::vector<std::vector<std::byte>> vec(static_cast<std::size_t>(world));
  auto for_ranks = [&](auto&& fn) {
    std::vector<std::thread> threads;
    for (int r = 0; r < world; ++r) {
      if (threads_per_rank) {
        threads.emplace_back(fn, r);
      } else {
        fn(r);
      }
    }
    for (auto& th : threads) th.join();
  };
  DiskTimes t;
  auto t0 = Clock::now();
  for_ranks([&](int r) {
    const std::size_t bytes = std::max<std::size_t>(layout.rank(r).buffer_bytes, 64);
    if (huge_pages) {
      huge[static_cast<std::size_t>(r)] = Must(transport::PrivateMapping::Map(bytes), "disk-load memory");
    } else {
      vec[static_cast<std::size_t>(r)].resize(bytes);
    }
  });
  t.alloc = Since(t0);
  t0 = Clock::now();
  const Checkpoint ck = Must(Checkpoint::Open(dir), "open checkpoint");
  std::vector<Status> st(static_cast<std::size_t>(world), Status::Ok());
  for_ranks([&](int r) {
    const std::size_t bytes = layout.rank(r).buffer_bytes;
    std::span<std::byte> buf = huge_pages ? std::span<std::byte>(huge[static_cast<std::size_t>(r)].data(), bytes)
                                          : std::span<std::byte>(vec[static_cast<std::size_t>(r)]).first(bytes);
    st[static_cast<std::size_t>(r)] = LoadShardsFromCheckpoint(ck, layout, r, buf);
  });
  t.load = Since(t0);
  for (const Status& s : st)
    if (!s.ok()) Die("disk load: " + s.ToString());
  return t;
}

class Bench {
 public:
  explicit Bench(const Args& a) : a_(a) {
    CoordinatorServerOptions so;
    server_ = Must(CoordinatorServer::Start(so), "coordinator");
    CoordinatorClientOptions co;
    co.address = server_->address();
    client_ = Must(CoordinatorClient::Connect(co), "coordinator client");
  }

  std::unique_ptr<Child> Seed(const std::string& dir, const std::string& id, const std::string& layout, double cap) {
    std::vector<std::string> args = {
        "seed", "--coordinator", server_->address(), "--checkpoint", dir, "--layout", layout, "--instance-id",
        id,     "--quiet"};
    if (cap > 0) args.insert(args.end(), {"--bandwidth", fmt::format("{:.0f}", cap)});
    auto c = std::make_unique<Child>(a_.shardwire, args, fmt::format("{}/{}.out", a_.work, id));
    const auto deadline = Clock::now() + std::chrono::seconds(300);
    const int world = MakeLayoutFromString(Describe(dir), layout)->world_size();
    while (Clock::now() < deadline) {
      auto list = Must(client_->ListSources("", SourceState::kReady), "list");
      int n = 0;
      for (const auto& r : list) n += r.instance_id == id;
      if (n == world) return c;
      if (c->Wait(0) != -1000) Die(id + " exited: " + Slurp(c->out()));
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    Die(id + " never became READY");
  }

  std::unique_ptr<Child> StartLoad(const std::string& dir, const std::string& id, const std::string& layout, bool serve,
                                   double cap) {
    std::vector<std::string> args = {"load",     "--coordinator", server_->address(), "--config", dir + "/config.json",
                                     "--layout", layout,          "--instance-id",    id,         "--verify-against",
                                     dir,        "--quiet",       "--report",         Report(id)};
    if (serve) args.insert(args.end(), {"--serve", "--bandwidth", fmt::format("{:.0f}", cap)});
    fs::remove(Report(id));
    return std::make_unique<Child>(a_.shardwire, args, fmt::format("{}/{}.out", a_.work, id));
  }

  std::map<std::string, std::string> AwaitReport(const std::string& id, Child& c) {
    const auto deadline = Clock::now() + std::chrono::seconds(600);
    while (Clock::now() < deadline) {
      std::ifstream in(Report(id));
      std::string line;
      if (in && std::getline(in, line) && !line.empty()) {
        auto f = Fields(line);
        if (f["verified"] != "byte-for-byte") Die(id + " not verified: " + line);
        return f;
      }
      const int rc = c.Wait(0);
      if (rc != -1000) Die(fmt::format("{} exited ({}) without a report: {}", id, rc, Slurp(c.out())));
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    Die(id + " did not report");
  }

  std::string Report(const std::string& id) const { return fmt::format("{}/{}.report", a_.work, id); }

 private:
  const Args& a_;
  std::unique_ptr<CoordinatorServer> server_;
  std::unique_ptr<CoordinatorClient> client_;
};

double Gbps(double bytes, double s) { return s > 0 ? bytes / s / 1e9 : 0; }

void DigestVsMemcpy() {
  const std::size_t n = 256u << 20;
  std::vector<std::byte> src(n), dst(n);
  for (std::size_t i = 0; i < n; i += 4096) src[i] = std::byte(i >> 12);
  std::memcpy(dst.data(), src.data(), n);  // fault in
  double best_copy = 1e30, best_hash = 1e30;
  std::uint64_t sink = 0;
  for (int i = 0; i < 3; ++i) {
    auto t = Clock::now();
    std::memcpy(dst.data(), src.data(), n);
    best_copy = std::min(best_copy, Since(t));
    t = Clock::now();
    sink ^= XXH3_64bits(src.data(), n);
    best_hash = std::min(best_hash, Since(t));
  }
  fmt::print(
      "  xxh3-64 over 256 MiB, one thread       {:7.2f} GB/s   memcpy same bytes {:6.2f} GB/s   ratio {:.2f}x{}\n",
      Gbps(n, best_hash), Gbps(n, best_copy), best_copy / best_hash, sink == 42 ? " " : "");
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) Die("missing value of " + k);
      return argv[++i];
    };
    if (k == "--layers")
      a.layers = std::stoi(next());
    else if (k == "--work")
      a.work = next();
    else if (k == "--seed-layout")
      a.seed_layout = next();
    else if (k == "--load-layout")
      a.load_layout = next();
    else if (k == "--repeats")
      a.repeats = std::stoi(next());
    else if (k == "--fleet")
      a.fleet = std::stoi(next());
    else if (k == "--fleet-layers")
      a.fleet_layers = std::stoi(next());
    else if (k == "--fleet-cap")
      a.fleet_cap = std::stod(next());
    else if (k == "--fleet-round")
      a.fleet_round = std::stod(next());
    else if (k == "--skip-cold")
      a.skip_cold = true;
    else if (k == "--fleet-only")
      a.fleet_only = true;
    else if (k == "--skip-fleet")
      a.skip_fleet = true;
    else if (k == "--shardwire")
      a.shardwire = next();
    else
      Die("unknown option " + k + " (see the comment at the top of bench/p2p_load_bench.cc)");
  }
  ::signal(SIGPIPE, SIG_IGN);
  fs::create_directories(a.work);
  double load1[3] = {0, 0, 0};
  if (FILE* f = std::fopen("/proc/loadavg", "r")) {
    if (std::fscanf(f, "%lf %lf %lf", &load1[0], &load1[1], &load1[2]) != 3) load1[0] = -1;
    std::fclose(f);
  }
  fmt::print("p2p_load_bench: load average at start {:.2f} {:.2f} {:.2f} ({} cores)\n", load1[0], load1[1], load1[2],
             std::thread::hardware_concurrency());

  Bench bench(a);
  if (!a.fleet_only) {
    const std::string dir = Generate(a, a.layers);
    const ModelDescription model = Describe(dir);
    const Layout layout = Must(MakeLayoutFromString(model, a.load_layout), "load layout");
    std::uint64_t bytes = 0;
    for (int r = 0; r < layout.world_size(); ++r) bytes += layout.rank(r).buffer_bytes;
    fmt::print("checkpoint {} ({} layers, {:.3f} GB); target layout {} ({} ranks, {:.3f} GB of shards); seed {}\n\n",
               dir, a.layers, static_cast<double>(model.total_bytes()) / 1e9, a.load_layout, layout.world_size(),
               static_cast<double>(bytes) / 1e9, a.seed_layout);

    // The fair comparison: a real engine allocates its parameter memory before it loads the
    // weights (vLLM allocates the model, then loads into it), so both loads land in memory of
    // the same kind (transport::PrivateMapping: private, 2 MiB pages, populated), allocated
    // the same way before the load; allocation is timed apart and printed for both. The goal
    // is held to the fastest warm disk load of the run (thread per rank or ranks in turn,
    // best of every repeat, load phase only); "incl. alloc" compares alloc + load of both.
    // Disk loads into vectors (4 KiB pages; the reference before session 9) are printed for
    // comparison only.
    const double b = static_cast<double>(bytes);
    auto line = [&](const char* what, const DiskTimes& t) {
      fmt::print("  {:<44} alloc {:6.3f} s  load {:6.3f} s {:6.2f} GB/s  (alloc + load {:6.3f} s)\n", what, t.alloc,
                 t.load, Gbps(b, t.load), t.total());
    };
    fmt::print("disk load of the {} shards (mmap + copy into memory allocated before the load):\n", a.load_layout);
    DiskTimes cold{1e30, 1e30};
    std::string how = "not measured";
    if (!a.skip_cold) {
      how = DropCaches(dir);
      const DiskTimes ct = DiskLoad(dir, layout, true, true);
      line(fmt::format("cold ({}), thread per rank", how).c_str(), ct);
      (void)DropCaches(dir);
      const DiskTimes cs = DiskLoad(dir, layout, false, true);
      line("cold, ranks in turn", cs);
      cold = ct.load < cs.load ? ct : cs;
    }
    DiskTimes warm{1e30, 1e30};
    double warm_total = 1e30;
    auto warm_disk = [&](const char* when) {
      for (bool per_rank : {true, false}) {
        const DiskTimes t = DiskLoad(dir, layout, per_rank, true);
        line(fmt::format("warm, {}, {}", per_rank ? "thread per rank" : "ranks in turn", when).c_str(), t);
        if (t.load < warm.load) warm = t;
        warm_total = std::min(warm_total, t.total());
      }
    };
    warm_disk("before the P2P loads");
    warm_disk("before the P2P loads");
    line("warm, into vectors (4 KiB pages), thread per rank", DiskLoad(dir, layout, true, false));

    {
      auto seed = bench.Seed(dir, "bench-seed", a.seed_layout, 0);
      fmt::print(
          "P2P load {} <- seed {} (separate processes; seed: private huge pages made read-only; loader: memory "
          "allocated before "
          "the load like the disk loads', read into by kernel copy; verified byte for byte; a warm disk load pair "
          "after each):\n",
          a.load_layout, a.seed_layout);
      struct P2p {
        double alloc, load, create, list, handshake, transfer, finish, digest, rank_s;
        std::string disk_bytes;
      };
      std::vector<P2p> runs;
      for (int i = 0; i < a.repeats; ++i) {
        const std::string id = fmt::format("bench-load-{}", i);
        auto c = bench.StartLoad(dir, id, a.load_layout, false, 0);
        auto f = bench.AwaitReport(id, *c);
        c->Wait(120);
        runs.push_back({std::stod(f["alloc_seconds"]), std::stod(f["seconds"]), std::stod(f["create_seconds"]),
                        std::stod(f["list_seconds"]), std::stod(f["handshake_seconds"]),
                        std::stod(f["transfer_seconds"]), std::stod(f["finish_seconds"]),
                        std::stod(f["digest_seconds"]), std::stod(f["rank_seconds"]), f["disk_bytes"]});
        const P2p& p = runs.back();
        fmt::print(
            "  P2P load {}: alloc {:6.3f} s  load {:6.3f} s {:6.2f} GB/s  (slowest rank: create {:.3f}, list {:.3f}, "
            "handshake {:.3f}, transfer {:.3f}, finish {:.3f} s; digest {:.3f} of {:.3f} rank-s) disk_bytes={}\n",
            i + 1, p.alloc, p.load, Gbps(b, p.load), p.create, p.list, p.handshake, p.transfer, p.finish, p.digest,
            p.rank_s, p.disk_bytes);
        warm_disk(fmt::format("after P2P load {}", i + 1).c_str());
      }
      fmt::print(
          "reference: the fastest warm disk load of this run, load {:.3f} s (alloc + load {:.3f} s: the fastest "
          "total){}\n",
          warm.load, warm_total,
          a.skip_cold ? "" : fmt::format("; cold {:.3f} s (alloc + load {:.3f} s)", cold.load, cold.total()));
      for (std::size_t i = 0; i < runs.size(); ++i) {
        const P2p& p = runs[i];
        fmt::print(
            "  P2P load {}: vs warm disk {:5.2f}x (load)  {:5.2f}x (alloc + load)   vs cold disk {:5.2f}x (load)  "
            "{:5.2f}x (alloc + load)   digest {:.1f}% of rank-s\n",
            i + 1, warm.load / p.load, warm_total / (p.alloc + p.load), a.skip_cold ? 0.0 : cold.load / p.load,
            a.skip_cold ? 0.0 : cold.total() / (p.alloc + p.load), p.rank_s > 0 ? 100 * p.digest / p.rank_s : 0);
      }
      fmt::print("  (x = disk seconds / P2P seconds: above 1 the P2P load was faster)\n");
    }
    fmt::print("digest verification cost:\n");
    DigestVsMemcpy();
  }
  if (a.skip_fleet) return 0;
  const std::string fdir = a.fleet_layers > 0 ? Generate(a, a.fleet_layers) : GenerateSmall(a);
  const ModelDescription fmodel = Describe(fdir);
  const Layout seed_layout = Must(MakeLayoutFromString(fmodel, "tp=2"), "fleet layout");
  const double cap =
      a.fleet_cap > 0 ? a.fleet_cap : static_cast<double>(seed_layout.rank(0).buffer_bytes) / a.fleet_round;
  fmt::print(
      "\nfleet: checkpoint {} ({:.3f} GB), 1 seed tp=2 + {} loaders tp=2 (all --serve), every source rank capped "
      "at {:.0f} B/s\n",
      fdir, static_cast<double>(fmodel.total_bytes()) / 1e9, a.fleet, cap);
  auto seed = bench.Seed(fdir, "fleet-seed", "tp=2", cap);
  double t1 = 0;
  {
    auto c = bench.StartLoad(fdir, "fleet-single", "tp=2", false, 0);
    t1 = std::stod(bench.AwaitReport("fleet-single", *c)["seconds"]);
    c->Wait(120);
  }
  fmt::print("  one load alone from the capped seed: {:.3f} s (= one round)\n", t1);
  std::vector<std::unique_ptr<Child>> nodes;
  const std::int64_t spawn_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
          .count();
  for (int i = 0; i < a.fleet; ++i)
    nodes.push_back(bench.StartLoad(fdir, fmt::format("node-{}", i), "tp=2", true, cap));
  std::vector<std::tuple<std::int64_t, std::string, std::map<std::string, std::string>>> done;
  std::int64_t first_start = std::numeric_limits<std::int64_t>::max();
  for (int i = 0; i < a.fleet; ++i) {
    const std::string id = fmt::format("node-{}", i);
    auto f = bench.AwaitReport(id, *nodes[static_cast<std::size_t>(i)]);
    first_start = std::min<std::int64_t>(first_start, std::stoll(f["start_ms"]));
    done.emplace_back(std::stoll(f["end_ms"]), id, f);
  }
  std::sort(done.begin(), done.end());
  for (const auto& [end, id, f] : done) {
    fmt::print("  {:<7} began {:6.3f} s  committed {:6.3f} s = round {:4.2f}  from {}\n", id,
               static_cast<double>(std::stoll(f.at("start_ms")) - first_start) / 1e3,
               static_cast<double>(end - first_start) / 1e3, static_cast<double>(end - first_start) / 1e3 / t1,
               f.at("sources"));
  }
  const double last = static_cast<double>(std::get<0>(done.back()) - first_start) / 1e3;
  const double with_startup = static_cast<double>(std::get<0>(done.back()) - spawn_ms) / 1e3;
  fmt::print(
      "  fleet of {}: last commit {:.3f} s after the first loader began = {:.2f} single-load times (goal <= 1 + "
      "log2({}) = {:.0f}); {:.3f} s = {:.2f} rounds counting process start-up\n",
      a.fleet, last, last / t1, a.fleet, 1 + std::log2(static_cast<double>(a.fleet)), with_startup, with_startup / t1);
  nodes.clear();
  return 0;
}
