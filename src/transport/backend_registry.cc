// MakeBackend: AgentOptions::backend -> a TransportBackend. Adding a backend:
// its folder (src/transport/<name>/, implementing backend.h), its factory's
// line here and its sources in src/transport/CMakeLists.txt (docs/transport.md,
// "Adding a backend").
#include <fmt/format.h>

#include "transport/backend.h"
#include "transport/inproc/inproc_factory.h"
#include "transport/ucx/ucx_factory.h"

namespace shardwire::transport {

Result<std::unique_ptr<TransportBackend>> MakeBackend(const AgentOptions& options) {
  if (options.backend == kUcxBackend) return ucx::MakeUcxBackend(options);
  if (options.backend == kInProcessBackend) return inproc::MakeInProcessBackend(options);
  return InvalidArgument(fmt::format("Agent::Create: unknown backend \"{}\" (known: {}, {})", options.backend,
                                     kUcxBackend, kInProcessBackend));
}

}  // namespace shardwire::transport
