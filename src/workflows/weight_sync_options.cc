// ValidateWeightSyncTimes (weight_sync.h).
#include <fmt/format.h>

#include <cmath>

#include "shardwire/weight_sync.h"

namespace shardwire {

Status ValidateWeightSyncTimes(const WeightSyncOptions& options) {
  auto check = [](double value, const char* name, bool zero_allowed) -> Status {
    if (std::isfinite(value) && (value > 0 || (zero_allowed && value == 0))) return Status::Ok();
    return InvalidArgument(fmt::format("weight sync option {} must be finite and {} 0 s, got {}", name,
                                       zero_allowed ? ">=" : ">", value));
  };
  SW_RETURN_IF_ERROR(check(options.timeout_s, "timeout_s", false));
  SW_RETURN_IF_ERROR(check(options.engine_timeout_s, "engine_timeout_s", false));
  return check(options.catch_up_hold_s, "catch_up_hold_s", true);
}

}  // namespace shardwire
