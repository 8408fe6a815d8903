#include "control/state_id.h"

#include <fmt/format.h>

#include <random>

namespace shardwire::control {

std::string NewStateId() {
  std::random_device rd;
  std::string id;
  for (int i = 0; i < 4; ++i) id += fmt::format("{:08x}", rd());
  return id;
}

bool IsStateId(std::string_view id) {
  if (id.size() != 32) return false;
  for (char c : id) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

Status StateGone(std::string_view bound, std::string_view serving) {
  return FailedPrecondition(fmt::format(
      "the coordinator state this client joined ({}) is gone; the coordinator now serves {} (an in-memory "
      "coordinator was restarted, or its Redis lost its data): keys, counters and job membership made before "
      "are lost, so restart the job (`shardwire serve --redis URL` with a persistent Redis survives coordinator "
      "restarts)",
      bound.substr(0, 64),
      serving.empty() ? std::string("no state yet (Redis holds no state id)") : fmt::format("state {}", serving)));
}

}  // namespace shardwire::control
