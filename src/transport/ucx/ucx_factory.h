// The UCX backend's factory, without UCX's headers (for backend_registry.cc).
// Internal header (src/transport/ucx); not part of the public API.
#pragma once

#include <memory>

#include "transport/backend.h"

namespace shardwire::transport::ucx {

/// Makes the UCX backend (ucx_backend.h) for `options` (lanes, name, ucx).
/// Errors: kInvalidArgument for bad AgentOptions::ucx values; kTransportError from UCX.
Result<std::unique_ptr<TransportBackend>> MakeUcxBackend(const AgentOptions& options);

}  // namespace shardwire::transport::ucx
