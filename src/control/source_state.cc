// SourceStateName (coordinator.h).
#include "shardwire/coordinator.h"

namespace shardwire {

std::string_view SourceStateName(SourceState state) {
  switch (state) {
    case SourceState::kReady:
      return "READY";
    case SourceState::kStale:
      return "STALE";
  }
  return "UNKNOWN";
}

}  // namespace shardwire
