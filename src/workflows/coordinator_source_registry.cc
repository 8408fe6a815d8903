#include "shardwire/source_registry.h"

namespace shardwire {
namespace {

class CoordinatorSourceRegistry final : public SourceRegistry {
 public:
  explicit CoordinatorSourceRegistry(CoordinatorClient& client) : client_(client) {}
  Result<SourceRecord> RegisterSource(const SourceRecord& record, double timeout_s) override {
    return client_.RegisterSource(record, timeout_s);
  }
  Result<SourceHeartbeat> HeartbeatSource(const std::string& source_id, double timeout_s) override {
    return client_.HeartbeatSource(source_id, timeout_s);
  }
  Result<std::vector<SourceRecord>> ListSources(const std::string& model_identity,
                                                std::optional<SourceState> state) override {
    return client_.ListSources(model_identity, state);
  }
  Status MarkSourceStale(const std::string& source_id, const std::string& reason, bool hold) override {
    return client_.MarkSourceStale(source_id, reason, hold);
  }
  Status DeregisterSource(const std::string& source_id, double timeout_s) override {
    return client_.DeregisterSource(source_id, timeout_s);
  }

 private:
  CoordinatorClient& client_;
};

}  // namespace

std::unique_ptr<SourceRegistry> MakeCoordinatorSourceRegistry(CoordinatorClient& client) {
  return std::make_unique<CoordinatorSourceRegistry>(client);
}

}  // namespace shardwire
