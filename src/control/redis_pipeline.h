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
// reply was lost fails with kUnavailable saying the outcome is unknown. A
// NOSCRIPT reply (Redis restarted) means the script did not run: it is loaded
// again and the command re-sent once.
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

#include <chrono>
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
  /// Gets the reply of one command (possibly a Redis error reply), or the
  /// status of why there is none (kUnavailable naming the URL).
  using Callback = std::function<void(Result<RedisReplyPtr>)>;

  /// Connects lazily (the first round), so a Redis that is down yields
  /// kUnavailable per command, not here. `timeout_s` > 0 and
  /// finite; `max_queued` >= 1. Errors: kInvalidArgument (bad URL or bounds).
  static Result<std::unique_ptr<RedisPipeline>> Start(const std::string& url, double timeout_s,
                                                      std::size_t max_queued = 100000);
  ~RedisPipeline();

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
  RedisPipeline(std::string url, RedisEndpoint endpoint, double timeout_s, std::size_t max_queued);

  /// Runs rounds until the queue is empty (the caller is the leader).
  void Lead();
  /// Sends one round and completes every command of it.
  void RunRound(std::vector<Command>& round);
  Status EnsureConnected();
  Result<std::string> ShaOf(const RedisScript& script, bool reload);
  void Append(const Command& c, const std::string& sha);

  const std::string url_;
  const RedisEndpoint endpoint_;
  const double timeout_s_;
  const std::size_t max_queued_;

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
