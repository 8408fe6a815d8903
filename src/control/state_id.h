// State ids (CoordinatorState::StateId): what names one coordinator state, so a
// client can tell the state it joined from a new, empty one (docs/coordinator.md,
// "State ids").
#pragma once

#include <string>
#include <string_view>

#include "shardwire/status.h"

namespace shardwire::control {

/// A new random state id: 32 lowercase hex digits (128 bits from std::random_device).
/// CoordinatorClient also takes its request-id prefix from it (unique per client).
std::string NewStateId();

/// Whether `id` has the form NewStateId makes (32 lowercase hex digits).
bool IsStateId(std::string_view id);

/// Metadata key a client sends with calls bound to the state it joined (its value: that
/// state id); the service refuses such a call with FAILED_PRECONDITION when the state it
/// serves has another id.
inline constexpr char kStateIdMetadataKey[] = "shardwire-state-id";

/// The error of a call bound to state `bound` when the coordinator's store holds state
/// `serving` instead (empty: no state id stored, the data is gone): kFailedPrecondition
/// naming both ids (at most 64 bytes of `bound`), saying that keys, counters and job
/// membership made before are lost and the job must restart. The service maps it to
/// FAILED_PRECONDITION; clients do not retry it.
Status StateGone(std::string_view bound, std::string_view serving);

}  // namespace shardwire::control
