// RedisPipeline: Lua scripts (EVALSHA) from many concurrent callers sent over
// one Redis connection, pipelined, with completion callbacks instead of a
// blocked caller thread.
//
// Why: a coordinator answering thousands of heartbeats a second (on its one
// heartbeat thread, heartbeat_loop.h) must not pay one Redis round trip per
// heartbeat, and on these machines every syscall and thread switch is expensive
// (a paravirtualised guest: perf put half the coordinator's CPU in the
// kernel). Leader/follower, no thread of its own: the caller of Submit() that
// finds no round in progress becomes the leader and runs rounds on its own
// thread until the queue is empty; callers that find a leader only queue their
// command and return. A round takes every command queued since the last one,
// writes them with one write(), then reads their replies in order (Redis
// answers pipelined commands in order: https://redis.io/docs/manual/pipelining/)
// and completes each. So N concurrent heartbeats cost one write and a few
// reads instead of N of each, and a lone heartbeat costs no thread switch.
// Each command is still one EVALSHA, atomic on the Redis server, so pipelining
// changes nothing of what two coordinators over one Redis see.
//
// Library: hiredis (Debian libhiredis-dev 0.14, synchronous context:
// redisAppendCommandArgv, redisBufferWrite, redisGetReply).
//
// Retry rule (the same as RedisConnectionPool's): a command is re-sent on a
// fresh connection only when it provably did not reach Redis (the connection
// was found closed before the round) or when it is idempotent. A mutation whose
// reply was lost fails with kTimedOut saying the outcome is unknown (not
// kUnavailable, which the coordinator's clients retry: a repeated Join or
// Register would fail as ALREADY_EXISTS or apply twice). A
// NOSCRIPT reply (Redis restarted) means the script did not run: it is loaded
// again and the command re-sent once.
//
// Waiting for a round's replies: the leader first polls the socket without
// blocking for up to `reply_spin_us` microseconds (a non-blocking recv(), then
// sched_yield() so that a redis-server or client thread runnable on the same
// core is not held up), and only then blocks in read(). Why: on these machines
// (paravirtualised 2-core guests) a thread that sleeps in read() and is woken
// by Redis's reply pays a context switch and a wake-up of its idle vCPU, which
// perf put at ~11% of the coordinator's CPU per heartbeat, and the Redis reply
// to a lone heartbeat comes back in ~30 us (docs/benchmarks_history.md, "Where the
// unloaded time goes, and spinning for the Redis reply"). The spin is bounded
// (at most reply_spin_us of CPU per round, 0 turns it off) and reads nothing
// but what read() would have read. The coordinator leaves it off by default
// (kDefaultRedisReplySpinUs, coordinator_state_redis.h): under CPU contention
// sched_yield() hands the core away for a whole time slice, and on the loaded
// machine the spin cost the 10,000 heartbeats/s.
//
// Bounds: connecting and every read/write of a round is bounded by timeout_s;
// a command queued longer than timeout_s before its round starts (a stuck
// connection) fails with kUnavailable; the queue holds at most max_queued
// commands (kUnavailable "overloaded" beyond, so memory stays bounded).
//
// Thread-safety: Submit() may be called from any thread. Callbacks run on the
// leader's thread (the caller's own, or another caller's); they must be quick
// and must not block (they may Submit again: that only queues). Submit() may
// therefore block its caller for the rounds it leads (each bounded by timeout_s).
// The destructor waits for a leader to finish and fails every queued command
// with kUnavailable; no Submit() may start after it began.
#pragma once

#include <hiredis/hiredis.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "control/redis_connection.h"
#include "shardwire/status.h"

namespace shardwire::control {

class RedisPipeline {
 public:
  /// Upper bound of `reply_spin_us` (10 ms): a spin is meant to span one Redis
  /// round trip, never to replace the blocking wait.
  static constexpr int kMaxReplySpinUs = 10000;
  /// Gets the reply of one command (possibly a Redis error reply), or the
  /// status of why there is none (kUnavailable naming the URL; kTimedOut for a
  /// non-idempotent command sent whose reply was lost: maybe applied).
  using Callback = std::function<void(Result<RedisReplyPtr>)>;

  /// Connects lazily (the first round), so a Redis that is down yields
  /// kUnavailable per command, not here. `timeout_s` > 0 and
  /// finite; `max_queued` >= 1. Errors: kInvalidArgument (bad URL or bounds).
  /// `reply_spin_us` (>= 0, <= 10,000): how long the leader polls for a
  /// round's first reply before it blocks (see above); 0: block at once.
  static Result<std::unique_ptr<RedisPipeline>> Start(const std::string& url, double timeout_s,
                                                      std::size_t max_queued = 100000, int reply_spin_us = 0);
  ~RedisPipeline();

  /// Rounds (send attempts) in which replies began to arrive while the leader
  /// spun (before it would have blocked), and rounds that waited for replies
  /// at all (counters since Start; for tests and benchmarks). Thread-safe.
  std::uint64_t rounds_answered_while_spinning() const { return answered_spinning_.load(); }
  std::uint64_t rounds_waited() const { return rounds_waited_.load(); }

  /// Queues EVALSHA of `script` (no KEYS, `args` as ARGV; copied); `done` gets
  /// the reply later. `idempotent`: may be re-sent when its reply was lost.
  /// `hold` false: the caller leads the rounds when no round is in progress
  /// (see above). `hold` true: the command only waits in the queue for the
  /// next round, which the current leader or the next Flush() or Submit()
  /// without hold runs; so one thread can queue a batch and send it with one
  /// write (the coordinator's heartbeat loop does).
  void Submit(const RedisScript& script, std::vector<std::string> args, bool idempotent, Callback done,
              bool hold = false);

  /// Runs rounds until the queue is empty when no round is in progress (the
  /// caller leads, as Submit without hold); returns at once otherwise (the
  /// leader takes the queued commands). Blocks like Submit.
  void Flush();

 private:
  struct Command {
    const RedisScript* script;
    std::vector<std::string> args;
    bool idempotent;
    Callback done;
    std::chrono::steady_clock::time_point queued;
  };
  RedisPipeline(std::string url, RedisEndpoint endpoint, double timeout_s, std::size_t max_queued, int reply_spin_us);

  /// Runs rounds until the queue is empty (the caller is the leader).
  void Lead();
  /// Sends one round and completes every command of it.
  void RunRound(std::vector<Command>& round);
  Status EnsureConnected();
  Result<std::string> ShaOf(const RedisScript& script, bool reload);
  void Append(const Command& c, const std::string& sha);
  /// Polls the connection for up to reply_spin_us_ and feeds what arrives to
  /// hiredis's reader (the caller then reads replies as usual).
  void SpinForReply();

  const std::string url_;
  const RedisEndpoint endpoint_;
  const double timeout_s_;
  const std::size_t max_queued_;
  const int reply_spin_us_;
  std::atomic<std::uint64_t> answered_spinning_{0};
  std::atomic<std::uint64_t> rounds_waited_{0};

  std::mutex mu_;
  std::condition_variable idle_;  // leading_ became false
  std::vector<Command> queue_;
  bool leading_ = false;  // a caller runs rounds now
  bool stop_ = false;

  // Used only by the leader (leading_ hands them over under mu_).
  RedisContextPtr ctx_;
  std::vector<std::pair<const RedisScript*, std::string>> shas_;
};

}  // namespace shardwire::control
