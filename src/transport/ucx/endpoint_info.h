// Endpoint introspection: which UCX transports an endpoint's lanes use, as UCX
// prints them ("tcp/lo", "sysv/memory", "cma/memory"). The agent decides from
// them the write path of a peer (WritePath::kAuto: active messages when every
// lane is TCP), whether a kernel copy is worth opening, and reports them in
// PeerInfo::transports.
//
// Internal header (src/transport); not part of the public API. Thread-safety:
// EndpointTransports reads the endpoint (the caller holds the mutex of the lane
// whose worker owns it); OnlyTcp is pure.
#pragma once

#include <string>
#include <vector>

#include <ucp/api/ucp.h>

namespace shardwire::transport {

/// The transports of `ep`'s lanes in UCX's lane order, each "<transport>/<device>"
/// with the device's ".N" suffix dropped, parsed from ucp_ep_print_info (UCX
/// 1.13.1 has no ucp_ep_query field for them). Empty when the text cannot be
/// captured (open_memstream fails) or names no lane.
std::vector<std::string> EndpointTransports(ucp_ep_h ep);

/// True when `transports` is not empty and every entry starts with "tcp/".
bool OnlyTcp(const std::vector<std::string>& transports);

}  // namespace shardwire::transport
