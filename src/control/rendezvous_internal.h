// Internal to the control layer: rules shared by every Rendezvous implementation
// (limits, timeouts, counter encoding), so InProcessRendezvous and the coordinator
// (service and client) behave identically.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "shardwire/status.h"

namespace shardwire::control {

using Clock = std::chrono::steady_clock;
using Deadline = Clock::time_point;

/// kInvalidArgument unless 1 <= key.size() <= kMaxRendezvousKeyBytes.
Status ValidateKey(std::string_view key);
/// kInvalidArgument unless size <= kMaxRendezvousValueBytes.
Status ValidateValueSize(std::size_t size, std::string_view key);
/// kInvalidArgument unless timeout_s is >= 0 (NaN rejected; +inf allowed).
Status ValidateTimeout(double timeout_s, std::string_view what);

/// now + timeout_s; Deadline::max() for +inf or absurdly long timeouts.
Deadline DeadlineAfter(double timeout_s);
/// Milliseconds until `deadline` for poll(): -1 for Deadline::max(), 0 when past,
/// rounded up otherwise (so a poll never wakes just before the deadline).
int PollTimeoutMs(Deadline deadline);
/// Seconds left until `deadline` (>= 0; +inf for Deadline::max()).
double SecondsLeft(Deadline deadline);

/// The "<key> not set within <t> s" error every Get timeout uses.
Status GetTimedOut(std::string_view key, double timeout_s);

/// Applies Add: `existing` is the current value (nullptr when the key is missing).
/// On success returns the new counter value; `*encoded` receives its stored form
/// (decimal ASCII). kInvalidArgument for a non-counter value or int64 overflow.
Result<std::int64_t> ApplyAdd(const std::vector<std::byte>* existing, std::int64_t delta,
                              std::string_view key, std::vector<std::byte>* encoded);

}  // namespace shardwire::control
