// agent_transfer_bench: the agent's transfers against their references, same run.
//
// Usage: agent_transfer_bench [--section NAME]... [--trials K] [--seconds S]
//   Sections (default: all, in this order):
//     same-host  WRITE and READ, 16/64/256 MiB, agent (lanes 1 and 2, arena
//                target that never calls its agent) beside two-thread memcpy
//                and ucx_perftest -t ucp_put_bw / -t ucp_get.
//     tcp        UCX_TLS=tcp UCX_NET_DEVICES=lo: agent WRITE (automatic path =
//                active messages), READ (ucp_get), WRITE forced to ucp_put, beside
//                iperf3 on loopback (1 and 2 streams) and ucx_perftest
//                ucp_am_bw over TCP.
//     small      4/16/64 KiB descriptors, 64 per post, messages (descriptors)
//                per second beside ucx_perftest ucp_put_bw and ucp_am_bw message
//                rates (same sizes).
//     cpu        CPU time (getrusage of the whole process, and
//                CLOCK_THREAD_CPUTIME_ID of the waiting thread) of: an idle
//                agent with a connected peer; an initiator waiting 2 s on a
//                transfer to a stopped target; an initiator waiting on a long
//                TCP transfer; a target waiting for a notification during it.
//     metrics    AgentOptions::metrics off vs on (docs/metrics.md), alternating in one run:
//                posts/s of a 4 KiB WRITE (the per-post cost, where the counters are
//                updated) and GB/s of a 64 MiB WRITE, 4 runs each (odd runs off
//                first, even runs on first).
//   Figures are best of --trials (3); a trial repeats Post + Wait for about
//   --seconds (0.3). GB/s = 1e9 B/s. ucx_perftest MB/s are 2^20 B/s.
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "shardwire/agent.h"
#include "shardwire/metrics.h"
#include "socket_frames.h"

namespace {

using shardwire::bench::ReadAll;
using shardwire::bench::RecvFrame;
using shardwire::bench::SendFrame;
using shardwire::bench::WriteAll;

using shardwire::Agent;
using shardwire::AgentOptions;
using shardwire::RegionId;
using shardwire::Status;
using shardwire::TransferDescriptor;
using shardwire::TransferOp;
using shardwire::WritePath;
using Clock = std::chrono::steady_clock;

constexpr std::size_t kKiB = 1024, kMiB = 1024 * kKiB;
constexpr double kTimeoutS = 120;
int g_trials = 3;
double g_seconds = 0.3;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

void WaitPid(pid_t pid, double timeout_s) {
  const auto deadline = Clock::now() + std::chrono::duration<double>(timeout_s);
  int st = 0;
  while (::waitpid(pid, &st, WNOHANG) != pid) {
    if (Clock::now() >= deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &st, 0);
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

std::string Fmt(std::optional<double> v, int prec = 2) {
  if (!v) return "n/a";
  char b[32];
  std::snprintf(b, sizeof(b), "%.*f", prec, *v);
  return b;
}
std::optional<double> Ratio(std::optional<double> a, std::optional<double> b) {
  if (!a || !b || *b <= 0) return std::nullopt;
  return *a / *b;
}
std::string SizeName(std::size_t s) {
  return s >= kMiB ? std::to_string(s / kMiB) + " MiB" : std::to_string(s / kKiB) + " KiB";
}

// ---- references ------------------------------------------------------------------
// Two threads, each copying its half; a persistent helper thread and a
// barrier per round (no thread creation inside the timed loop).
double TwoThreadMemcpy(std::size_t size) {
  std::vector<char> src(size, 1), dst(size, 2);
  const std::size_t half = size / 2;
  std::memcpy(dst.data(), src.data(), size);  // fault in
  std::barrier sync(2);
  std::atomic<bool> stop{false};
  std::thread helper([&] {
    for (;;) {
      sync.arrive_and_wait();
      if (stop.load()) return;
      std::memcpy(dst.data() + half, src.data() + half, size - half);
      sync.arrive_and_wait();
    }
  });
  double best = 0;
  for (int t = 0; t < g_trials; ++t) {
    std::uint64_t iters = 0;
    const auto start = Clock::now();
    do {
      sync.arrive_and_wait();
      std::memcpy(dst.data(), src.data(), half);
      sync.arrive_and_wait();
      asm volatile("" : : "r"(dst.data()) : "memory");
      ++iters;
    } while (Seconds(Clock::now() - start) < g_seconds);
    best = std::max(best, static_cast<double>(iters * size) / Seconds(Clock::now() - start) / 1e9);
  }
  stop.store(true);
  sync.arrive_and_wait();
  helper.join();
  return best;
}

int FreePort() {
  int s = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  int port = -1;
  if (::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
      ::getsockname(s, reinterpret_cast<sockaddr*>(&a), &len) == 0)
    port = ntohs(a.sin_port);
  ::close(s);
  return port;
}

struct PerfResult {
  double gbps = 0;      // overall bandwidth, 1e9 B/s
  double msg_rate = 0;  // overall messages/s
};

// ucx_perftest server + client on this host. `env` prefixes both (e.g.
// "UCX_TLS=tcp UCX_NET_DEVICES=lo").
std::optional<PerfResult> Perftest(const std::string& test, std::size_t size, std::uint64_t iters,
                                   const std::string& env) {
  std::optional<PerfResult> best;
  for (int t = 0; t < g_trials; ++t) {
    const int port = FreePort();
    const std::string server = env + " ucx_perftest -p " + std::to_string(port) + " >/dev/null 2>&1 & echo $!";
    FILE* s = ::popen(server.c_str(), "r");
    if (s == nullptr) return best;
    char pidline[64] = {};
    if (std::fgets(pidline, sizeof(pidline), s) == nullptr) {
      ::pclose(s);
      return best;
    }
    ::pclose(s);
    const pid_t spid = static_cast<pid_t>(std::atoi(pidline));
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    const std::string cmd = env + " ucx_perftest localhost -p " + std::to_string(port) + " -t " + test + " -s " +
                            std::to_string(size) + " -n " + std::to_string(iters) + " 2>&1";
    if (FILE* f = ::popen(cmd.c_str(), "r")) {
      char line[1024];
      while (std::fgets(line, sizeof(line), f) != nullptr) {
        if (std::strncmp(line, "Final:", 6) != 0) continue;
        double v[8] = {};
        if (std::sscanf(line + 6, "%lf %lf %lf %lf %lf %lf %lf %lf", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6],
                        &v[7]) == 8) {
          PerfResult r{v[5] * 1048576.0 / 1e9, v[7]};
          if (!best || r.gbps > best->gbps) best = r;
        }
      }
      ::pclose(f);
    }
    if (spid > 0) {
      ::kill(spid, SIGTERM);
      WaitPid(spid, 5);
    }
  }
  return best;
}

double GbpsOr(const std::optional<PerfResult>& r) { return r ? r->gbps : -1; }
double RateOr(const std::optional<PerfResult>& r) { return r ? r->msg_rate : -1; }
std::optional<double> Known(double v) {
  if (v < 0) return std::nullopt;
  return v;
}

// iperf3 on loopback, `streams` parallel streams, 3 s; GB/s received.
std::optional<double> Iperf3(int streams) {
  const int port = FreePort();
  const std::string server = "iperf3 -s -1 -p " + std::to_string(port) + " >/dev/null 2>&1 & echo $!";
  FILE* s = ::popen(server.c_str(), "r");
  if (s == nullptr) return std::nullopt;
  char pidline[64] = {};
  if (std::fgets(pidline, sizeof(pidline), s) == nullptr) {
    ::pclose(s);
    return std::nullopt;
  }
  ::pclose(s);
  const pid_t spid = static_cast<pid_t>(std::atoi(pidline));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const std::string cmd = "iperf3 -c 127.0.0.1 -p " + std::to_string(port) + " -t 3 -P " + std::to_string(streams) +
                          " -f m 2>&1";
  std::optional<double> result;
  if (FILE* f = ::popen(cmd.c_str(), "r")) {
    char line[1024];
    while (std::fgets(line, sizeof(line), f) != nullptr) {
      // "[SUM] 0.00-3.00 sec 9.5 GBytes 27190 Mbits/sec receiver" (or "[  5]" for 1 stream)
      if (std::strstr(line, "receiver") == nullptr) continue;
      if (streams > 1 && std::strstr(line, "[SUM]") == nullptr) continue;
      const char* m = std::strstr(line, "Mbits/sec");
      if (m == nullptr) continue;
      const char* p = m - 1;
      while (p > line && *p == ' ') --p;
      while (p > line && (std::isdigit(static_cast<unsigned char>(*p)) || *p == '.')) --p;
      result = std::strtod(p + 1, nullptr) * 1e6 / 8 / 1e9;
    }
    ::pclose(f);
  }
  WaitPid(spid, 10);
  return result;
}

// ---- agent sessions ------------------------------------------------------------------
// A forked target with one arena of `size` bytes that blocks in read() on a
// socket (never calls its agent) until told to exit, or (waits=true) sits in
// WaitNotification until a "done" message.
struct Target {
  pid_t pid = -1;
  int fd = -1;
};

struct TargetSpec {
  std::size_t size = 0;
  bool arena = true;
  bool waits = false;  // sit in WaitNotification and report its CPU use
  AgentOptions options;
};

Target StartTarget(const TargetSpec& spec) {
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0) return {};
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::close(fds[0]);
    const int fd = fds[1];
    AgentOptions o = spec.options;
    o.name = "target";
    auto agent = Agent::Create(o);
    if (!agent.ok()) ::_exit(10);
    Agent& a = **agent;
    std::vector<std::byte> owned;
    auto region = spec.arena ? a.AllocateArena(spec.size)
                             : (owned.resize(spec.size), a.RegisterMemory(owned.data(), owned.size()));
    if (!region.ok()) ::_exit(11);
    std::memset(a.RegionBytes(*region).data(), 0, spec.size);
    auto blob = a.ExportMetadata();
    if (!blob.ok() || !SendFrame(fd, *blob)) ::_exit(12);
    auto theirs = RecvFrame(fd);
    if (!theirs || !a.ImportMetadata(*theirs).ok()) ::_exit(13);
    if (!spec.waits) ::_exit(RecvFrame(fd) ? 0 : 14);
    rusage r0{}, r1{};
    ::getrusage(RUSAGE_SELF, &r0);
    const auto t0 = Clock::now();
    for (;;) {
      auto n = a.WaitNotification(kTimeoutS);
      if (!n.ok()) ::_exit(15);
      if (n->payload.size() == 4 && std::memcmp(n->payload.data(), "done", 4) == 0) break;
    }
    ::getrusage(RUSAGE_SELF, &r1);
    auto cpu = [](const rusage& r) {
      return static_cast<double>(r.ru_utime.tv_sec + r.ru_stime.tv_sec) +
             static_cast<double>(r.ru_utime.tv_usec + r.ru_stime.tv_usec) / 1e6;
    };
    const double wall = Seconds(Clock::now() - t0);
    char msg[160];
    std::snprintf(msg, sizeof(msg), "%.3f %.3f", cpu(r1) - cpu(r0), wall);
    std::vector<std::byte> out(reinterpret_cast<std::byte*>(msg), reinterpret_cast<std::byte*>(msg) + std::strlen(msg));
    (void)SendFrame(fd, out);
    ::_exit(0);
  }
  ::close(fds[1]);
  return {pid, fds[0]};
}

// The initiator side: agent + local region + imported target.
struct Initiator {
  std::unique_ptr<Agent> agent;
  std::vector<std::byte> owned;
  RegionId region = 0;
};

std::optional<Initiator> Connect(Target& t, const AgentOptions& options, std::size_t size, bool arena = true) {
  Initiator in;
  AgentOptions o = options;
  o.name = "initiator";
  auto agent = Agent::Create(o);
  if (!agent.ok()) {
    std::fprintf(stderr, "Agent::Create: %s\n", agent.status().ToString().c_str());
    return std::nullopt;
  }
  in.agent = std::move(agent).value();
  auto region = arena ? in.agent->AllocateArena(size)
                      : (in.owned.resize(size), in.agent->RegisterMemory(in.owned.data(), in.owned.size()));
  auto theirs = RecvFrame(t.fd);
  auto blob = in.agent->ExportMetadata();
  if (!region.ok() || !theirs || !blob.ok() || !SendFrame(t.fd, *blob) || !in.agent->ImportMetadata(*theirs).ok())
    return std::nullopt;
  in.region = *region;
  std::memset(in.agent->RegionBytes(in.region).data(), 0x5A, size);
  return in;
}

void StopTarget(Target& t) {
  (void)SendFrame(t.fd, {});
  WaitPid(t.pid, 30);
  ::close(t.fd);
}

// Best-of-trials GB/s of Post + Wait of one prepared transfer.
// Posts the transfer again and again for g_seconds of posting (g_trials trials) and returns the
// best GB/s; `descriptors_per_s` gets the best descriptor rate. `gap_s` > 0 sleeps that long
// before every post (not counted in the time): isolated posts, whose lane threads have gone to
// sleep, instead of back-to-back ones.
std::optional<double> MeasureTransfer(Agent& a, TransferOp op, const std::vector<TransferDescriptor>& d,
                                      double* descriptors_per_s = nullptr, double gap_s = 0) {
  auto h = a.PrepareTransfer(op, "target", d, std::nullopt);
  if (!h.ok()) {
    std::fprintf(stderr, "prepare: %s\n", h.status().ToString().c_str());
    return std::nullopt;
  }
  std::uint64_t bytes = 0;
  for (const auto& x : d) bytes += x.bytes();
  auto once = [&] {
    Status s = a.Post(*h);
    if (s.ok()) s = a.Wait(*h, kTimeoutS);
    if (!s.ok()) std::fprintf(stderr, "post/wait: %s\n", s.ToString().c_str());
    return s.ok();
  };
  if (!once()) return std::nullopt;
  double best = 0, best_rate = 0;
  for (int t = 0; t < g_trials; ++t) {
    std::uint64_t iters = 0;
    const auto start = Clock::now();
    double gaps = 0;
    do {
      if (gap_s > 0) {
        const auto g0 = Clock::now();
        std::this_thread::sleep_for(std::chrono::duration<double>(gap_s));
        gaps += Seconds(Clock::now() - g0);
      }
      if (!once()) return std::nullopt;
      ++iters;
    } while (Seconds(Clock::now() - start) - gaps < g_seconds);
    const double el = Seconds(Clock::now() - start) - gaps;
    best = std::max(best, static_cast<double>(iters * bytes) / el / 1e9);
    best_rate = std::max(best_rate, static_cast<double>(iters * d.size()) / el);
  }
  (void)a.Release(*h);
  if (descriptors_per_s != nullptr) *descriptors_per_s = best_rate;
  return best;
}

std::optional<double> AgentBandwidth(const AgentOptions& o, TransferOp op, std::size_t size, bool arena = true) {
  Target t = StartTarget({size, arena, false, o});
  std::optional<double> r;
  if (auto in = Connect(t, o, size, arena)) r = MeasureTransfer(*in->agent, op, {{in->region, 0, 1, 0, size}});
  StopTarget(t);
  return r;
}

// ---- sections -----------------------------------------------------------------------------
void SameHost() {
  std::printf("\n## same host: WRITE and READ, GB/s (target arena; the target never calls its agent)\n\n");
  std::printf("| size | memcpy 2 threads | ucx_perftest ucp_put_bw | agent WRITE 1 lane | agent WRITE 2 lanes | "
              "WRITE/perftest | WRITE/memcpy2 | ucx_perftest ucp_get | agent READ 1 lane | agent READ 2 lanes | "
              "READ/perftest | READ/memcpy2 |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  for (std::size_t size : {16 * kMiB, 64 * kMiB, 256 * kMiB}) {
    const double mc = TwoThreadMemcpy(size);
    const auto iters = static_cast<std::uint64_t>(std::clamp(mc * 1e9 * g_seconds / static_cast<double>(size), 8.0, 1e5));
    auto put = Perftest("ucp_put_bw", size, iters, "");
    auto get = Perftest("ucp_get", size, iters, "");
    AgentOptions one, two;
    one.lanes = 1;
    two.lanes = 2;
    auto w1 = AgentBandwidth(one, TransferOp::kWrite, size);
    auto w2 = AgentBandwidth(two, TransferOp::kWrite, size);
    auto r1 = AgentBandwidth(one, TransferOp::kRead, size);
    auto r2 = AgentBandwidth(two, TransferOp::kRead, size);
    const std::optional<double> pg = Known(GbpsOr(put));
    const std::optional<double> gg = Known(GbpsOr(get));
    std::printf("| %s | %.2f | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", SizeName(size).c_str(), mc,
                Fmt(pg).c_str(), Fmt(w1).c_str(), Fmt(w2).c_str(), Fmt(Ratio(w2, pg)).c_str(),
                Fmt(Ratio(w2, mc)).c_str(), Fmt(gg).c_str(), Fmt(r1).c_str(), Fmt(r2).c_str(),
                Fmt(Ratio(r2, gg)).c_str(), Fmt(Ratio(r2, mc)).c_str());
    std::fflush(stdout);
  }
}

void Tcp() {
  std::printf("\n## TCP on loopback (UCX_TLS=tcp UCX_NET_DEVICES=lo), GB/s\n\n");
  const auto i1 = Iperf3(1);
  const auto i2 = Iperf3(2);
  ::setenv("UCX_TLS", "tcp", 1);
  ::setenv("UCX_NET_DEVICES", "lo", 1);
  const std::string env = "UCX_TLS=tcp UCX_NET_DEVICES=lo";
  std::printf("iperf3 -c 127.0.0.1 -t 3: 1 stream %s GB/s, 2 streams (-P 2) %s GB/s\n\n", Fmt(i1).c_str(),
              Fmt(i2).c_str());
  std::printf("| size | ucx_perftest ucp_am_bw | agent WRITE auto (active messages) 1 lane | 2 lanes | "
              "2 lanes / iperf3 -P 2 | 1 lane / iperf3 -P 1 | agent READ (ucp_get) 2 lanes | agent WRITE forced ucp_put "
              "2 lanes |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  for (std::size_t size : {16 * kMiB, 64 * kMiB}) {
    auto am = Perftest("ucp_am_bw", size, 32, env);
    AgentOptions one, two, put;
    one.lanes = 1;
    two.lanes = 2;
    put.lanes = 2;
    put.write_path = WritePath::kPut;
    auto w1 = AgentBandwidth(one, TransferOp::kWrite, size);
    auto w2 = AgentBandwidth(two, TransferOp::kWrite, size);
    auto r2 = AgentBandwidth(two, TransferOp::kRead, size);
    std::optional<double> wp;
    if (size == 16 * kMiB) {  // the put hole: one trial, few iterations
      const int trials = g_trials;
      const double secs = g_seconds;
      g_trials = 1;
      g_seconds = 0.01;
      wp = AgentBandwidth(put, TransferOp::kWrite, 4 * kMiB);
      g_trials = trials;
      g_seconds = secs;
    }
    const std::optional<double> ag = Known(GbpsOr(am));
    std::printf("| %s | %s | %s | %s | %s | %s | %s | %s |\n", SizeName(size).c_str(), Fmt(ag).c_str(),
                Fmt(w1).c_str(), Fmt(w2).c_str(), Fmt(Ratio(w2, i2)).c_str(), Fmt(Ratio(w1, i1)).c_str(),
                Fmt(r2).c_str(), wp ? (Fmt(wp, 3) + " (4 MiB)").c_str() : "-");
    std::fflush(stdout);
  }
  ::unsetenv("UCX_TLS");
  ::unsetenv("UCX_NET_DEVICES");
}

void Small() {
  std::printf("\n## small transfers, same host: messages/s (64 descriptors per post)\n\n");
  std::printf(
      "distinct: the 64 descriptors use distinct offsets (64 x size of memory per post); one buffer: all 64 "
      "move the same size bytes, as ucx_perftest (which reuses one buffer) does; isolated: distinct, each post "
      "1 ms after the last completed (lane threads asleep), that 1 ms not counted; memcpy2: two threads copying "
      "the 64 x size bytes of a distinct post (each its half, a barrier per post), as messages of size: what "
      "the memory hierarchy gives two cores for that footprint\n\n");
  std::printf(
      "| size | ucx_perftest ucp_put_bw msg/s | ucx_perftest ucp_am_bw msg/s | memcpy2 of a post, msg/s | agent "
      "WRITE arena, distinct msg/s | agent WRITE arena, one buffer msg/s | agent WRITE arena, isolated msg/s | "
      "agent WRITE registered msg/s | distinct/put_bw | one buffer/put_bw | distinct/memcpy2 | memcpy2/put_bw "
      "|\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  for (std::size_t size : {4 * kKiB, 16 * kKiB, 64 * kKiB}) {
    auto put = Perftest("ucp_put_bw", size, 200000, "");
    auto am = Perftest("ucp_am_bw", size, 200000, "");
    const std::optional<double> mc = TwoThreadMemcpy(64 * size) * 1e9 / static_cast<double>(size);
    std::optional<double> rates[4];  // arena distinct, arena one buffer, arena isolated, registered distinct
    for (int variant = 0; variant < 4; ++variant) {
      const bool arena = variant < 3;
      AgentOptions o;
      const std::size_t n = 64;
      Target t = StartTarget({size * n, arena, false, o});
      if (auto in = Connect(t, o, size * n, arena)) {
        std::vector<TransferDescriptor> d;
        for (std::size_t j = 0; j < n; ++j) {
          const std::uint64_t off = variant == 1 ? 0 : j * size;
          d.push_back({in->region, off, 1, off, size});
        }
        double rate = 0;
        if (MeasureTransfer(*in->agent, TransferOp::kWrite, d, &rate, variant == 2 ? 1e-3 : 0)) rates[variant] = rate;
      }
      StopTarget(t);
    }
    const std::optional<double> pr = Known(RateOr(put));
    const std::optional<double> ar = Known(RateOr(am));
    std::printf("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", SizeName(size).c_str(),
                Fmt(pr, 0).c_str(), Fmt(ar, 0).c_str(), Fmt(mc, 0).c_str(), Fmt(rates[0], 0).c_str(),
                Fmt(rates[1], 0).c_str(), Fmt(rates[2], 0).c_str(), Fmt(rates[3], 0).c_str(),
                Fmt(Ratio(rates[0], pr)).c_str(), Fmt(Ratio(rates[1], pr)).c_str(), Fmt(Ratio(rates[0], mc)).c_str(),
                Fmt(Ratio(mc, pr)).c_str());
    std::fflush(stdout);
  }
}

void MetricsCost() {
  std::printf("\n## metrics off vs on (AgentOptions::metrics), WRITE into a same-host arena, alternating runs\n\n");
  std::printf("| size | run | off posts/s | on posts/s | on/off | off GB/s | on GB/s | on/off |\n"
              "|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  shardwire::MetricsRegistry registry;
  for (std::size_t size : {4 * kKiB, 64 * kMiB}) {
    for (int run = 1; run <= 4; ++run) {
      double rate[2] = {0, 0};
      std::optional<double> gbps[2];
      for (int k = 0; k < 2; ++k) {
        const int on = run % 2 == 1 ? k : 1 - k;  // odd runs measure off first, even runs on first
        AgentOptions o;
        if (on == 1) o.metrics = &registry;
        Target t = StartTarget({size, true, false, AgentOptions{}});  // the target reports nothing
        if (auto in = Connect(t, o, size)) gbps[on] = MeasureTransfer(*in->agent, TransferOp::kWrite,
                                                                       {{in->region, 0, 1, 0, size}}, &rate[on]);
        StopTarget(t);
      }
      std::printf("| %s | %d | %.0f | %.0f | %s | %s | %s | %s |\n", SizeName(size).c_str(), run, rate[0], rate[1],
                  Fmt(Ratio(std::optional<double>(rate[1]), rate[0]), 3).c_str(), Fmt(gbps[0]).c_str(),
                  Fmt(gbps[1]).c_str(), Fmt(Ratio(gbps[1], gbps[0]), 3).c_str());
      std::fflush(stdout);
    }
  }
  // What the "on" agents counted (all runs together), as a check that the hooks ran.
  std::printf("\n```\n%s```\n", registry.Render().c_str());
}

double ProcessCpu() {
  timespec ts{};
  ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}
double ThreadCpu() {
  timespec ts{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

void Cpu() {
  std::printf("\n## CPU while waiting (%% of one core = CPU seconds / wall seconds)\n\n");
  std::printf("| scenario | wall s | process CPU %% | waiting thread CPU %% |\n|---|---:|---:|---:|\n");
  auto row = [](const char* what, double wall, double cpu, double thread) {
    std::printf("| %s | %.2f | %.2f | %.2f |\n", what, wall, 100 * cpu / wall, 100 * thread / wall);
    std::fflush(stdout);
  };
  {  // idle agent with a connected peer (2 lanes), waiting for a notification
    AgentOptions o;
    Target t = StartTarget({kMiB, true, false, o});
    if (auto in = Connect(t, o, kMiB)) {
      const double c0 = ProcessCpu(), th0 = ThreadCpu();
      const auto w0 = Clock::now();
      (void)in->agent->WaitNotification(3.0);
      row("idle agent, 2 lanes, connected peer, WaitNotification(3 s)", Seconds(Clock::now() - w0),
          ProcessCpu() - c0, ThreadCpu() - th0);
    }
    StopTarget(t);
  }
  {  // a transfer that cannot progress: target stopped (registered memory)
    AgentOptions o;
    // UCX's emulated put, which the stopped target must serve: kAuto would write its registered
    // memory by kernel copy (process_vm_writev), which completes without the target.
    o.write_path = WritePath::kPut;
    Target t = StartTarget({64 * kMiB, false, false, o});
    if (auto in = Connect(t, o, 64 * kMiB, false)) {
      ::kill(t.pid, SIGSTOP);
      auto h = in->agent->PrepareTransfer(TransferOp::kWrite, "target", {{in->region, 0, 1, 0, 64 * kMiB}}, std::nullopt);
      if (h.ok() && in->agent->Post(*h).ok()) {
        const double c0 = ProcessCpu(), th0 = ThreadCpu();
        const auto w0 = Clock::now();
        Status s = in->agent->Wait(*h, 2.0);
        row("initiator, Wait(2 s) on a 64 MiB WRITE to a SIGSTOPped target", Seconds(Clock::now() - w0),
            ProcessCpu() - c0, ThreadCpu() - th0);
        ::kill(t.pid, SIGCONT);
        (void)in->agent->Wait(*h, kTimeoutS);
        (void)in->agent->Release(*h);
      }
      ::kill(t.pid, SIGCONT);
    }
    StopTarget(t);
  }
  {  // a long transfer over TCP: initiator waits; target sits in WaitNotification
    ::setenv("UCX_TLS", "tcp", 1);
    ::setenv("UCX_NET_DEVICES", "lo", 1);
    AgentOptions o;
    const std::size_t size = 1024 * kMiB;
    Target t = StartTarget({size, true, true, o});
    if (auto in = Connect(t, o, size)) {
      auto h = in->agent->PrepareTransfer(TransferOp::kWrite, "target", {{in->region, 0, 1, 0, size}}, std::nullopt);
      if (h.ok()) {
        const double c0 = ProcessCpu(), th0 = ThreadCpu();
        const auto w0 = Clock::now();
        Status s = in->agent->Post(*h);
        if (s.ok()) s = in->agent->Wait(*h, kTimeoutS);
        const double wall = Seconds(Clock::now() - w0);
        row("initiator, Post + Wait of a 1 GiB WRITE over TCP (lane threads send)", wall, ProcessCpu() - c0,
            ThreadCpu() - th0);
        std::printf("|   (that transfer: %.2f GB/s, %s) | | | |\n", static_cast<double>(size) / wall / 1e9,
                    s.ok() ? "ok" : s.ToString().c_str());
        (void)in->agent->Release(*h);
      }
      const char done[] = "done";
      (void)in->agent->SendMessage("target", std::span<const std::byte>(reinterpret_cast<const std::byte*>(done), 4));
      if (auto r = RecvFrame(t.fd)) {
        double cpu = 0, wall = 0;
        std::string text(reinterpret_cast<const char*>(r->data()), r->size());
        if (std::sscanf(text.c_str(), "%lf %lf", &cpu, &wall) == 2)
          std::printf("| target process in WaitNotification meanwhile (its lane threads receive the 1 GiB) | %.2f | "
                      "%.2f | - |\n",
                      wall, 100 * cpu / wall);
      }
      in->agent.reset();
    }
    WaitPid(t.pid, 30);
    ::close(t.fd);
    ::unsetenv("UCX_TLS");
    ::unsetenv("UCX_NET_DEVICES");
  }
  {  // a long one-sided transfer into an arena: the target's process sleeps
    AgentOptions o;
    const std::size_t size = 1024 * kMiB;
    Target t = StartTarget({size, true, true, o});
    if (auto in = Connect(t, o, size)) {
      auto h = in->agent->PrepareTransfer(TransferOp::kWrite, "target", {{in->region, 0, 1, 0, size}}, std::nullopt);
      if (h.ok()) {
        for (int i = 0; i < 8; ++i) {
          if (!in->agent->Post(*h).ok() || !in->agent->Wait(*h, kTimeoutS).ok()) break;
        }
        (void)in->agent->Release(*h);
      }
      const char done[] = "done";
      (void)in->agent->SendMessage("target", std::span<const std::byte>(reinterpret_cast<const std::byte*>(done), 4));
      if (auto r = RecvFrame(t.fd)) {
        double cpu = 0, wall = 0;
        std::string text(reinterpret_cast<const char*>(r->data()), r->size());
        if (std::sscanf(text.c_str(), "%lf %lf", &cpu, &wall) == 2)
          std::printf("| target process in WaitNotification during 8 x 1 GiB one-sided WRITEs into its arena | %.2f | "
                      "%.2f | - |\n",
                      wall, 100 * cpu / wall);
      }
      in->agent.reset();
    }
    WaitPid(t.pid, 30);
    ::close(t.fd);
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> sections;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--section" && i + 1 < argc) {
      sections.push_back(argv[++i]);
    } else if (a == "--trials" && i + 1 < argc) {
      g_trials = std::max(1, std::atoi(argv[++i]));
    } else if (a == "--seconds" && i + 1 < argc) {
      g_seconds = std::strtod(argv[++i], nullptr);
    } else {
      std::fprintf(stderr, "usage: %s [--section same-host|tcp|small|cpu|metrics]... [--trials K] [--seconds S]\n", argv[0]);
      return 2;
    }
  }
  if (sections.empty()) sections = {"same-host", "tcp", "small", "cpu"};
  std::printf("agent_transfer_bench: lanes default %u, slice %llu B, flow control %u ops / %llu B per peer\n",
              shardwire::kDefaultLanes, static_cast<unsigned long long>(AgentOptions{}.slice_bytes),
              AgentOptions{}.max_ops_in_flight_per_peer,
              static_cast<unsigned long long>(AgentOptions{}.max_bytes_in_flight_per_peer));
  for (const auto& s : sections) {
    if (s == "same-host") SameHost();
    else if (s == "tcp") Tcp();
    else if (s == "small") Small();
    else if (s == "cpu") Cpu();
    else if (s == "metrics") MetricsCost();
    else std::fprintf(stderr, "unknown section %s\n", s.c_str());
  }
  return 0;
}
