#include "control/redis_connection.h"

#include <fmt/format.h>
#include <poll.h>
#include <sys/time.h>

#include <charconv>
#include <chrono>
#include <cmath>

namespace shardwire::control {
namespace {

timeval ToTimeval(double seconds) {
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(seconds);
  tv.tv_usec = static_cast<suseconds_t>((seconds - static_cast<double>(tv.tv_sec)) * 1e6);
  if (tv.tv_sec == 0 && tv.tv_usec == 0) tv.tv_usec = 1000;
  return tv;
}

bool ParseInt(std::string_view s, int lo, int hi, int* out) {
  int v = 0;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || ptr != s.data() + s.size() || v < lo || v > hi) return false;
  *out = v;
  return true;
}

}  // namespace

Result<RedisEndpoint> ParseRedisUrl(const std::string& url) {
  constexpr std::string_view kScheme = "redis://";
  std::string_view s = url;
  if (s.substr(0, kScheme.size()) != kScheme) {
    return InvalidArgument(fmt::format("Redis URL '{}' does not start with redis://", url));
  }
  s.remove_prefix(kScheme.size());
  RedisEndpoint ep;
  std::string_view hostport = s;
  if (auto slash = s.find('/'); slash != std::string_view::npos) {
    hostport = s.substr(0, slash);
    std::string_view db = s.substr(slash + 1);
    if (!db.empty() && !ParseInt(db, 0, 1 << 20, &ep.db)) {
      return InvalidArgument(fmt::format("Redis URL '{}': database '{}' is not a number", url, db));
    }
  }
  if (hostport.find('@') != std::string_view::npos) {
    return InvalidArgument(fmt::format("Redis URL '{}': credentials in the URL are not supported", url));
  }
  std::string_view port;
  if (!hostport.empty() && hostport.front() == '[') {
    auto close = hostport.find(']');
    if (close == std::string_view::npos) return InvalidArgument(fmt::format("Redis URL '{}': unclosed '['", url));
    ep.host = std::string(hostport.substr(1, close - 1));
    std::string_view rest = hostport.substr(close + 1);
    if (!rest.empty()) {
      if (rest.front() != ':') return InvalidArgument(fmt::format("Redis URL '{}': junk after ']'", url));
      port = rest.substr(1);
      if (port.empty()) return InvalidArgument(fmt::format("Redis URL '{}': empty port", url));
    }
  } else if (auto colon = hostport.rfind(':'); colon != std::string_view::npos) {
    ep.host = std::string(hostport.substr(0, colon));
    port = hostport.substr(colon + 1);
    if (port.empty()) return InvalidArgument(fmt::format("Redis URL '{}': empty port", url));
  } else {
    ep.host = std::string(hostport);
  }
  if (ep.host.empty()) return InvalidArgument(fmt::format("Redis URL '{}' has no host", url));
  if (!port.empty() && !ParseInt(port, 1, 65535, &ep.port)) {
    return InvalidArgument(fmt::format("Redis URL '{}': port '{}' is not in 1..65535", url, port));
  }
  return ep;
}

RedisConnectionPool::RedisConnectionPool(std::string url, RedisEndpoint endpoint, double timeout_s, int max_connections)
    : url_(std::move(url)), endpoint_(std::move(endpoint)), timeout_s_(timeout_s), max_connections_(max_connections) {}

RedisConnectionPool::~RedisConnectionPool() = default;

Result<std::unique_ptr<RedisConnectionPool>> RedisConnectionPool::Connect(const std::string& url, double timeout_s,
                                                                          int max_connections) {
  if (!(timeout_s > 0) || !std::isfinite(timeout_s)) {
    return InvalidArgument(fmt::format("Redis timeout {} s must be finite and > 0", timeout_s));
  }
  if (max_connections < 1) return InvalidArgument("Redis connection pool needs at least one connection");
  SW_ASSIGN_OR_RETURN(RedisEndpoint ep, ParseRedisUrl(url));
  std::unique_ptr<RedisConnectionPool> pool(new RedisConnectionPool(url, std::move(ep), timeout_s, max_connections));
  SW_ASSIGN_OR_RETURN(RedisReplyPtr pong, pool->Command({"PING"}, true));
  if (pong->type == REDIS_REPLY_ERROR) {
    return Unavailable(fmt::format("Redis at {} refused PING: {}", url, std::string_view(pong->str, pong->len)));
  }
  return pool;
}

Result<RedisContextPtr> ConnectRedisContext(const RedisEndpoint& endpoint, const std::string& url, double timeout_s) {
  RedisContextPtr ctx(redisConnectWithTimeout(endpoint.host.c_str(), endpoint.port, ToTimeval(timeout_s)));
  if (ctx == nullptr) return Unavailable(fmt::format("Redis at {}: cannot allocate a connection", url));
  if (ctx->err != 0) {
    return Unavailable(fmt::format("Redis at {} cannot be reached: {}", url, ctx->errstr));
  }
  if (redisSetTimeout(ctx.get(), ToTimeval(timeout_s)) != REDIS_OK) {
    return Unavailable(fmt::format("Redis at {}: cannot set the {} s timeout: {}", url, timeout_s, ctx->errstr));
  }
  redisEnableKeepAlive(ctx.get());
  if (endpoint.db != 0) {
    RedisReplyPtr r(static_cast<redisReply*>(redisCommand(ctx.get(), "SELECT %d", endpoint.db)));
    if (r == nullptr) return Unavailable(fmt::format("Redis at {}: SELECT failed: {}", url, ctx->errstr));
    if (r->type == REDIS_REPLY_ERROR) {
      return InvalidArgument(
          fmt::format("Redis at {}: SELECT {} refused: {}", url, endpoint.db, std::string_view(r->str, r->len)));
    }
  }
  return ctx;
}

Status RedisConnectionPool::Reconnect(Connection& conn) {
  conn.ctx.reset();
  SW_ASSIGN_OR_RETURN(conn.ctx, ConnectRedisContext(endpoint_, url_, timeout_s_));
  return Status::Ok();
}

bool RedisConnectionPool::Healthy(const Connection& conn) const {
  if (conn.ctx == nullptr || conn.ctx->err != 0) return false;
  // Between commands nothing may arrive; readable means EOF (server gone) or junk.
  pollfd p{conn.ctx->fd, POLLIN, 0};
  int n = ::poll(&p, 1, 0);
  return n == 0;
}

Result<std::unique_ptr<RedisConnectionPool::Connection>> RedisConnectionPool::Acquire() {
  std::unique_lock lock(mu_);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s_);
  while (idle_.empty() && open_ >= max_connections_) {
    if (freed_.wait_until(lock, deadline) == std::cv_status::timeout && idle_.empty() && open_ >= max_connections_) {
      return Unavailable(
          fmt::format("Redis at {}: no free connection of {} within {} s", url_, max_connections_, timeout_s_));
    }
  }
  if (!idle_.empty()) {
    auto conn = std::move(idle_.back());
    idle_.pop_back();
    return conn;
  }
  ++open_;
  return std::make_unique<Connection>();
}

void RedisConnectionPool::Release(std::unique_ptr<Connection> conn) {
  {
    std::lock_guard lock(mu_);
    if (conn->ctx != nullptr && conn->ctx->err == 0) {
      idle_.push_back(std::move(conn));
    } else {
      --open_;  // broken: dropped; the next Acquire opens a fresh one
    }
  }
  freed_.notify_one();
}

Result<RedisReplyPtr> RedisConnectionPool::CommandOn(Connection& conn, const std::vector<std::string_view>& argv,
                                                     bool idempotent) {
  std::vector<const char*> ptrs(argv.size());
  std::vector<size_t> lens(argv.size());
  for (size_t i = 0; i < argv.size(); ++i) {
    ptrs[i] = argv[i].data();
    lens[i] = argv[i].size();
  }
  std::string last_error;
  for (int attempt = 0; attempt < 2; ++attempt) {
    if (!Healthy(conn)) {
      Status st = Reconnect(conn);
      if (!st.ok()) return st;
    }
    redisContext* c = conn.ctx.get();
    if (redisAppendCommandArgv(c, static_cast<int>(argv.size()), ptrs.data(), lens.data()) != REDIS_OK) {
      return Unavailable(fmt::format("Redis at {}: cannot encode {}: {}", url_, argv[0], c->errstr));
    }
    int done = 0;
    bool write_failed = false;
    while (!done) {
      if (redisBufferWrite(c, &done) != REDIS_OK) {
        write_failed = true;
        break;
      }
    }
    if (write_failed) {  // not sent (a partial command is discarded with the connection): safe to resend
      last_error = c->errstr;
      conn.ctx.reset();
      continue;
    }
    void* raw = nullptr;
    if (redisGetReply(c, &raw) != REDIS_OK || raw == nullptr) {
      last_error = c->errstr;
      conn.ctx.reset();
      if (idempotent) continue;
      // kTimedOut, not kUnavailable (which clients retry): the command may have been applied.
      return TimedOut(
          fmt::format("Redis at {}: connection lost waiting for the reply to {} ({}); "
                      "whether it was applied is unknown",
                      url_, argv[0], last_error));
    }
    return RedisReplyPtr(static_cast<redisReply*>(raw));
  }
  return Unavailable(fmt::format("Redis at {} cannot be reached: {}", url_, last_error));
}

bool IsRedisNotReadyError(std::string_view error_reply) {
  for (std::string_view prefix :
       {"LOADING ", "BUSY ", "MASTERDOWN ", "READONLY ", "OOM ", "NOREPLICAS ", "MISCONF ", "TRYAGAIN "}) {
    if (error_reply.starts_with(prefix)) return true;
  }
  return false;
}

Result<RedisReplyPtr> RedisConnectionPool::Command(const std::vector<std::string_view>& argv, bool idempotent) {
  SW_ASSIGN_OR_RETURN(auto conn, Acquire());
  auto r = CommandOn(*conn, argv, idempotent);
  Release(std::move(conn));
  return r;
}

Result<std::string> RedisConnectionPool::ShaOf(const RedisScript& script, Connection& conn, bool reload) {
  if (!reload) {
    std::lock_guard lock(mu_);
    for (auto& [name, sha] : shas_) {
      if (name == script.name) return sha;
    }
  }
  SW_ASSIGN_OR_RETURN(RedisReplyPtr r, CommandOn(conn, {"SCRIPT", "LOAD", script.body}, true));
  if (r->type == REDIS_REPLY_ERROR && IsRedisNotReadyError(std::string_view(r->str, r->len))) {
    return Unavailable(fmt::format("Redis at {} is not ready (SCRIPT LOAD of '{}'): {}", url_, script.name,
                                   std::string_view(r->str, r->len)));
  }
  if (r->type != REDIS_REPLY_STRING) {
    return Internal(fmt::format("Redis at {}: SCRIPT LOAD of '{}' failed: {}", url_, script.name,
                                r->type == REDIS_REPLY_ERROR ? std::string_view(r->str, r->len) : "no sha"));
  }
  std::string sha(r->str, r->len);
  std::lock_guard lock(mu_);
  for (auto& [name, s] : shas_) {
    if (name == script.name) {
      s = sha;
      return sha;
    }
  }
  shas_.emplace_back(script.name, sha);
  return sha;
}

Result<RedisReplyPtr> RedisConnectionPool::Eval(const RedisScript& script, const std::vector<std::string_view>& args,
                                                bool idempotent) {
  SW_ASSIGN_OR_RETURN(auto conn, Acquire());
  Result<RedisReplyPtr> out = Unavailable("unreached");
  for (int attempt = 0; attempt < 2; ++attempt) {
    auto sha = ShaOf(script, *conn, attempt > 0);
    if (!sha.ok()) {
      out = sha.status();
      break;
    }
    std::vector<std::string_view> argv;
    argv.reserve(args.size() + 3);
    argv.push_back("EVALSHA");
    argv.push_back(*sha);
    argv.push_back("0");
    argv.insert(argv.end(), args.begin(), args.end());
    out = CommandOn(*conn, argv, idempotent);
    if (out.ok() && (*out)->type == REDIS_REPLY_ERROR &&
        std::string_view((*out)->str, (*out)->len).substr(0, 8) == "NOSCRIPT") {
      continue;  // Redis restarted (or SCRIPT FLUSH): the script did not run; load it again
    }
    break;
  }
  Release(std::move(conn));
  return out;
}

}  // namespace shardwire::control
