// RedisClock: the Redis server's clock, as one coordinator reads it, so that every coordinator
// sharing a Redis passes the same `now_ms` to the state scripts whatever its own wall clock says
// (docs/coordinator_redis.md, "Clocks").
//
// Algorithm: Cristian's clock synchronisation (F. Cristian, "Probabilistic clock
// synchronization", Distributed Computing 3, 1989). Sync reads the server's TIME
// kSyncSamples times; for each it notes the local monotonic clock before and after, and keeps
// the sample with the shortest round trip, assuming the server read its clock halfway through:
// offset = server time - (before + after) / 2. NowMs is then local monotonic time + offset, so
// a step of this machine's wall clock (NTP, an operator's `date -s`) changes nothing, and the
// error is at most half the kept round trip plus the drift of the local monotonic clock since
// the last Sync (parts per million: the coordinator's reaper syncs every pass, once a second
// by default).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>

#include "control/redis_connection.h"
#include "shardwire/status.h"

namespace shardwire::control {

/// A server's clock as this process sees it: Sync measures it, NowMs reads it. One per
/// coordinator state; not copyable (atomics).
class RedisClock {
 public:
  /// Round trips one Sync takes (the shortest is kept).
  static constexpr int kSyncSamples = 3;
  /// Microseconds. A Sync whose shortest round trip is longer (a loaded Redis, a connection
  /// pool with none free) and also longer than the kept offset's keeps the previous offset,
  /// whose error is smaller (the error of an offset is at most half its round trip); the first
  /// Sync is always kept.
  static constexpr std::int64_t kMaxRoundTripUs = 250'000;

  /// A local monotonic clock, in microseconds (any epoch).
  using LocalClockUs = std::function<std::int64_t()>;
  /// One read of the server's clock: unix microseconds (Redis TIME), or the error of the read.
  using ServerTimeUs = std::function<Result<std::int64_t>()>;

  /// `local`: the monotonic clock the offset is kept against (default: std::chrono::steady_clock;
  /// tests pass their own). NowMs before the first successful Sync is the local wall clock
  /// (std::chrono::system_clock), which is what a coordinator used before this class existed.
  explicit RedisClock(LocalClockUs local = {});

  /// Reads the server's clock kSyncSamples times through `read` and keeps the offset of the
  /// sample with the shortest round trip. Errors (the previous offset is kept; NowMs goes on
  /// from it): the first failed read's error; kUnavailable when every round trip exceeded both
  /// kMaxRoundTripUs and the kept offset's round trip; kInternal when the local clock went
  /// backwards in every sample (a broken test clock). Thread-safety: safe beside NowMs and other
  /// Syncs (the offset is one atomic store).
  Status Sync(const ServerTimeUs& read);

  /// The server's clock now, unix milliseconds (as a coordinator's state methods take it).
  /// Thread-safe, lock-free; no Redis round trip.
  std::int64_t NowMs() const;

  /// Microseconds: the round trip of the sample the last successful Sync kept (its error bound
  /// is half of it); -1 before the first.
  std::int64_t last_round_trip_us() const { return last_round_trip_us_.load(std::memory_order_relaxed); }

 private:
  LocalClockUs local_;
  std::atomic<bool> synced_{false};
  std::atomic<std::int64_t> offset_us_{0};  // server unix us - local monotonic us
  std::atomic<std::int64_t> last_round_trip_us_{-1};
};

/// Unix microseconds of a Redis TIME reply (an array of two integer strings: seconds and
/// microseconds, redis.io/commands/time). An error reply is the caller's to map first.
/// Errors: kCorruptData naming `where` for any other shape (not an array of two, a part that is
/// not a string of 1-19 digits, microseconds >= 10^6, seconds beyond year 9999).
Result<std::int64_t> ParseRedisTimeUs(const redisReply& reply, const std::string& where);

}  // namespace shardwire::control
