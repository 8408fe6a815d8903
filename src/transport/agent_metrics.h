// Internal to the transport: what an Agent reports into a MetricsRegistry
// (AgentOptions::metrics; names in docs/metrics.md). Labels: agent (this agent's name),
// peer (the peer agent's name), op ("WRITE" / "READ"), code (ErrorCodeName of a failure).
//
// - shardwire_transport_bytes_total{agent,peer,op}: bytes of completed posts (a post counts
//   its prepared transfer's bytes once it is done; failed or cancelled posts count nothing).
// - shardwire_transport_transfers_total{agent,peer,op}: completed posts.
// - shardwire_transport_failures_total{agent,peer,op,code}: posts that failed, by error code.
//
// The series of one prepared transfer are resolved once (PrepareTransfer); completing a post
// costs two relaxed atomic adds. Without a registry every handle is a no-op.
#pragma once

#include <string>
#include <string_view>

#include "shardwire/metrics.h"
#include "shardwire/status.h"
#include "shardwire/transfer_descriptor.h"

namespace shardwire::transport {

/// The series of one prepared transfer. Copyable; a default one records nothing.
/// Thread-safety: Done and Failed may run on any thread (lane threads, the API thread).
class TransferMetrics {
 public:
  /// One post completed: `bytes` more moved, one more transfer.
  void Done(std::uint64_t bytes) const {
    bytes_.Increment(bytes);
    transfers_.Increment();
  }
  /// One post failed with `error` (takes the family mutex: failures are rare).
  void Failed(const Status& error) const;

 private:
  friend class AgentMetrics;
  Counter bytes_;
  Counter transfers_;
  CounterFamily* failures_ = nullptr;
  std::string agent_, peer_, op_;
};

/// The families of one Agent (no-op without a registry).
class AgentMetrics {
 public:
  AgentMetrics() = default;
  /// Registers (or finds) the families in `registry` (nullptr: no metrics). Errors: a name
  /// clash in the registry (kAlreadyExists).
  static Result<AgentMetrics> Make(MetricsRegistry* registry, std::string agent_name);
  /// The series of transfers of kind `op` to `peer` (no-op without a registry).
  TransferMetrics ForTransfer(std::string_view peer, TransferOp op) const;

 private:
  CounterFamily* bytes_ = nullptr;
  CounterFamily* transfers_ = nullptr;
  CounterFamily* failures_ = nullptr;
  std::string agent_;
};

}  // namespace shardwire::transport
