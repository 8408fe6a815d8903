// RedisConnectionPool: a bounded pool of synchronous hiredis connections to one
// Redis server, with RAII ownership of contexts and replies, bounded waits,
// one reconnect per command on a broken connection, and Lua scripts run by
// EVALSHA (loaded with SCRIPT LOAD, reloaded on NOSCRIPT).
//
// Library: hiredis (Debian libhiredis-dev 0.14, the synchronous API:
// redisConnectWithTimeout, redisSetTimeout, redisAppendCommandArgv,
// redisBufferWrite, redisGetReply). RESP2 replies.
//
// Retry rule (why a command is never applied twice): a command is re-sent on a
// fresh connection only when it provably did not reach Redis (the connection
// was found closed before sending, or writing it failed) or when it is
// idempotent (reads). A mutation whose reply was lost (connection dropped or
// the timeout passed after sending) fails with kTimedOut saying the outcome
// is unknown (kUnavailable would tell the coordinator's clients to retry it).
//
// Errors: kInvalidArgument for a bad URL; kUnavailable naming the URL when
// Redis cannot be reached, refuses, or does not answer within the timeout.
// Redis error replies are returned as replies (the caller maps them).
//
// Thread-safety: the pool is fully thread-safe; one command uses one
// connection exclusively. At most `max_connections` connections exist; a
// caller waits (bounded by the timeout) for a free one.
#pragma once

#include <hiredis/hiredis.h>

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "shardwire/status.h"

namespace shardwire::control {

/// Frees a hiredis reply.
struct RedisReplyDeleter {
  void operator()(redisReply* r) const {
    if (r != nullptr) freeReplyObject(r);
  }
};
using RedisReplyPtr = std::unique_ptr<redisReply, RedisReplyDeleter>;

/// Frees a hiredis context (closes its socket).
struct RedisContextDeleter {
  void operator()(redisContext* c) const {
    if (c != nullptr) redisFree(c);
  }
};
using RedisContextPtr = std::unique_ptr<redisContext, RedisContextDeleter>;

/// Where a Redis server is: parsed from "redis://host:port[/db]".
struct RedisEndpoint {
  std::string host;  ///< name or IPv4/IPv6 literal (brackets removed)
  int port = 6379;
  int db = 0;
};

/// Parses "redis://host[:port][/db]" (IPv6 as "[::1]"). Errors: kInvalidArgument
/// naming the URL and what is wrong.
Result<RedisEndpoint> ParseRedisUrl(const std::string& url);

/// Opens one connection to `endpoint` (`url` only names it in messages): connect,
/// read/write timeout and keep-alive, SELECT of a non-zero db, all bounded by
/// `timeout_s`. Errors: kUnavailable naming the URL; kInvalidArgument when
/// SELECT is refused. Thread-safety: none needed (no shared state).
Result<RedisContextPtr> ConnectRedisContext(const RedisEndpoint& endpoint, const std::string& url, double timeout_s);

/// True when a Redis error reply says the server answers but cannot serve the command now,
/// and did not run it: LOADING (a restarted server replays its append-only file or
/// snapshot), BUSY (a script runs past busy-reply-threshold), MASTERDOWN (a replica without
/// its master), READONLY (a replica, e.g. the old master after a failover), OOM (maxmemory
/// reached), NOREPLICAS (min-replicas-to-write not met), MISCONF (writes refused while
/// snapshots fail) or TRYAGAIN. Callers map it to kUnavailable, which clients retry, never
/// to kInternal or kCorruptData. Prefixes from the Redis 7 error replies (server.c, shared.*err).
bool IsRedisNotReadyError(std::string_view error_reply);

/// A Lua script with its SHA1 (filled by the pool when first loaded).
struct RedisScript {
  std::string name;  ///< for messages, e.g. "register_source"
  std::string body;  ///< Lua source
};

class RedisConnectionPool {
 public:
  /// Connects one connection and PINGs within `timeout_s` seconds; every later
  /// command (connect, send, reply) is bounded by the same timeout.
  /// Errors: kInvalidArgument (bad URL, max_connections < 1, timeout <= 0),
  /// kUnavailable naming the URL.
  static Result<std::unique_ptr<RedisConnectionPool>> Connect(const std::string& url, double timeout_s,
                                                              int max_connections);
  ~RedisConnectionPool();

  const std::string& url() const { return url_; }

  /// Runs one command (binary-safe arguments). `idempotent`: may be re-sent when
  /// its reply was lost. Returns the reply, which may be a Redis error reply.
  Result<RedisReplyPtr> Command(const std::vector<std::string_view>& argv, bool idempotent);

  /// Runs `script` by EVALSHA with no KEYS and `args` as ARGV, loading it on
  /// first use and again on NOSCRIPT (a Redis restart). Returns the reply,
  /// which may be an error reply of the script.
  Result<RedisReplyPtr> Eval(const RedisScript& script, const std::vector<std::string_view>& args, bool idempotent);

 private:
  struct Connection {
    RedisContextPtr ctx;
  };
  RedisConnectionPool(std::string url, RedisEndpoint endpoint, double timeout_s, int max_connections);

  Result<std::unique_ptr<Connection>> Acquire();
  void Release(std::unique_ptr<Connection> conn);
  Status Reconnect(Connection& conn);
  /// True when the connection can be used for a new command: open, no error,
  /// and no unexpected bytes or EOF waiting on its socket (a Redis restart).
  bool Healthy(const Connection& conn) const;
  Result<RedisReplyPtr> CommandOn(Connection& conn, const std::vector<std::string_view>& argv, bool idempotent);
  Result<std::string> ShaOf(const RedisScript& script, Connection& conn, bool reload);

  const std::string url_;
  const RedisEndpoint endpoint_;
  const double timeout_s_;
  const int max_connections_;

  std::mutex mu_;
  std::condition_variable freed_;
  std::vector<std::unique_ptr<Connection>> idle_;
  int open_ = 0;                                           // connections handed out or idle
  std::vector<std::pair<std::string, std::string>> shas_;  // script name -> sha1
};

}  // namespace shardwire::control
