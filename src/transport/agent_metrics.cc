// Agent metrics (transport/agent_metrics.h).
#include "transport/agent_metrics.h"

namespace shardwire::transport {

void TransferMetrics::Failed(const Status& error) const {
  if (failures_ == nullptr) return;
  failures_->Labels({agent_, peer_, op_, std::string(ErrorCodeName(error.code()))}).Increment();
}

Result<AgentMetrics> AgentMetrics::Make(MetricsRegistry* registry, std::string agent_name) {
  AgentMetrics m;
  if (registry == nullptr) return m;
  const std::vector<std::string> labels = {"agent", "peer", "op"};
  SW_ASSIGN_OR_RETURN(m.bytes_, registry->AddCounter("shardwire_transport_bytes_total",
                                                     "Bytes moved by completed transfer posts, by peer and "
                                                     "operation (WRITE: put to the peer, READ: get from it).",
                                                     labels));
  SW_ASSIGN_OR_RETURN(m.transfers_, registry->AddCounter("shardwire_transport_transfers_total",
                                                         "Completed transfer posts, by peer and operation.", labels));
  SW_ASSIGN_OR_RETURN(m.failures_,
                      registry->AddCounter("shardwire_transport_failures_total",
                                           "Failed transfer posts, by peer, operation and error code.",
                                           {"agent", "peer", "op", "code"}));
  m.agent_ = std::move(agent_name);
  return m;
}

TransferMetrics AgentMetrics::ForTransfer(std::string_view peer, TransferOp op) const {
  TransferMetrics t;
  if (bytes_ == nullptr) return t;
  t.agent_ = agent_;
  t.peer_ = std::string(peer);
  t.op_ = op == TransferOp::kWrite ? "WRITE" : "READ";
  t.bytes_ = bytes_->Labels({t.agent_, t.peer_, t.op_});
  t.transfers_ = transfers_->Labels({t.agent_, t.peer_, t.op_});
  t.failures_ = failures_;
  return t;
}

}  // namespace shardwire::transport
