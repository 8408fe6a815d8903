#include "control/redis_pipeline.h"

#include <fmt/format.h>
#include <poll.h>
#include <sched.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cmath>

namespace shardwire::control {

using Clock = std::chrono::steady_clock;

Result<std::unique_ptr<RedisPipeline>> RedisPipeline::Start(const std::string& url, double timeout_s,
                                                            std::size_t max_queued, int reply_spin_us) {
  if (!(timeout_s > 0) || !std::isfinite(timeout_s)) {
    return InvalidArgument(fmt::format("Redis timeout {} s must be finite and > 0", timeout_s));
  }
  if (max_queued < 1) return InvalidArgument("Redis pipeline needs room for at least one command");
  if (reply_spin_us < 0 || reply_spin_us > kMaxReplySpinUs) {
    return InvalidArgument(fmt::format("Redis reply spin {} us must be in [0, {}]", reply_spin_us, kMaxReplySpinUs));
  }
  SW_ASSIGN_OR_RETURN(RedisEndpoint ep, ParseRedisUrl(url));
  return std::unique_ptr<RedisPipeline>(new RedisPipeline(url, std::move(ep), timeout_s, max_queued, reply_spin_us));
}

RedisPipeline::RedisPipeline(std::string url, RedisEndpoint endpoint, double timeout_s, std::size_t max_queued,
                             int reply_spin_us)
    : url_(std::move(url)),
      endpoint_(std::move(endpoint)),
      timeout_s_(timeout_s),
      max_queued_(max_queued),
      reply_spin_us_(reply_spin_us) {}

RedisPipeline::~RedisPipeline() {
  std::vector<Command> left;
  {
    std::unique_lock lock(mu_);
    stop_ = true;
    idle_.wait(lock, [&] { return !leading_; });  // a leader finishes its rounds (each bounded by timeout_s)
    left.swap(queue_);
  }
  for (auto& c : left) c.done(Unavailable(fmt::format("Redis at {}: the pipeline is shutting down", url_)));
}

void RedisPipeline::Submit(const RedisScript& script, std::vector<std::string> args, bool idempotent, Callback done,
                           bool hold) {
  std::unique_lock lock(mu_);
  if (stop_ || queue_.size() >= max_queued_) {
    const bool stopping = stop_;
    lock.unlock();
    done(Unavailable(stopping ? fmt::format("Redis at {}: the pipeline is shutting down", url_)
                              : fmt::format("Redis at {}: {} commands queued, overloaded", url_, max_queued_)));
    return;
  }
  queue_.push_back(Command{&script, std::move(args), idempotent, std::move(done), Clock::now()});
  if (leading_ || hold) return;  // the leader (or the next Flush) takes it with its next round
  leading_ = true;
  lock.unlock();
  Lead();
}

void RedisPipeline::Flush() {
  std::unique_lock lock(mu_);
  if (leading_ || queue_.empty()) return;
  leading_ = true;
  lock.unlock();
  Lead();
}

void RedisPipeline::Lead() {
  std::vector<Command> round;
  for (;;) {
    {
      std::lock_guard lock(mu_);
      if (queue_.empty()) {
        leading_ = false;
        idle_.notify_all();
        return;
      }
      round.swap(queue_);
    }
    RunRound(round);
    round.clear();
  }
}

Status RedisPipeline::EnsureConnected() {
  if (ctx_ != nullptr && ctx_->err == 0) {
    // Between rounds nothing may arrive; readable means EOF (Redis restarted) or junk.
    pollfd p{ctx_->fd, POLLIN, 0};
    if (::poll(&p, 1, 0) == 0) return Status::Ok();
  }
  ctx_.reset();
  SW_ASSIGN_OR_RETURN(ctx_, ConnectRedisContext(endpoint_, url_, timeout_s_));
  return Status::Ok();
}

Result<std::string> RedisPipeline::ShaOf(const RedisScript& script, bool reload) {
  for (auto& [s, sha] : shas_) {
    if (s == &script && !reload) return sha;
  }
  RedisReplyPtr r(
      static_cast<redisReply*>(redisCommand(ctx_.get(), "SCRIPT LOAD %b", script.body.data(), script.body.size())));
  if (r == nullptr) {
    std::string err = ctx_->errstr;
    ctx_.reset();
    return Unavailable(fmt::format("Redis at {}: SCRIPT LOAD of '{}' failed: {}", url_, script.name, err));
  }
  if (r->type == REDIS_REPLY_ERROR && IsRedisNotReadyError(std::string_view(r->str, r->len))) {
    return Unavailable(fmt::format("Redis at {} is not ready (SCRIPT LOAD of '{}'): {}", url_, script.name,
                                   std::string_view(r->str, r->len)));
  }
  if (r->type != REDIS_REPLY_STRING) {
    return Internal(fmt::format("Redis at {}: SCRIPT LOAD of '{}' failed: {}", url_, script.name,
                                r->type == REDIS_REPLY_ERROR ? std::string_view(r->str, r->len) : "no sha"));
  }
  std::string sha(r->str, r->len);
  for (auto& [s, known] : shas_) {
    if (s == &script) {
      known = sha;
      return sha;
    }
  }
  shas_.emplace_back(&script, sha);
  return sha;
}

void RedisPipeline::Append(const Command& c, const std::string& sha) {
  const std::size_t n = c.args.size() + 3;
  const char* small_ptrs[16];
  std::size_t small_lens[16];
  std::vector<const char*> big_ptrs;
  std::vector<std::size_t> big_lens;
  const char** ptrs = small_ptrs;
  std::size_t* lens = small_lens;
  if (n > 16) {
    big_ptrs.resize(n);
    big_lens.resize(n);
    ptrs = big_ptrs.data();
    lens = big_lens.data();
  }
  ptrs[0] = "EVALSHA";
  lens[0] = 7;
  ptrs[1] = sha.data();
  lens[1] = sha.size();
  ptrs[2] = "0";
  lens[2] = 1;
  for (std::size_t i = 0; i < c.args.size(); ++i) {
    ptrs[i + 3] = c.args[i].data();
    lens[i + 3] = c.args[i].size();
  }
  redisAppendCommandArgv(ctx_.get(), static_cast<int>(n), ptrs, lens);
}

void RedisPipeline::SpinForReply() {
  rounds_waited_.fetch_add(1, std::memory_order_relaxed);
  if (reply_spin_us_ <= 0) return;
  const auto until = Clock::now() + std::chrono::microseconds(reply_spin_us_);
  char buf[16 * 1024];
  for (;;) {
    const ssize_t n = ::recv(ctx_->fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n > 0) {
      // What redisGetReply's own read() would have taken; the reader parses it.
      if (redisReaderFeed(ctx_->reader, buf, static_cast<std::size_t>(n)) == REDIS_OK) {
        answered_spinning_.fetch_add(1, std::memory_order_relaxed);
      }
      return;
    }
    // EOF or an error: the blocking read that follows meets it again and reports it.
    if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) return;
    if (Clock::now() >= until) return;
    ::sched_yield();
  }
}

void RedisPipeline::RunRound(std::vector<Command>& round) {
  const auto now = Clock::now();
  const auto max_wait = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_s_));
  std::vector<Command*> pending;
  pending.reserve(round.size());
  for (auto& c : round) {
    if (now - c.queued > max_wait) {
      c.done(
          Unavailable(fmt::format("Redis at {}: command waited more than {} s for the connection", url_, timeout_s_)));
    } else {
      pending.push_back(&c);
    }
  }
  // Attempt 0 sends everything; attempt 1 re-sends what provably did not run
  // (NOSCRIPT) or is idempotent, on a fresh connection when the old one broke.
  for (int attempt = 0; attempt < 2 && !pending.empty(); ++attempt) {
    Status conn = EnsureConnected();
    if (!conn.ok()) {
      for (Command* c : pending) c->done(conn);
      return;
    }
    if (attempt > 0) shas_.clear();  // NOSCRIPT or a new connection: load the scripts again
    // SHAs first: SCRIPT LOAD runs synchronously on the same connection, so it
    // must happen before anything of this round is appended to its buffer.
    std::vector<Command*> sent;
    std::vector<Command*> again;
    std::vector<std::string> shas(pending.size());
    bool lost = false;
    for (std::size_t k = 0; k < pending.size() && !lost; ++k) {
      auto sha = ShaOf(*pending[k]->script, /*reload=*/false);
      if (sha.ok()) {
        shas[k] = std::move(*sha);
      } else if (ctx_ == nullptr) {
        lost = true;  // nothing of this round was sent: every command not yet answered goes again
        for (std::size_t j = k; j < pending.size(); ++j) again.push_back(pending[j]);
      } else {
        pending[k]->done(sha.status());
        pending[k] = nullptr;
      }
    }
    if (lost) {
      for (std::size_t k = 0; k < pending.size(); ++k) {
        if (pending[k] != nullptr && std::find(again.begin(), again.end(), pending[k]) == again.end()) {
          again.push_back(pending[k]);
        }
      }
      pending.swap(again);
      continue;
    }
    sent.reserve(pending.size());
    for (std::size_t k = 0; k < pending.size(); ++k) {
      if (pending[k] == nullptr) continue;
      Append(*pending[k], shas[k]);
      sent.push_back(pending[k]);
    }
    int written = 0;
    bool write_failed = false;
    while (!written) {
      if (redisBufferWrite(ctx_.get(), &written) != REDIS_OK) {
        write_failed = true;
        break;
      }
    }
    std::size_t answered = 0;
    std::string error;
    if (write_failed) {
      error = ctx_->errstr;
      ctx_.reset();
    } else {
      SpinForReply();
      for (; answered < sent.size(); ++answered) {
        void* raw = nullptr;
        if (redisGetReply(ctx_.get(), &raw) != REDIS_OK || raw == nullptr) {
          error = ctx_->errstr;
          ctx_.reset();
          break;
        }
        RedisReplyPtr r(static_cast<redisReply*>(raw));
        if (r->type == REDIS_REPLY_ERROR && std::string_view(r->str, r->len).substr(0, 8) == "NOSCRIPT") {
          again.push_back(sent[answered]);  // the script did not run: load it again and re-send
          continue;
        }
        sent[answered]->done(std::move(r));
      }
    }
    // Commands without a reply: maybe applied, maybe not.
    for (std::size_t i = answered; i < sent.size(); ++i) {
      Command* c = sent[i];
      if (c->idempotent && attempt == 0) {
        again.push_back(c);
      } else {
        // kTimedOut, not kUnavailable: UNAVAILABLE tells clients "safe to retry", and a repeat
        // of a change that was applied (a Join, a Register) would fail or apply it twice.
        c->done(TimedOut(fmt::format(
            "Redis at {}: connection lost waiting for the reply to the '{}' script ({}); whether it was applied is "
            "unknown",
            url_, c->script->name, error)));
      }
    }
    pending.swap(again);
  }
  for (Command* c : pending) {
    c->done(
        Unavailable(fmt::format("Redis at {}: the '{}' script could not be run after a retry", url_, c->script->name)));
  }
}

}  // namespace shardwire::control
