// coordinator_bench: the coordinator's source registry under load (issue 7).
//
// 1,000 sources, 64 concurrent clients (threads, each with its own
// CoordinatorClient, i.e. its own gRPC channel), against an in-process
// CoordinatorServer with in-memory state and with Redis state (a redis-server
// this program starts on a free port). Per operation (register, heartbeat,
// list of the 1,000 READY sources of one model identity): ops/s, p50/p99
// latency, and the CPU used (this process = server + clients; redis-server
// separately, from /proc).
//
// Same-run references: redis-benchmark (Debian redis-tools) with -c 64 of
//   - PING (the floor of one Redis round trip),
//   - HSET of a heartbeat field (the raw command a heartbeat boils down to),
//   - EVALSHA of the very Lua script HeartbeatSource runs,
// and, below the gRPC layer, the Redis state object called directly from 64
// threads with 1, 8 and 64 pooled connections (which picks the pool default).
// Every coordinator figure is printed with its ratio to the EVALSHA reference.
//
// Capacity question: can 10,000 sources heartbeating once a second be held on
// these 2 cores? Printed as heartbeat ops/s / 10,000 and the cores it took.
//
// Usage: coordinator_bench [--sources N] [--clients C] [--seconds S]
#include <fmt/format.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "control/coordinator_state.h"
#include "control/coordinator_state_redis.h"
#include "control/redis_fixture.h"
#include "shardwire/coordinator.h"

using namespace shardwire;
using Clock = std::chrono::steady_clock;

namespace {

struct Figures {
  double ops_per_s = 0;
  double p50_ms = 0;
  double p99_ms = 0;
  double process_cores = 0;  // CPU seconds of this process / wall seconds
  double redis_cores = 0;    // CPU seconds of redis-server / wall seconds
  long errors = 0;
};

double ProcessCpuSeconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

double PidCpuSeconds(pid_t pid) {
  if (pid <= 0) return 0;
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto close = s.rfind(')');
  if (close == std::string::npos) return 0;
  std::istringstream fields(s.substr(close + 2));
  std::string f;
  double ticks = 0;
  for (int i = 3; i <= 15 && fields >> f; ++i) {
    if (i == 14 || i == 15) ticks += std::stod(f);  // utime, stime
  }
  return ticks / static_cast<double>(sysconf(_SC_CLK_TCK));
}

// Runs `op(thread, i)` from `threads` threads, each until `per_thread` ops
// (when > 0) or `seconds` passed; returns the figures.
template <typename Op>
Figures Run(int threads, long per_thread, double seconds, pid_t redis_pid, Op op) {
  std::vector<std::vector<double>> lat(threads);
  std::atomic<long> errors{0};
  std::atomic<bool> go{false};
  const double cpu0 = ProcessCpuSeconds(), rcpu0 = PidCpuSeconds(redis_pid);
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      while (!go.load()) std::this_thread::yield();
      auto end = Clock::now() + std::chrono::duration<double>(seconds);
      for (long i = 0; per_thread > 0 ? i < per_thread : Clock::now() < end; ++i) {
        auto a = Clock::now();
        bool ok = op(t, i);
        lat[t].push_back(std::chrono::duration<double, std::milli>(Clock::now() - a).count());
        if (!ok) ++errors;
      }
    });
  }
  auto start = Clock::now();
  go = true;
  for (auto& th : pool) th.join();
  double wall = std::chrono::duration<double>(Clock::now() - start).count();
  std::vector<double> all;
  for (auto& v : lat) all.insert(all.end(), v.begin(), v.end());
  std::sort(all.begin(), all.end());
  Figures f;
  if (!all.empty()) {
    f.ops_per_s = static_cast<double>(all.size()) / wall;
    f.p50_ms = all[all.size() / 2];
    f.p99_ms = all[std::min(all.size() - 1, all.size() * 99 / 100)];
  }
  f.process_cores = (ProcessCpuSeconds() - cpu0) / wall;
  f.redis_cores = (PidCpuSeconds(redis_pid) - rcpu0) / wall;
  f.errors = errors;
  return f;
}

struct BenchLine {
  double rps = 0, p50 = 0, p99 = 0;
  bool ok = false;
};

// redis-benchmark --csv: "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms",
// "p99_latency_ms","max_latency_ms"
BenchLine RedisBenchmark(int port, int clients, long requests, const std::string& command) {
  std::string cmd = fmt::format("redis-benchmark -h 127.0.0.1 -p {} -c {} -n {} --csv {} 2>/dev/null", port, clients,
                                requests, command);
  BenchLine out;
  FILE* f = ::popen(cmd.c_str(), "r");
  if (f == nullptr) return out;
  char buf[4096];
  while (std::fgets(buf, sizeof(buf), f) != nullptr) {
    std::string line(buf);
    if (line.rfind("\"test\"", 0) == 0) continue;
    std::vector<std::string> cols;
    std::string cur;
    bool quoted = false;
    for (char c : line) {
      if (c == '"') {
        quoted = !quoted;
      } else if (c == ',' && !quoted) {
        cols.push_back(cur);
        cur.clear();
      } else if (c != '\n') {
        cur += c;
      }
    }
    cols.push_back(cur);
    if (cols.size() >= 7) {
      out.rps = std::stod(cols[1]);
      out.p50 = std::stod(cols[4]);
      out.p99 = std::stod(cols[6]);
      out.ok = true;
    }
  }
  ::pclose(f);
  if (!out.ok) std::fprintf(stderr, "redis-benchmark gave no figure: %s\n", cmd.c_str());
  return out;
}

SourceRecord MakeSource(int i) {
  SourceRecord r;
  r.model_identity = "bench-model";
  r.instance_id = fmt::format("inst-{:04d}", i / 8);
  r.rank = i % 8;
  r.world_size = 8;
  r.layout = "tp=8";
  r.layout_fingerprint = "fp";
  r.metadata.assign(512, std::byte{0x5a});  // a transport metadata blob of a typical size
  r.attributes["region"] = "1";
  return r;
}

void PrintRow(const std::string& name, const Figures& f, double ref_p50) {
  std::printf("%-44s %10.0f %9.3f %9.3f %8.2fx %7.2f %7.2f %6ld\n", name.c_str(), f.ops_per_s, f.p50_ms, f.p99_ms,
              ref_p50 > 0 ? f.p50_ms / ref_p50 : 0.0, f.process_cores, f.redis_cores, f.errors);
}

}  // namespace

int main(int argc, char** argv) {
  int sources = 1000, clients = 64;
  double seconds = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--sources")) sources = std::atoi(argv[i + 1]);
    if (!std::strcmp(argv[i], "--clients")) clients = std::atoi(argv[i + 1]);
    if (!std::strcmp(argv[i], "--seconds")) seconds = std::atof(argv[i + 1]);
  }
  if (!testing_util::RedisServer::Available()) {
    std::fprintf(stderr, "%s\n", testing_util::RedisServer::SkipReason().c_str());
    return 2;
  }
  std::string error;
  auto redis = testing_util::RedisServer::Start(&error);
  if (!redis) {
    std::fprintf(stderr, "%s\n", error.c_str());
    return 1;
  }
  std::printf("coordinator_bench: %d sources, %d clients, %.1f s per timed phase, %u cores\n", sources, clients,
              seconds, std::thread::hardware_concurrency());

  // ---- references: redis-benchmark -c clients
  const control::LeasePolicy policy{10, 60, 10};
  auto probe = control::ConnectRedisCoordinatorState(redis->url(), policy, 5.0);
  if (!probe.ok()) {
    std::fprintf(stderr, "%s\n", probe.status().ToString().c_str());
    return 1;
  }
  auto now_ms = [] {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
  };
  auto one = (*probe)->RegisterSource(MakeSource(0), now_ms());
  std::string sha = redis->Command({"SCRIPT", "LOAD", control::RedisHeartbeatSourceScript().body});
  const long n_ref = 100000;
  BenchLine ping = RedisBenchmark(redis->port(), clients, n_ref, "PING");
  BenchLine hset = RedisBenchmark(redis->port(), clients, n_ref, "HSET shardwire:bench:h hb 1700000000000");
  BenchLine eval = RedisBenchmark(redis->port(), clients, n_ref,
                                  fmt::format("EVALSHA {} 0 {} {} 60000", sha, one->source_id, now_ms()));
  redis->Command({"FLUSHALL"});
  std::printf("\nreference (redis-benchmark -c %d -n %ld)        ops/s   p50 ms    p99 ms\n", clients, n_ref);
  std::printf("%-44s %10.0f %9.3f %9.3f\n", "PING", ping.rps, ping.p50, ping.p99);
  std::printf("%-44s %10.0f %9.3f %9.3f\n", "HSET (raw heartbeat field)", hset.rps, hset.p50, hset.p99);
  std::printf("%-44s %10.0f %9.3f %9.3f\n", "EVALSHA heartbeat script", eval.rps, eval.p50, eval.p99);
  const double ref = eval.ok ? eval.p50 : 0;
  if (!eval.ok) std::printf("(redis-benchmark not available: ratios omitted)\n");

  std::printf("\n%-44s %10s %9s %9s %9s %7s %7s %6s\n", "operation", "ops/s", "p50 ms", "p99 ms", "p50/EVAL", "cores",
              "redis", "errors");

  // ---- the Redis state object directly (no gRPC): connection pool sizes
  for (int pool : {1, 8, 64}) {
    redis->Command({"FLUSHALL"});
    control::RedisStateOptions o;
    o.max_connections = pool;
    auto st = control::ConnectRedisCoordinatorState(redis->url(), policy, o);
    if (!st.ok()) return 1;
    std::vector<std::string> ids(sources);
    for (int i = 0; i < sources; ++i) ids[i] = (*st)->RegisterSource(MakeSource(i), now_ms())->source_id;
    Figures f = Run(clients, 0, seconds, redis->pid(), [&](int t, long i) {
      return (*st)->HeartbeatSource(ids[(t + i * clients) % sources], now_ms()).ok();
    });
    PrintRow(fmt::format("state heartbeat, redis, pool {}", pool), f, ref);
  }

  // ---- through gRPC: in-memory and Redis coordinators
  Figures redis_heartbeat;
  for (std::string backend : {"memory", "redis"}) {
    redis->Command({"FLUSHALL"});
    CoordinatorServerOptions so;
    so.redis_url = backend == "redis" ? redis->url() : "";
    so.source_stale_after_s = 10;
    so.source_delete_after_s = 60;
    auto server = CoordinatorServer::Start(so);
    if (!server.ok()) {
      std::fprintf(stderr, "%s\n", server.status().ToString().c_str());
      return 1;
    }
    std::vector<std::unique_ptr<CoordinatorClient>> cl(clients);
    for (auto& c : cl) {
      CoordinatorClientOptions co;
      co.address = (*server)->address();
      auto r = CoordinatorClient::Connect(co);
      if (!r.ok()) {
        std::fprintf(stderr, "%s\n", r.status().ToString().c_str());
        return 1;
      }
      c = std::move(r).value();
    }
    std::vector<std::string> ids(sources);
    const long per = (sources + clients - 1) / clients;
    Figures reg = Run(clients, per, seconds, redis->pid(), [&](int t, long i) {
      long k = t * per + i;
      if (k >= sources) return true;
      auto r = cl[t]->RegisterSource(MakeSource(static_cast<int>(k)));
      if (!r.ok()) return false;
      ids[k] = r->source_id;
      return true;
    });
    PrintRow("register, " + backend, reg, ref);
    Figures hb = Run(clients, 0, seconds, redis->pid(),
                     [&](int t, long i) { return cl[t]->HeartbeatSource(ids[(t + i * clients) % sources]).ok(); });
    PrintRow("heartbeat, " + backend, hb, ref);
    if (backend == "redis") redis_heartbeat = hb;
    Figures ls = Run(clients, 0, seconds, redis->pid(), [&](int t, long) {
      auto r = cl[t]->ListSources("bench-model", SourceState::kReady);
      return r.ok() && static_cast<int>(r->size()) == sources;
    });
    PrintRow(fmt::format("list {} READY sources, {}", sources, backend), ls, ref);
  }

  std::printf("\ncapacity: 10,000 sources heartbeating once a second need 10,000 heartbeats/s;\n");
  std::printf("the Redis-backed coordinator served %.0f/s (%.2fx of the need) using %.2f cores in this process\n",
              redis_heartbeat.ops_per_s, redis_heartbeat.ops_per_s / 10000.0, redis_heartbeat.process_cores);
  std::printf("(server + the %d client threads) and %.2f cores in redis-server.\n", clients,
              redis_heartbeat.redis_cores);
  return 0;
}
