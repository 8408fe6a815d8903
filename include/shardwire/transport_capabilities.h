// What the transport can do on this machine, probed at run time: the UCX version,
// its transports and memory kinds (host, CUDA, ROCm), and the defects of the running
// UCX version that Shardwire cannot guard against. `shardwire info` prints it.
//
// Thread-safety: ProbeTransportCapabilities is thread-safe; the structs are values.
#pragma once

#include <string>
#include <vector>

#include "shardwire/status.h"

namespace shardwire {

/// One memory kind and whether this process can register and move it.
struct MemoryKindSupport {
  std::string kind;  ///< "host", "cuda", "cuda-managed", "rocm"
  bool available = false;
  std::string detail;  ///< why (not), e.g. "UCX built without CUDA support"
};

/// What UCX can do on this machine, found at run time (not at build time).
struct TransportCapabilities {
  std::string ucx_version;  ///< ucp_get_version_string()
  /// "component/md: transport/device" for every UCT transport resource, e.g.
  /// "tcp/tcp: tcp/lo" (uct_query_components, uct_md_query_tl_resources).
  std::vector<std::string> transports;
  /// host, cuda, cuda-managed, rocm: from ucp_context_query
  /// (UCP_ATTR_FIELD_MEMORY_TYPES) and each memory domain's reg/access memory
  /// types (uct_md_query).
  std::vector<MemoryKindSupport> memory_kinds;
  /// Defects of the running UCX version (ucp_get_version) that Shardwire cannot
  /// guard against from outside UCX, one sentence each with the upstream fix
  /// (e.g. on UCX < 1.14: a process aborts when its TCP peer dies during
  /// connection set-up, openucx/ucx#8175). Empty for versions with none known.
  /// Source: docs/transport.md ("Tried first: a TCP-only UCX context").
  std::vector<std::string> known_defects;
};

/// Probes UCX once (a throw-away ucp context and every UCT component's memory
/// domains). Takes about 10-50 ms. Thread-safe.
/// Errors: kTransportError when ucp_init or uct_query_components fails.
Result<TransportCapabilities> ProbeTransportCapabilities();

}  // namespace shardwire
