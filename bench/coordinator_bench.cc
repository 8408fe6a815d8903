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
// these 2 cores? The closed-loop figures above are saturation figures with the
// 64 client threads on the same cores as the server. The fair test is open
// loop: a separate client process (this binary with --load-client) offers
// --open-rates heartbeats/s (default 2,500, 5,000 and 10,000) over 64 connections and the bench
// prints whether every one was answered in time and with what p50/p99 (from
// the scheduled send time), beside raw Redis: the same process sending EVALSHA
// of the heartbeat script at the same rate over 64 hiredis connections in the
// same run. "HELD" means: every heartbeat answered without error and p99 below
// 1 s (the backlog never reached one heartbeat period). Unloaded round trips:
// 1 client thread through gRPC vs redis-benchmark -c 1 of the same EVALSHA, and,
// from the separate client process (what a source in another process sees), one
// heartbeat at a time through the generated stub and through CoordinatorClient,
// beside two same-process references: EVALSHA of the script over one hiredis
// connection (raw Redis) and a no-op gRPC Heartbeat server with the
// coordinator's server structure (gRPC's own round trip).
//
// Usage: coordinator_bench [--sources N] [--clients C] [--seconds S]
//                          [--open-rates R1,R2,..] [--open-seconds S] [--open-only 1]
//                          [--redis-spin-us N]  (the coordinator's Redis reply spin, 0: off)
#include <fmt/format.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <hiredis/hiredis.h>
#include <poll.h>

#include <condition_variable>
#include <deque>
#include <mutex>

#include "control/coordinator_state.h"
#include "control/coordinator_state_redis.h"
#include "control/grpc_runtime.h"
#include "control/redis_fixture.h"
#include "shardwire/coordinator.h"
#include "shardwire/v1/sources.grpc.pb.h"

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
  // The process may exit between the open and the read; `<< rdbuf()` then leaves the
  // string empty where an istreambuf_iterator would throw from basic_filebuf::underflow.
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::ostringstream read;
  if (in) read << in.rdbuf();
  const std::string s = read.str();
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

// ---------------------------------------------------------------- open loop
//
// A separate client process (this binary re-run with --load-client) offers
// `rate` heartbeats per second, spread round-robin over `conns` connections,
// each sent at its scheduled time whether or not earlier ones were answered
// (open loop), and measures every latency from the scheduled send time (so a
// server that falls behind shows it as queueing, not as a lower offered rate).
// One thread drives all connections (gRPC: async stub on one CompletionQueue;
// Redis: non-blocking hiredis contexts, several commands in flight per
// connection), so the client costs as little CPU as possible on the shared cores.

struct OpenLoopResult {
  long sent = 0, done = 0, errors = 0, late = 0;  // late: unanswered 5 s after the last send
  double p50_ms = 0, p99_ms = 0, ops_per_s = 0, client_cpu_s = 0, server_cores = 0, redis_cores = 0;
  bool ok = false;
};

struct Percentiles {
  double p50 = 0, p99 = 0;
};

Percentiles Pct(std::vector<double>& v) {
  Percentiles p;
  if (v.empty()) return p;
  std::sort(v.begin(), v.end());
  p.p50 = v[v.size() / 2];
  p.p99 = v[std::min(v.size() - 1, v.size() * 99 / 100)];
  return p;
}

std::vector<std::string> ReadLines(const std::string& path) {
  std::ifstream in(path);
  std::vector<std::string> out;
  for (std::string line; std::getline(in, line);) {
    if (!line.empty()) out.push_back(line);
  }
  return out;
}

void PrintOpenLoop(long sent, long done, long errors, long late, std::vector<double>& lat, double wall, double cpu) {
  Percentiles p = Pct(lat);
  std::printf("RESULT %ld %ld %ld %ld %.6f %.6f %.3f %.6f\n", sent, done, errors, late, p.p50, p.p99,
              static_cast<double>(done) / wall, cpu);
}

// gRPC heartbeats to `address` at `rate`/s over `conns` channels for `seconds`.
int OpenLoopGrpc(const std::string& address, double rate, int conns, double seconds,
                 const std::vector<std::string>& ids) {
  std::vector<std::unique_ptr<v1::SourceRegistry::Stub>> stubs;
  for (int c = 0; c < conns; ++c) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // one connection per channel
    args.SetInt(GRPC_ARG_ENABLE_RETRIES, 0);             // a load generator reports failures, never hides them
    auto ch = grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
    if (!ch->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(5))) {
      std::fprintf(stderr, "load client: cannot connect to %s\n", address.c_str());
      return 1;
    }
    stubs.push_back(v1::SourceRegistry::NewStub(ch));
  }
  struct Call {
    grpc::ClientContext ctx;
    v1::HeartbeatSourceRequest req;
    v1::HeartbeatSourceResponse resp;
    grpc::Status status;
    std::unique_ptr<grpc::ClientAsyncResponseReader<v1::HeartbeatSourceResponse>> reader;
    Clock::time_point scheduled;
  };
  // Two threads, so that neither sending nor the latency clock depends on gRPC's millisecond
  // timers: this one sends each heartbeat at its scheduled time (clock_nanosleep to the
  // nanosecond), the drainer blocks in the completion queue and stamps each answer as it arrives.
  grpc::CompletionQueue cq;
  std::vector<double> lat;
  lat.reserve(static_cast<size_t>(rate * seconds * 1.1));
  long done = 0, errors = 0;
  const double cpu0 = ProcessCpuSeconds();
  const auto t0 = Clock::now() + std::chrono::milliseconds(100);
  const long total = static_cast<long>(rate * seconds);
  const auto sched = [&](long i) {
    return t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(i / rate));
  };
  const auto drain_end = sched(total) + std::chrono::seconds(5);
  std::thread drainer([&] {
    while (done < total) {
      void* tag = nullptr;
      bool ok = false;
      const auto st =
          cq.AsyncNext(&tag, &ok,
                       std::chrono::system_clock::now() +
                           std::chrono::duration_cast<std::chrono::system_clock::duration>(drain_end - Clock::now()));
      if (st != grpc::CompletionQueue::GOT_EVENT) break;  // the drain deadline passed
      auto* call = static_cast<Call*>(tag);
      lat.push_back(std::chrono::duration<double, std::milli>(Clock::now() - call->scheduled).count());
      if (!ok || !call->status.ok()) ++errors;
      ++done;
      delete call;
    }
  });
  long sent = 0;
  for (; sent < total; ++sent) {
    const auto at = sched(sent);
    const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(at.time_since_epoch()).count();
    const timespec when{static_cast<time_t>(ns / 1000000000), static_cast<long>(ns % 1000000000)};
    while (::clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &when, nullptr) == EINTR) {
    }
    auto* call = new Call;
    call->scheduled = at;
    call->req.set_source_id(ids[sent % ids.size()]);
    call->ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    call->reader = stubs[sent % conns]->AsyncHeartbeat(&call->ctx, call->req, &cq);
    call->reader->Finish(&call->resp, &call->status, call);
  }
  drainer.join();
  const double wall = std::chrono::duration<double>(sched(total) - t0).count();
  const long late = total - done;
  PrintOpenLoop(sent, done, errors, late, lat, wall, ProcessCpuSeconds() - cpu0);
  std::fflush(stdout);
  std::_Exit(0);  // unanswered calls (if any) are abandoned with the process
}

// Raw Redis: EVALSHA of the heartbeat script (same ARGV as the coordinator) at `rate`/s over `conns` connections.
int OpenLoopRedis(int port, const std::string& sha, double rate, int conns, double seconds,
                  const std::vector<std::string>& ids) {
  struct Conn {
    redisContext* ctx = nullptr;
    std::deque<Clock::time_point> inflight;
  };
  std::vector<Conn> cs(conns);
  for (auto& c : cs) {
    c.ctx = redisConnect("127.0.0.1", port);
    if (c.ctx == nullptr || c.ctx->err) {
      std::fprintf(stderr, "load client: cannot connect to Redis on port %d\n", port);
      return 1;
    }
  }
  std::vector<double> lat;
  lat.reserve(static_cast<size_t>(rate * seconds * 1.1));
  long sent = 0, done = 0, errors = 0;
  const double cpu0 = ProcessCpuSeconds();
  const auto t0 = Clock::now() + std::chrono::milliseconds(100);
  const long total = static_cast<long>(rate * seconds);
  const auto sched = [&](long i) {
    return t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(i / rate));
  };
  const auto drain_end = sched(total) + std::chrono::seconds(5);
  const std::string delete_ms = "60000";
  std::vector<pollfd> pfds(conns);
  while (done < total && Clock::now() < drain_end) {
    auto now = Clock::now();
    while (sent < total && sched(sent) <= now) {
      Conn& c = cs[sent % conns];
      const std::string& id = ids[sent % ids.size()];
      const std::string now_ms = std::to_string(
          std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
              .count());
      const char* argv[] = {"EVALSHA", sha.c_str(), "0", id.c_str(), now_ms.c_str(), delete_ms.c_str()};
      const size_t lens[] = {7, sha.size(), 1, id.size(), now_ms.size(), delete_ms.size()};
      redisAppendCommandArgv(c.ctx, 6, argv, lens);
      int wdone = 0;
      while (!wdone) {
        if (redisBufferWrite(c.ctx, &wdone) != REDIS_OK) return 1;
      }
      c.inflight.push_back(sched(sent));
      ++sent;
    }
    auto wake = sent < total ? sched(sent) : drain_end;
    // ppoll: a nanosecond timeout, so the loop neither spins nor sends late by a rounded millisecond.
    const auto wait = std::max<Clock::duration>(Clock::duration::zero(), wake - Clock::now());
    const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(wait).count();
    const timespec ts{static_cast<time_t>(ns / 1000000000), static_cast<long>(ns % 1000000000)};
    for (int i = 0; i < conns; ++i) pfds[i] = pollfd{cs[i].ctx->fd, POLLIN, 0};
    if (::ppoll(pfds.data(), pfds.size(), &ts, nullptr) <= 0) continue;
    for (int i = 0; i < conns; ++i) {
      if (!(pfds[i].revents & POLLIN)) continue;
      if (redisBufferRead(cs[i].ctx) != REDIS_OK) return 1;
      void* reply = nullptr;
      while (redisGetReplyFromReader(cs[i].ctx, &reply) == REDIS_OK && reply != nullptr) {
        auto* r = static_cast<redisReply*>(reply);
        if (r->type == REDIS_REPLY_ERROR) ++errors;
        freeReplyObject(r);
        reply = nullptr;
        lat.push_back(std::chrono::duration<double, std::milli>(Clock::now() - cs[i].inflight.front()).count());
        cs[i].inflight.pop_front();
        ++done;
      }
    }
  }
  const double wall = std::chrono::duration<double>(sched(total) - t0).count();
  PrintOpenLoop(sent, done, errors, total - done, lat, wall, ProcessCpuSeconds() - cpu0);
  for (auto& c : cs) redisFree(c.ctx);
  return 0;
}

// ---------------------------------------------------------------- unloaded round trips
//
// From the separate load-client process, one heartbeat at a time (the next sent
// when the last one returned) for `seconds`: through the real CoordinatorClient
// (retries, deadline, token header: what a source runs), and, as the raw
// reference in the same process with the same timing code, EVALSHA of the
// heartbeat script (same ARGV) over one blocking hiredis connection.
template <typename Op>
void SequentialRoundTrips(double seconds, Op op) {
  std::vector<double> lat;
  long errors = 0;
  const double cpu0 = ProcessCpuSeconds();
  for (int i = 0; i < 200; ++i) op();  // warm-up: connections, caches, scripts
  const auto start = Clock::now();
  const auto end = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
  while (Clock::now() < end) {
    const auto a = Clock::now();
    if (!op()) ++errors;
    lat.push_back(std::chrono::duration<double, std::milli>(Clock::now() - a).count());
  }
  const double wall = std::chrono::duration<double>(Clock::now() - start).count();
  const long n = static_cast<long>(lat.size());
  PrintOpenLoop(n, n, errors, 0, lat, wall, ProcessCpuSeconds() - cpu0);
}

// The generated stub alone (no retry layer, no token): the same call for the no-op
// server and the coordinator, so their ratio is what the coordinator's work adds.
int RoundTripsStub(const std::string& address, double seconds, const std::string& source_id) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // as CoordinatorClient
  auto stub = v1::SourceRegistry::NewStub(grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args));
  v1::HeartbeatSourceRequest req;
  req.set_source_id(source_id);
  SequentialRoundTrips(seconds, [&] {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::HeartbeatSourceResponse resp;
    return stub->Heartbeat(&ctx, req, &resp).ok();
  });
  return 0;
}

int RoundTripsGrpc(const std::string& address, double seconds, const std::string& source_id) {
  CoordinatorClientOptions co;
  co.address = address;
  auto client = CoordinatorClient::Connect(co);
  if (!client.ok()) {
    std::fprintf(stderr, "load client: %s\n", client.status().ToString().c_str());
    return 1;
  }
  SequentialRoundTrips(seconds, [&] { return (*client)->HeartbeatSource(source_id).ok(); });
  return 0;
}

int RoundTripsRedis(int port, const std::string& sha, double seconds, const std::string& source_id) {
  redisContext* c = redisConnect("127.0.0.1", port);
  if (c == nullptr || c->err) {
    std::fprintf(stderr, "load client: cannot connect to Redis on port %d\n", port);
    return 1;
  }
  const std::string delete_ms = "60000";
  SequentialRoundTrips(seconds, [&] {
    const std::string now_ms = std::to_string(
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
            .count());
    const char* argv[] = {"EVALSHA", sha.c_str(), "0", source_id.c_str(), now_ms.c_str(), delete_ms.c_str()};
    const size_t lens[] = {7, sha.size(), 1, source_id.size(), now_ms.size(), delete_ms.size()};
    auto* r = static_cast<redisReply*>(redisCommandArgv(c, 6, argv, lens));
    const bool ok = r != nullptr && r->type != REDIS_REPLY_ERROR;
    if (r != nullptr) freeReplyObject(r);
    return ok;
  });
  redisFree(c);
  return 0;
}

// The no-op reference server: SourceRegistry.Heartbeat answered OK at once, with
// the same server structure as the coordinator's heartbeats (asynchronous API,
// one thread polling its completion queue; control/heartbeat_loop.h) and in the
// same process as the coordinators under test. So "coordinator / no-op" is what
// the coordinator adds to gRPC's own round trip, and "no-op / raw Redis" is
// gRPC's own round trip against a Redis one.
class NoopRegistry {
 public:
  NoopRegistry() {
    grpc::ServerBuilder b;
    b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    b.RegisterService(&service_);
    cq_ = b.AddCompletionQueue();
    server_ = b.BuildAndStart();
    Arm();
    thread_ = std::thread([this] {
      void* tag = nullptr;
      bool ok = false;
      while (cq_->Next(&tag, &ok)) {
        auto* c = static_cast<Call*>(tag);
        if (c->finishing || !ok) {
          delete c;
          continue;
        }
        Arm();
        c->finishing = true;
        c->writer.Finish(v1::HeartbeatSourceResponse(), grpc::Status::OK, c);
      }
    });
  }
  ~NoopRegistry() {
    server_->Shutdown(std::chrono::system_clock::now());
    {
      std::lock_guard lock(mu_);
      down_ = true;
      cq_->Shutdown();
    }
    thread_.join();
  }
  std::string address() const { return fmt::format("127.0.0.1:{}", port_); }

 private:
  struct Call {
    grpc::ServerContext ctx;
    v1::HeartbeatSourceRequest req;
    grpc::ServerAsyncResponseWriter<v1::HeartbeatSourceResponse> writer{&ctx};
    bool finishing = false;
  };
  void Arm() {
    std::lock_guard lock(mu_);
    if (down_) return;
    auto* c = new Call;
    service_.RequestHeartbeat(&c->ctx, &c->req, &c->writer, cq_.get(), cq_.get(), c);
  }
  v1::SourceRegistry::AsyncService service_;
  std::unique_ptr<grpc::ServerCompletionQueue> cq_;
  std::unique_ptr<grpc::Server> server_;
  std::mutex mu_;
  bool down_ = false;
  int port_ = 0;
  std::thread thread_;
};

// Runs this binary as the load-client process and parses its RESULT line. The CPU of this
// process (the coordinator server; its closed-loop client threads are idle) and of
// redis-server is measured over the same interval.
OpenLoopResult RunLoadClient(const std::string& args, pid_t redis_pid) {
  char self[4096];
  ssize_t n = ::readlink("/proc/self/exe", self, sizeof(self) - 1);
  OpenLoopResult out;
  if (n <= 0) return out;
  self[n] = 0;
  std::string cmd = fmt::format("{} --load-client {}", self, args);
  const double cpu0 = ProcessCpuSeconds(), rcpu0 = PidCpuSeconds(redis_pid);
  const auto start = Clock::now();
  FILE* f = ::popen(cmd.c_str(), "r");
  if (f == nullptr) return out;
  char buf[1024];
  while (std::fgets(buf, sizeof(buf), f) != nullptr) {
    if (std::sscanf(buf, "RESULT %ld %ld %ld %ld %lf %lf %lf %lf", &out.sent, &out.done, &out.errors, &out.late,
                    &out.p50_ms, &out.p99_ms, &out.ops_per_s, &out.client_cpu_s) == 8) {
      out.ok = true;
    }
  }
  ::pclose(f);
  const double wall = std::chrono::duration<double>(Clock::now() - start).count();
  out.server_cores = (ProcessCpuSeconds() - cpu0) / wall;
  out.redis_cores = (PidCpuSeconds(redis_pid) - rcpu0) / wall;
  if (!out.ok) std::fprintf(stderr, "load client gave no figure: %s\n", cmd.c_str());
  return out;
}

void PrintOpenRow(const std::string& name, const OpenLoopResult& r, double seconds, double ref_p50, double ref_p99) {
  std::printf("%-40s %8ld %8.0f %9.3f %9.3f %7.2fx %7.2fx %6.2f %6.2f %6.2f %5ld %5ld\n", name.c_str(), r.sent,
              r.ops_per_s, r.p50_ms, r.p99_ms, ref_p50 > 0 ? r.p50_ms / ref_p50 : 0.0,
              ref_p99 > 0 ? r.p99_ms / ref_p99 : 0.0, r.server_cores, r.client_cpu_s / seconds, r.redis_cores, r.errors,
              r.late);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 2 && !std::strcmp(argv[1], "--load-client")) {
    // --load-client grpc ADDRESS RATE CONNS SECONDS IDS_FILE
    // --load-client redis PORT SHA RATE CONNS SECONDS IDS_FILE
    if (argc == 8 && !std::strcmp(argv[2], "grpc")) {
      control::PrepareGrpcRuntime();  // as the real client does
      return OpenLoopGrpc(argv[3], std::atof(argv[4]), std::atoi(argv[5]), std::atof(argv[6]), ReadLines(argv[7]));
    }
    // --load-client rtt-grpc|rtt-stub ADDRESS SECONDS SOURCE_ID / rtt-redis PORT SHA SECONDS SOURCE_ID
    if (argc == 6 && !std::strcmp(argv[2], "rtt-stub")) {
      control::PrepareGrpcRuntime();
      return RoundTripsStub(argv[3], std::atof(argv[4]), argv[5]);
    }
    if (argc == 6 && !std::strcmp(argv[2], "rtt-grpc")) {
      control::PrepareGrpcRuntime();
      return RoundTripsGrpc(argv[3], std::atof(argv[4]), argv[5]);
    }
    if (argc == 7 && !std::strcmp(argv[2], "rtt-redis")) {
      return RoundTripsRedis(std::atoi(argv[3]), argv[4], std::atof(argv[5]), argv[6]);
    }
    if (argc == 9 && !std::strcmp(argv[2], "redis")) {
      return OpenLoopRedis(std::atoi(argv[3]), argv[4], std::atof(argv[5]), std::atoi(argv[6]), std::atof(argv[7]),
                           ReadLines(argv[8]));
    }
    std::fprintf(stderr, "bad --load-client arguments\n");
    return 2;
  }
  int sources = 1000, clients = 64;
  double seconds = 3, open_seconds = 5;
  std::vector<double> open_rates = {2500, 5000, 10000};
  bool open_only = false;  // --open-only 1: skip the closed-loop heartbeat/list and state-pool phases
  int redis_spin_us = CoordinatorServerOptions().redis_reply_spin_us;  // --redis-spin-us N (0: off)
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--open-rates")) {  // comma-separated heartbeats/s
      open_rates.clear();
      std::stringstream list(argv[i + 1]);
      for (std::string r; std::getline(list, r, ',');) open_rates.push_back(std::atof(r.c_str()));
    }
    if (!std::strcmp(argv[i], "--open-only")) open_only = std::atoi(argv[i + 1]) != 0;
    if (!std::strcmp(argv[i], "--open-seconds")) open_seconds = std::atof(argv[i + 1]);
    if (!std::strcmp(argv[i], "--sources")) sources = std::atoi(argv[i + 1]);
    if (!std::strcmp(argv[i], "--clients")) clients = std::atoi(argv[i + 1]);
    if (!std::strcmp(argv[i], "--seconds")) seconds = std::atof(argv[i + 1]);
    if (!std::strcmp(argv[i], "--redis-spin-us")) redis_spin_us = std::atoi(argv[i + 1]);
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
  std::printf("coordinator_bench: %d sources, %d clients, %.1f s per timed phase, %u cores, Redis reply spin %d us\n",
              sources, clients, seconds, std::thread::hardware_concurrency(), redis_spin_us);

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
  // One client: the unloaded round trip of the same script.
  BenchLine eval1 = RedisBenchmark(redis->port(), 1, n_ref / 5,
                                   fmt::format("EVALSHA {} 0 {} {} 60000", sha, one->source_id, now_ms()));
  redis->Command({"FLUSHALL"});
  std::printf("\nreference (redis-benchmark -c %d -n %ld)        ops/s   p50 ms    p99 ms\n", clients, n_ref);
  std::printf("%-44s %10.0f %9.3f %9.3f\n", "PING", ping.rps, ping.p50, ping.p99);
  std::printf("%-44s %10.0f %9.3f %9.3f\n", "HSET (raw heartbeat field)", hset.rps, hset.p50, hset.p99);
  std::printf("%-44s %10.0f %9.3f %9.3f\n", "EVALSHA heartbeat script", eval.rps, eval.p50, eval.p99);
  std::printf("%-44s %10.0f %9.3f %9.3f\n", "EVALSHA heartbeat script, -c 1 (unloaded)", eval1.rps, eval1.p50,
              eval1.p99);
  const double ref = eval.ok ? eval.p50 : 0;
  if (!eval.ok) std::printf("(redis-benchmark not available: ratios omitted)\n");

  std::printf("\n%-44s %10s %9s %9s %9s %7s %7s %6s\n", "operation", "ops/s", "p50 ms", "p99 ms", "p50/EVAL", "cores",
              "redis", "errors");

  // ---- the Redis state object directly (no gRPC): connection pool sizes
  for (int pool : {1, 8, 64}) {
    if (open_only) break;
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
    if (pool != 64) continue;
    // One caller, no gRPC: the pooled synchronous call and the pipelined asynchronous one
    // (what the server's heartbeat handler uses), against redis-benchmark -c 1 of the script.
    Figures sync1 = Run(1, 0, seconds, redis->pid(),
                        [&](int, long i) { return (*st)->HeartbeatSource(ids[i % sources], now_ms()).ok(); });
    PrintRow("state heartbeat, redis, 1 caller, pool", sync1, eval1.ok ? eval1.p50 : 0);
    Figures async1 = Run(1, 0, seconds, redis->pid(), [&](int, long i) {
      // A lone caller leads its own round, so the callback has run when the call returns;
      // the condition variable is only a guard for the general case.
      struct Wait {
        std::mutex mu;
        std::condition_variable cv;
        bool done = false, ok = false;
      };
      auto w = std::make_shared<Wait>();
      (*st)->HeartbeatSourceAsync(ids[i % sources], now_ms(), [w](const Result<SourceHeartbeat>& s) {
        std::lock_guard lock(w->mu);
        w->done = true;
        w->ok = s.ok();
        w->cv.notify_one();
      });
      std::unique_lock lock(w->mu);
      return w->cv.wait_for(lock, std::chrono::seconds(10), [&] { return w->done; }) && w->ok;
    });
    PrintRow("state heartbeat, redis, 1 caller, pipeline", async1, eval1.ok ? eval1.p50 : 0);
  }

  // ---- through gRPC: in-memory and Redis coordinators
  Figures redis_heartbeat;
  Figures unloaded[2];
  // Unloaded round trips from the separate client process: per backend, the no-op gRPC
  // server, the coordinator and (Redis) raw EVALSHA, back to back.
  OpenLoopResult rtt_noop[2], rtt_stub[2], rtt_coord[2], rtt_raw, rtt_noop_alone;
  const double rtt_seconds = std::max(1.0, seconds / 1.5);
  {
    // gRPC's own round trip with no other gRPC server in this process (below, each backend's
    // no-op row shares the process with that coordinator's threads).
    NoopRegistry noop;
    rtt_noop_alone =
        RunLoadClient(fmt::format("rtt-stub {} {} src-0000000000000000", noop.address(), rtt_seconds), redis->pid());
  }
  std::vector<OpenLoopResult> open_grpc[2], open_raw;
  int bi = 0;
  for (std::string backend : {"memory", "redis"}) {
    redis->Command({"FLUSHALL"});
    CoordinatorServerOptions so;
    so.redis_url = backend == "redis" ? redis->url() : "";
    so.source_stale_after_s = 10;
    so.source_delete_after_s = 60;
    so.redis_reply_spin_us = redis_spin_us;
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
    if (!open_only) {
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
    // One client thread: the unloaded round trip through gRPC (compare with EVALSHA -c 1).
    unloaded[bi] =
        Run(1, 0, seconds, redis->pid(), [&](int, long i) { return cl[0]->HeartbeatSource(ids[i % sources]).ok(); });
    PrintRow("heartbeat, " + backend + ", 1 client", unloaded[bi], eval1.ok ? eval1.p50 : 0);
    {
      // Only while it is measured: its thread polls the process's one epoll set too (heartbeat_loop.h).
      NoopRegistry noop;
      rtt_noop[bi] = RunLoadClient(fmt::format("rtt-stub {} {} {}", noop.address(), rtt_seconds, ids[0]), redis->pid());
    }
    rtt_stub[bi] =
        RunLoadClient(fmt::format("rtt-stub {} {} {}", (*server)->address(), rtt_seconds, ids[0]), redis->pid());
    rtt_coord[bi] =
        RunLoadClient(fmt::format("rtt-grpc {} {} {}", (*server)->address(), rtt_seconds, ids[0]), redis->pid());
    if (backend == "redis") {
      rtt_raw =
          RunLoadClient(fmt::format("rtt-redis {} {} {} {}", redis->port(), sha, rtt_seconds, ids[0]), redis->pid());
    }

    // Open loop from a separate process at the offered rate (the closed-loop clients above sit idle).
    const std::string ids_file = fmt::format("/tmp/coordinator_bench_ids.{}", ::getpid());
    {
      std::ofstream out(ids_file);
      for (const auto& id : ids) out << id << "\n";
    }
    for (double rate : open_rates) {
      if (backend == "redis") {
        open_raw.push_back(RunLoadClient(
            fmt::format("redis {} {} {} {} {} {}", redis->port(), sha, rate, clients, open_seconds, ids_file),
            redis->pid()));
      }
      open_grpc[bi].push_back(
          RunLoadClient(fmt::format("grpc {} {} {} {} {}", (*server)->address(), rate, clients, open_seconds, ids_file),
                        redis->pid()));
    }
    std::remove(ids_file.c_str());
    ++bi;
  }

  std::printf(
      "\nopen loop: heartbeats offered at a fixed rate for %.1f s from a separate client process (one thread, %d "
      "connections),\nlatency from each heartbeat's scheduled send time; ratios to the raw-Redis EVALSHA run at the "
      "same rate and connections.\n",
      open_seconds, clients);
  std::printf("%-40s %8s %8s %9s %9s %8s %8s %6s %6s %6s %5s %5s\n", "open loop", "sent", "done/s", "p50 ms", "p99 ms",
              "p50/raw", "p99/raw", "server", "client", "redis", "err", "late");
  for (size_t k = 0; k < open_rates.size(); ++k) {
    const OpenLoopResult& raw = open_raw[k];
    const double rate = open_rates[k];
    PrintOpenRow(fmt::format("{:.0f}/s raw Redis EVALSHA (hiredis)", rate), raw, open_seconds, raw.p50_ms, raw.p99_ms);
    PrintOpenRow(fmt::format("{:.0f}/s coordinator, memory", rate), open_grpc[0][k], open_seconds, raw.p50_ms,
                 raw.p99_ms);
    PrintOpenRow(fmt::format("{:.0f}/s coordinator, redis", rate), open_grpc[1][k], open_seconds, raw.p50_ms,
                 raw.p99_ms);
  }
  std::printf(
      "(server = cores of this process, which holds the coordinator; client = cores of the load process; "
      "late = not answered 5 s after the last send)\n");
  // Held: every heartbeat answered, none failed, and the backlog never reached one heartbeat period
  // (p99 below 1 s), so a source beating once a second is never seen late by a whole beat.
  for (size_t k = 0; k < open_rates.size(); ++k) {
    for (int b = 0; b < 2; ++b) {
      const auto& r = open_grpc[b][k];
      const bool held = r.ok && r.errors == 0 && r.late == 0 && r.p99_ms < 1000.0;
      std::printf("%s-backed coordinator %s %.0f heartbeats/s (answered %ld of %ld, %ld errors, p99 %.3f ms)\n",
                  b == 0 ? "memory" : "Redis", held ? "HELD" : "did NOT hold", open_rates[k], r.done, r.done + r.late,
                  r.errors, r.p99_ms);
    }
  }
  std::printf(
      "unloaded round trip (1 client thread in this process): gRPC heartbeat, redis p50 %.3f ms = %.2fx raw EVALSHA "
      "-c 1 p50 %.3f ms\n",
      unloaded[1].p50_ms, eval1.ok && eval1.p50 > 0 ? unloaded[1].p50_ms / eval1.p50 : 0.0, eval1.p50);

  // Unloaded round trips from the separate client process (what a source on another process sees).
  const double raw = rtt_raw.p50_ms;
  std::printf(
      "\nunloaded round trip from a separate client process, one heartbeat at a time, %.1f s each;\n"
      "ratios to raw Redis = EVALSHA of the heartbeat script over one hiredis connection from the same process\n",
      rtt_seconds);
  std::printf("%-52s %8s %9s %9s %9s %9s %6s\n", "unloaded round trip", "calls", "p50 ms", "p99 ms", "p50/raw",
              "p50/noop", "err");
  auto rtt_row = [&](const std::string& name, const OpenLoopResult& r, double noop_p50) {
    std::printf("%-52s %8ld %9.3f %9.3f %8.2fx %8.2fx %6ld\n", name.c_str(), r.done, r.p50_ms, r.p99_ms,
                raw > 0 ? r.p50_ms / raw : 0.0, noop_p50 > 0 ? r.p50_ms / noop_p50 : 0.0, r.errors);
  };
  rtt_row("raw Redis EVALSHA (hiredis, 1 connection)", rtt_raw, 0);
  rtt_row("gRPC no-op Heartbeat, stub, alone in the process", rtt_noop_alone, 0);
  for (int b = 0; b < 2; ++b) {
    const char* name = b == 0 ? "memory" : "redis";
    rtt_row(fmt::format("gRPC no-op Heartbeat, stub, beside the {} server", name), rtt_noop[b], 0);
    rtt_row(fmt::format("coordinator {} Heartbeat, stub", name), rtt_stub[b], rtt_noop[b].p50_ms);
    rtt_row(fmt::format("coordinator {} HeartbeatSource, CoordinatorClient", name), rtt_coord[b], rtt_noop[b].p50_ms);
  }
  std::printf(
      "(redis-benchmark -c 1 EVALSHA of the same script, above: p50 %.3f ms; coordinator redis / that: %.2fx)\n",
      eval1.p50, eval1.ok && eval1.p50 > 0 ? rtt_coord[1].p50_ms / eval1.p50 : 0.0);
  std::printf(
      "unloaded round trip (separate client process): Redis-backed coordinator p50 %.3f ms = %.2fx raw Redis p50 "
      "%.3f ms; gRPC no-op alone %.3f ms = %.2fx; in-memory coordinator %.3f ms = %.2fx\n",
      rtt_coord[1].p50_ms, raw > 0 ? rtt_coord[1].p50_ms / raw : 0.0, raw, rtt_noop_alone.p50_ms,
      raw > 0 ? rtt_noop_alone.p50_ms / raw : 0.0, rtt_coord[0].p50_ms, raw > 0 ? rtt_coord[0].p50_ms / raw : 0.0);

  if (open_only) return 0;
  std::printf("\nclosed-loop saturation: 10,000 sources heartbeating once a second need 10,000 heartbeats/s;\n");
  std::printf("the Redis-backed coordinator served %.0f/s (%.2fx of the need) using %.2f cores in this process\n",
              redis_heartbeat.ops_per_s, redis_heartbeat.ops_per_s / 10000.0, redis_heartbeat.process_cores);
  std::printf("(server + the %d client threads) and %.2f cores in redis-server.\n", clients,
              redis_heartbeat.redis_cores);
  return 0;
}
