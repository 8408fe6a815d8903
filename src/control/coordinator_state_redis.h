// Tuning of the Redis-backed coordinator state beyond ConnectRedisCoordinatorState
// of coordinator_state.h (used by tests and bench/coordinator_bench to compare
// connection strategies). Key layout and record format: coordinator_state_redis.cc.
#pragma once

#include <memory>
#include <string>

#include "control/coordinator_state.h"
#include "control/redis_connection.h"

namespace shardwire::control {

/// Default of RedisStateOptions::reply_spin_us (and of the coordinator's
/// CoordinatorServerOptions::redis_reply_spin_us): off. Measured on the shared,
/// loaded 2-core machine (docs/benchmarks_history.md, "Where the unloaded time goes,
/// and spinning for the Redis reply"), 50 us lowered the unloaded heartbeat
/// round trip a little but made the Redis-backed coordinator miss 10,000
/// heartbeats/s in 3 of 3 runs that held it without the spin, so it stays off
/// until an idle measurement says otherwise.
inline constexpr int kDefaultRedisReplySpinUs = 0;

/// How the Redis state talks to Redis.
struct RedisStateOptions {
  /// Seconds. Bound of connecting (with PING) and of every later command.
  double timeout_s = 5;
  /// Connections in the pool (>= 1). 1 means one connection under a mutex;
  /// more lets concurrent calls overlap their round trips. 64 (one per
  /// concurrent caller of the benchmark) is what bench/coordinator_bench
  /// measured best: 64 callers got 499 heartbeats/s with 1 connection, 2,894/s
  /// with 8 and 16,522/s with 64 (loaded machine, docs/benchmarks_history.md). Redis
  /// serves 10,000 clients by default, so 64 per coordinator is cheap. The
  /// asynchronous heartbeats use `pipelines` more connections of their own
  /// (RedisPipeline, redis_pipeline.h), each opened at its first heartbeat.
  int max_connections = 64;
  /// Heartbeat pipelines (>= 1), taken in turn by the asynchronous heartbeats:
  /// each is one connection whose round is run by one caller at a time, so more
  /// than one keeps a caller descheduled mid-round (a busy machine) from
  /// stalling every heartbeat. Errors: kInvalidArgument when < 1.
  int pipelines = 4;
  /// Microseconds each heartbeat pipeline polls for a round's first reply
  /// before it blocks in read() (RedisPipeline, redis_pipeline.h: saves the
  /// heartbeat thread a sleep and a wake-up per round; costs at most this much
  /// CPU per round). 0 turns it off. Errors: kInvalidArgument outside
  /// [0, RedisPipeline::kMaxReplySpinUs].
  int reply_spin_us = kDefaultRedisReplySpinUs;
};

/// As ConnectRedisCoordinatorState(url, policy, timeout) with explicit options.
/// Errors: kInvalidArgument (bad URL, max_connections < 1, timeout <= 0),
/// kUnavailable naming the URL. Thread-safety: the returned state is fully
/// thread-safe.
Result<std::unique_ptr<CoordinatorState>> ConnectRedisCoordinatorState(const std::string& url, LeasePolicy policy,
                                                                       RedisStateOptions options);

/// The Lua script HeartbeatSource runs (ARGV: source_id, now unix ms, delete_after
/// ms), so bench/coordinator_bench can time the same script with redis-benchmark.
const RedisScript& RedisHeartbeatSourceScript();

}  // namespace shardwire::control
