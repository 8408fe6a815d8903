// Internal to the control layer: rules shared by every Rendezvous implementation
// (limits, timeouts, counter encoding), so InProcessRendezvous and the TCP server
// behave identically.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "shardwire/status.h"

namespace shardwire::control_internal {

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

// Little-endian fixed-width integers for the wire format.
inline void StoreU32(std::byte* p, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<std::byte>((v >> (8 * i)) & 0xFFu);
}
inline void StoreU64(std::byte* p, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<std::byte>((v >> (8 * i)) & 0xFFu);
}
inline std::uint32_t LoadU32(const std::byte* p) {
  std::uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= static_cast<std::uint32_t>(p[i]) << (8 * i);
  return v;
}
inline std::uint64_t LoadU64(const std::byte* p) {
  std::uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<std::uint64_t>(p[i]) << (8 * i);
  return v;
}

}  // namespace shardwire::control_internal
