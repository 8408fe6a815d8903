// agent_write_bw: Agent WRITE throughput between two processes on one host,
// beside single-thread memcpy and ucx_perftest -t ucp_put_bw measured in the
// same run.
//
// Usage: agent_write_bw [--max-size BYTES] [--seconds S] [--trials K] [--no-perftest]
//   Sizes are 4 KiB, 16 KiB, ... (powers of 4) up to --max-size (256 MiB).
//   Each figure is the best of --trials (3) trials; a trial repeats its
//   operation for about --seconds (0.12) after one warm-up. Best-of-K because
//   the 2-core machines are shared and a co-scheduled job only ever slows a
//   trial down. GB/s means 1e9 bytes per second.
//
// Agent columns (initiator = this process, target = a forked child):
//   arena 1d    : target memory from AllocateArena (UCX-allocated, shared
//                 memory), one descriptor of SIZE per post, Post + Wait per
//                 iteration. The target process does NOT progress during the
//                 measurement (it blocks in read() on a socket), so any
//                 completion proves true one-sided puts.
//   arena Nd    : same, N descriptors of SIZE per post (N = min(64,
//                 max(1, 4 MiB / SIZE))): amortises the per-post flush like
//                 ucx_perftest's outstanding window. All descriptors (like
//                 ucx_perftest's iterations and the memcpy loop) reuse offset 0,
//                 so every column works on the same SIZE-byte buffers and small
//                 sizes measure cache, not DRAM, bandwidth.
//   reg Nd      : caller-registered memory (RegisterMemory) on both sides,
//                 N descriptors per post; the target sits in
//                 WaitNotification (puts are emulated over active messages and
//                 need it to progress).
//   reg ucxpeer : as reg Nd with PeerFailureDetection::kUcxPeer (UCX
//                 error-handling mode PEER, which on UCX 1.13.1 means TCP).
// Ratios are arena Nd / memcpy and arena Nd / ucx_perftest.
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "shardwire/agent.h"
#include "socket_frames.h"

namespace {

using shardwire::bench::ReadAll;
using shardwire::bench::RecvFrame;
using shardwire::bench::SendFrame;
using shardwire::bench::WriteAll;

using shardwire::Agent;
using shardwire::PeerFailureDetection;
using shardwire::RegionId;
using shardwire::TransferDescriptor;
using shardwire::TransferOp;
using Clock = std::chrono::steady_clock;

constexpr std::size_t kKiB = 1024;
constexpr std::size_t kMiB = 1024 * kKiB;
constexpr double kTimeoutS = 60;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }





std::optional<int> WaitPidFor(pid_t pid, double timeout_s) {
  const auto deadline = Clock::now() + std::chrono::duration<double>(timeout_s);
  for (;;) {
    int st = 0;
    if (::waitpid(pid, &st, WNOHANG) == pid) return st;
    if (Clock::now() >= deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &st, 0);
      return std::nullopt;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

// ---- memcpy -------------------------------------------------------------------
double MeasureMemcpy(std::size_t size, double seconds, std::vector<char>& src, std::vector<char>& dst) {
  std::memcpy(dst.data(), src.data(), size);  // warm-up
  std::uint64_t iters = 0;
  const auto start = Clock::now();
  Clock::duration elapsed{};
  do {
    std::memcpy(dst.data(), src.data(), size);
    asm volatile("" : : "r"(dst.data()) : "memory");  // keep the copy
    ++iters;
    elapsed = Clock::now() - start;
  } while (Seconds(elapsed) < seconds);
  return static_cast<double>(iters) * static_cast<double>(size) / Seconds(elapsed) / 1e9;
}

// ---- ucx_perftest -------------------------------------------------------------
bool OnPath(const std::string& exe) {
  const char* path = std::getenv("PATH");
  if (path == nullptr) return false;
  std::string p(path);
  std::size_t start = 0;
  while (start <= p.size()) {
    std::size_t end = p.find(':', start);
    if (end == std::string::npos) end = p.size();
    std::string candidate = p.substr(start, end - start) + "/" + exe;
    if (::access(candidate.c_str(), X_OK) == 0) return true;
    start = end + 1;
  }
  return false;
}

int FreePort() {
  int s = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof(a);
  int port = -1;
  if (::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
      ::getsockname(s, reinterpret_cast<sockaddr*>(&a), &len) == 0)
    port = ntohs(a.sin_port);
  ::close(s);
  return port;
}

// Runs one server/client pair; returns GB/s from the client's "Final:" line
// (its "overall" bandwidth column, printed in MB/s = 2^20 bytes/s).
std::optional<double> MeasurePerftest(std::size_t size, std::uint64_t iters) {
  const int port = FreePort();
  if (port <= 0) return std::nullopt;
  const pid_t server = ::fork();
  if (server == 0) {
    int devnull = ::open("/dev/null", O_WRONLY);
    ::dup2(devnull, 1);
    ::dup2(devnull, 2);
    const std::string p = std::to_string(port);
    ::execlp("ucx_perftest", "ucx_perftest", "-p", p.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // let it listen
  const std::string cmd = "ucx_perftest localhost -p " + std::to_string(port) + " -t ucp_put_bw -s " +
                          std::to_string(size) + " -n " + std::to_string(iters) + " 2>&1";
  std::optional<double> result;
  if (FILE* f = ::popen(cmd.c_str(), "r")) {
    char line[1024];
    while (std::fgets(line, sizeof(line), f) != nullptr) {
      if (std::strncmp(line, "Final:", 6) != 0) continue;
      double v[8] = {};
      if (std::sscanf(line + 6, "%lf %lf %lf %lf %lf %lf %lf %lf", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6],
                      &v[7]) == 8)
        result = v[5] * 1048576.0 / 1e9;
    }
    ::pclose(f);
  }
  WaitPidFor(server, 10);
  return result;
}

// ---- agent --------------------------------------------------------------------
enum class Mem { kArena, kRegistered };

struct Session {
  Mem mem;
  PeerFailureDetection detection;
  bool target_progresses;  // false: the target blocks in read() during the run
};

std::size_t BatchFor(std::size_t size) { return std::min<std::size_t>(64, std::max<std::size_t>(1, 4 * kMiB / size)); }

struct AgentFigures {
  std::map<std::size_t, double> single;   // GB/s, one descriptor per post
  std::map<std::size_t, double> batched;  // GB/s, BatchFor(size) descriptors per post
};

std::optional<double> MeasurePosts(Agent& a, RegionId local, RegionId remote, std::size_t size, std::size_t n,
                                   double seconds, int trials) {
  std::vector<TransferDescriptor> d;
  for (std::size_t j = 0; j < n; ++j) d.push_back({local, 0, remote, 0, size});
  auto h = a.PrepareTransfer(TransferOp::kWrite, "target", d, std::nullopt);
  if (!h.ok()) {
    std::fprintf(stderr, "prepare: %s\n", h.status().ToString().c_str());
    return std::nullopt;
  }
  auto once = [&]() -> bool {
    shardwire::Status s = a.Post(*h);
    if (s.ok()) s = a.Wait(*h, kTimeoutS);
    if (!s.ok()) std::fprintf(stderr, "post/wait (%zu x %zu B): %s\n", n, size, s.ToString().c_str());
    return s.ok();
  };
  if (!once()) return std::nullopt;  // warm-up
  double best = 0;
  for (int t = 0; t < trials; ++t) {
    std::uint64_t iters = 0;
    const auto start = Clock::now();
    Clock::duration elapsed{};
    do {
      if (!once()) return std::nullopt;
      ++iters;
      elapsed = Clock::now() - start;
    } while (Seconds(elapsed) < seconds);
    best = std::max(best, static_cast<double>(iters * n * size) / Seconds(elapsed) / 1e9);
  }
  (void)a.Release(*h);
  return best;
}

int TargetMain(int fd, Session s, std::size_t region_size) {
  auto agent = Agent::Create({.name = "target", .ucx = {.failure_detection = s.detection}});
  if (!agent.ok()) return 10;
  Agent& a = **agent;
  std::vector<std::byte> owned;
  auto region = s.mem == Mem::kArena ? a.AllocateArena(region_size)
                                     : (owned.resize(region_size), a.RegisterMemory(owned.data(), owned.size()));
  if (!region.ok()) return 11;
  auto blob = a.ExportMetadata();
  if (!blob.ok() || !SendFrame(fd, *blob)) return 12;
  auto theirs = RecvFrame(fd);
  if (!theirs || !a.ImportMetadata(*theirs).ok()) return 13;
  if (!s.target_progresses) {
    // Block without touching the agent until the initiator is done.
    return RecvFrame(fd) ? 0 : 14;
  }
  for (;;) {
    auto n = a.WaitNotification(kTimeoutS * 4);
    if (!n.ok()) return 15;
    if (n->payload.size() == 4 && std::memcmp(n->payload.data(), "done", 4) == 0) return 0;
  }
}

std::optional<AgentFigures> MeasureAgent(Session s, const std::vector<std::size_t>& sizes, double seconds,
                                         int trials) {
  const std::size_t region_size = sizes.back();
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0) return std::nullopt;
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::close(fds[0]);
    ::_exit(TargetMain(fds[1], s, region_size));
  }
  ::close(fds[1]);
  const int fd = fds[0];
  std::optional<AgentFigures> out;
  {
    auto agent = Agent::Create({.name = "initiator", .ucx = {.failure_detection = s.detection}});
    if (!agent.ok()) return std::nullopt;
    Agent& a = **agent;
    std::vector<std::byte> owned;
    auto region = s.mem == Mem::kArena ? a.AllocateArena(region_size)
                                       : (owned.resize(region_size), a.RegisterMemory(owned.data(), owned.size()));
    auto theirs = RecvFrame(fd);
    auto blob = a.ExportMetadata();
    if (region.ok() && theirs && blob.ok() && SendFrame(fd, *blob) && a.ImportMetadata(*theirs).ok()) {
      std::memset(a.RegionBytes(*region).data(), 0x5A, region_size);
      AgentFigures f;
      for (std::size_t size : sizes) {
        const std::size_t n = BatchFor(size);
        if (auto v = MeasurePosts(a, *region, 1, size, 1, seconds, trials)) f.single[size] = *v;
        if (n > 1) {
          if (auto v = MeasurePosts(a, *region, 1, size, n, seconds, trials)) f.batched[size] = *v;
        } else if (f.single.count(size)) {
          f.batched[size] = f.single[size];
        }
      }
      out = f;
    }
    if (s.target_progresses) {
      const char done[] = "done";
      (void)a.SendMessage("target", std::span<const std::byte>(reinterpret_cast<const std::byte*>(done), 4));
      for (int i = 0; i < 100; ++i) a.Progress();
    } else {
      (void)SendFrame(fd, {});
    }
  }
  auto st = WaitPidFor(pid, 30);
  ::close(fd);
  if (!st || !WIFEXITED(*st) || WEXITSTATUS(*st) != 0)
    std::fprintf(stderr, "target child for this session did not exit cleanly\n");
  return out;
}

std::string SizeName(std::size_t s) {
  if (s >= kMiB) return std::to_string(s / kMiB) + " MiB";
  return std::to_string(s / kKiB) + " KiB";
}

std::string Fmt(std::optional<double> v, int prec = 2) {
  if (!v) return "n/a";
  char b[32];
  std::snprintf(b, sizeof(b), "%.*f", prec, *v);
  return b;
}

std::optional<double> Get(const std::map<std::size_t, double>& m, std::size_t k) {
  auto it = m.find(k);
  if (it == m.end()) return std::nullopt;
  return it->second;
}

}  // namespace

int main(int argc, char** argv) {
  std::size_t max_size = 256 * kMiB;
  double seconds = 0.12;
  int trials = 3;
  bool perftest = true;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--max-size" && i + 1 < argc) {
      max_size = std::strtoull(argv[++i], nullptr, 10);
    } else if (arg == "--seconds" && i + 1 < argc) {
      seconds = std::strtod(argv[++i], nullptr);
    } else if (arg == "--trials" && i + 1 < argc) {
      trials = std::max(1, std::atoi(argv[++i]));
    } else if (arg == "--no-perftest") {
      perftest = false;
    } else {
      std::fprintf(stderr, "usage: %s [--max-size BYTES] [--seconds S] [--trials K] [--no-perftest]\n", argv[0]);
      return 2;
    }
  }
  std::vector<std::size_t> sizes;
  for (std::size_t s = 4 * kKiB; s <= max_size; s *= 4) sizes.push_back(s);
  if (sizes.empty()) return 2;
  const auto t0 = Clock::now();

  std::map<std::size_t, double> memcpy_bw;
  {
    std::vector<char> src(sizes.back(), 1), dst(sizes.back(), 2);
    for (std::size_t s : sizes) {
      double best = 0;
      for (int t = 0; t < trials; ++t) best = std::max(best, MeasureMemcpy(s, seconds, src, dst));
      memcpy_bw[s] = best;
    }
  }
  std::fprintf(stderr, "memcpy done (%.1f s)\n", Seconds(Clock::now() - t0));

  std::map<std::size_t, std::optional<double>> perf_bw;
  const bool have_perftest = perftest && OnPath("ucx_perftest");
  for (std::size_t s : sizes) {
    if (!have_perftest) {
      perf_bw[s] = std::nullopt;
      continue;
    }
    // Aim for about `seconds` at roughly memcpy speed.
    const double est = memcpy_bw[s] * 1e9 * seconds * 2 / static_cast<double>(s);
    const auto iters = static_cast<std::uint64_t>(std::clamp(est, 8.0, 1e6));
    std::optional<double> best;
    for (int t = 0; t < trials; ++t) {
      auto v = MeasurePerftest(s, iters);
      if (v && (!best || *v > *best)) best = v;
    }
    perf_bw[s] = best;
  }
  std::fprintf(stderr, "ucx_perftest done (%.1f s)\n", Seconds(Clock::now() - t0));

  auto arena = MeasureAgent({Mem::kArena, PeerFailureDetection::kAuto, /*target_progresses=*/false}, sizes, seconds, trials);
  std::fprintf(stderr, "agent arena done (%.1f s)\n", Seconds(Clock::now() - t0));
  auto reg = MeasureAgent({Mem::kRegistered, PeerFailureDetection::kAuto, true}, sizes, seconds, trials);
  std::fprintf(stderr, "agent registered done (%.1f s)\n", Seconds(Clock::now() - t0));
  // PEER mode goes over TCP here; cap its sizes so the run stays short.
  std::vector<std::size_t> peer_sizes;
  for (std::size_t s : sizes)
    if (s <= 64 * kMiB) peer_sizes.push_back(s);
  auto peer = MeasureAgent({Mem::kRegistered, PeerFailureDetection::kUcxPeer, true}, peer_sizes, seconds, trials);
  std::fprintf(stderr, "agent ucx-peer done (%.1f s)\n", Seconds(Clock::now() - t0));

  AgentFigures none;
  const AgentFigures& A = arena ? *arena : none;
  const AgentFigures& R = reg ? *reg : none;
  const AgentFigures& P = peer ? *peer : none;
  std::printf("Agent WRITE between two processes, GB/s (1e9 B/s); N = descriptors per post\n\n");
  std::printf("| size | N | memcpy 1 thread | ucx_perftest ucp_put_bw | agent arena 1d | agent arena Nd | agent reg Nd "
              "| agent reg Nd ucx-peer | arena Nd / memcpy | arena Nd / perftest |\n");
  std::printf("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  for (std::size_t s : sizes) {
    auto ab = Get(A.batched, s);
    auto pf = perf_bw[s];
    std::optional<double> r1, r2;
    if (ab) r1 = *ab / memcpy_bw[s];
    if (ab && pf && *pf > 0) r2 = *ab / *pf;
    std::printf("| %s | %zu | %s | %s | %s | %s | %s | %s | %s | %s |\n", SizeName(s).c_str(), BatchFor(s),
                Fmt(memcpy_bw[s]).c_str(), Fmt(pf).c_str(), Fmt(Get(A.single, s)).c_str(), Fmt(ab).c_str(),
                Fmt(Get(R.batched, s)).c_str(), Fmt(Get(P.batched, s), 3).c_str(), Fmt(r1).c_str(), Fmt(r2).c_str());
  }
  std::printf("\n(best of %d trials of ~%.2f s; arena: the target did not progress during the run; total %.1f s)\n",
              trials, seconds, Seconds(Clock::now() - t0));
  return 0;
}
