// Peer liveness from /proc (peer_liveness.h).
#include "transport/peer_liveness.h"

#include <unistd.h>

#include <cstdlib>
#include <fstream>

#include <fmt/format.h>

namespace shardwire::transport {

std::optional<ProcStat> ReadProcStat(std::uint32_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!f || !std::getline(f, line)) return std::nullopt;
  const auto close = line.rfind(')');  // comm may contain spaces and ')'
  if (close == std::string::npos || close + 2 >= line.size()) return std::nullopt;
  ProcStat st;
  st.state = line[close + 2];
  std::size_t pos = close + 2;
  for (int field = 3; field < 22; ++field) {
    pos = line.find(' ', pos);
    if (pos == std::string::npos) return st;
    ++pos;
  }
  st.start_time = std::strtoull(line.c_str() + pos, nullptr, 10);
  return st;
}

ProcessIdentity SelfIdentity() {
  ProcessIdentity id;
  id.pid = static_cast<std::uint32_t>(::getpid());
  if (auto st = ReadProcStat(id.pid)) id.start_time = st->start_time;
  std::ifstream boot("/proc/sys/kernel/random/boot_id");
  std::string boot_id;
  char ns[128] = {};
  const ssize_t n = ::readlink("/proc/self/ns/pid", ns, sizeof(ns) - 1);
  if (boot && std::getline(boot, boot_id) && !boot_id.empty() && n > 0) {
    id.host = boot_id + "/" + std::string(ns, static_cast<std::size_t>(n));
  }
  return id;
}

// Empty when the process looks alive; otherwise why it does not.
std::string ProcessGone(const ProcessIdentity& p) {
  auto st = ReadProcStat(p.pid);
  if (!st) return fmt::format("process {} no longer exists", p.pid);
  if (st->state == 'Z' || st->state == 'X') return fmt::format("process {} exited", p.pid);
  if (p.start_time != 0 && st->start_time != p.start_time)
    return fmt::format("process {} exited (pid reused by another process)", p.pid);
  return {};
}

}  // namespace shardwire::transport
