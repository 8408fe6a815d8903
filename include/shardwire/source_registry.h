// SourceRegistry: what the P2P loading workflow needs of the coordinator's registry
// of weight sources (register, heartbeat, list, mark STALE, deregister).
//
// ModelSource and ModelLoader talk to this interface, not to the gRPC client, so
// that their source selection and failover logic can be unit-tested against an
// in-memory fake; production code passes MakeCoordinatorSourceRegistry(client).
// Record fields, states and leases are those of coordinator.h.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "shardwire/coordinator.h"
#include "shardwire/status.h"

namespace shardwire {

/// The source-registry part of the coordinator API. Contracts (arguments, errors)
/// are those of the CoordinatorClient methods of the same names; the lease calls
/// (register, heartbeat, deregister) take their time bound explicitly (`timeout_s`, seconds, > 0, +inf for the
/// implementation's own bound), so ModelSource's heartbeat thread and destructor
/// stay bounded whatever the registry's options.
/// Thread-safety: implementations must be fully thread-safe (ModelSource
/// heartbeats from its own thread while its owner calls other methods).
class SourceRegistry {
 public:
  virtual ~SourceRegistry() = default;
  virtual Result<SourceRecord> RegisterSource(const SourceRecord& record, double timeout_s) = 0;
  virtual Result<SourceHeartbeat> HeartbeatSource(const std::string& source_id, double timeout_s) = 0;
  virtual Result<std::vector<SourceRecord>> ListSources(const std::string& model_identity,
                                                        std::optional<SourceState> state) = 0;
  /// `hold`: as CoordinatorClient::MarkSourceStale (kept STALE for the coordinator's
  /// source_mark_hold_s, not only until the source's next heartbeat).
  virtual Status MarkSourceStale(const std::string& source_id, const std::string& reason, bool hold) = 0;
  virtual Status DeregisterSource(const std::string& source_id, double timeout_s) = 0;
};

/// A SourceRegistry that forwards to `client` (which must outlive it).
std::unique_ptr<SourceRegistry> MakeCoordinatorSourceRegistry(CoordinatorClient& client);

}  // namespace shardwire
