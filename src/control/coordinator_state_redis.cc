// TEMPORARY placeholder, replaced when the Redis helper's coordinator_state_redis.cc
// (wip/redis) is merged: lets `shardwire serve --redis URL` link and fail cleanly.
#include "control/coordinator_state.h"

namespace shardwire::control {

Result<std::unique_ptr<CoordinatorState>> ConnectRedisCoordinatorState(const std::string& url, LeasePolicy, double) {
  return Unsupported("Redis state not built yet (coordinator_state_redis.cc is a placeholder; asked for " + url + ")");
}

}  // namespace shardwire::control
