// Peer liveness from /proc: who this process is (ProcessIdentity, carried in the
// metadata blob) and whether a same-host peer's process is still the one that
// exported its blob. The agent's lane 0 polls ProcessGone for every same-host
// peer it checks (PeerFailureDetection::kAuto, Agent::Impl::CheckLiveness); the
// kernel-copy paths use it once before trusting a pid.
//
// Internal header (src/transport); not part of the public API. Thread-safety:
// no shared state; any thread. Linux only (/proc, boot_id, pid namespaces).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "transport/metadata_blob.h"

namespace shardwire::transport {

/// Fields of /proc/<pid>/stat the liveness check needs.
struct ProcStat {
  char state = '?';              ///< field 3: R, S, D, Z (zombie), X (dead), ...
  std::uint64_t start_time = 0;  ///< field 22: start time in clock ticks after boot
};

/// Reads state and start time of /proc/<pid>/stat. nullopt when the file is
/// missing or unreadable (the process is gone) or malformed; a start time of 0
/// when the line has fewer than 22 fields.
std::optional<ProcStat> ReadProcStat(std::uint32_t pid);

/// This process: pid, start time, and host = "<boot_id>/<pid namespace>" (empty
/// when either cannot be read, which makes no peer same-host). No errors.
ProcessIdentity SelfIdentity();

/// Empty when process `p` looks alive; otherwise why it does not (no such pid,
/// a zombie or dead process, or the pid now names a process with another start
/// time). Reads /proc once.
std::string ProcessGone(const ProcessIdentity& p);

}  // namespace shardwire::transport
