// RedisClock (redis_clock.h): Cristian's algorithm against Redis TIME.
#include "control/redis_clock.h"

#include <chrono>
#include <limits>
#include <string_view>

#include <fmt/format.h>

namespace shardwire::control {

namespace {

std::int64_t SteadyNowUs() {
  return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

std::int64_t SystemNowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// 1-19 decimal digits (no sign), as Redis writes TIME's parts.
bool ParseDigits(const redisReply& part, std::int64_t* out) {
  if (part.type != REDIS_REPLY_STRING || part.len < 1 || part.len > 19) return false;
  std::int64_t v = 0;
  for (std::size_t i = 0; i < part.len; ++i) {
    const char c = part.str[i];
    if (c < '0' || c > '9') return false;
    if (v > (std::numeric_limits<std::int64_t>::max() - (c - '0')) / 10) return false;
    v = v * 10 + (c - '0');
  }
  *out = v;
  return true;
}

// 9999-12-31T23:59:59Z: beyond it a clock is broken, and the microseconds would near int64's end.
constexpr std::int64_t kMaxUnixSeconds = 253402300799;

}  // namespace

Result<std::int64_t> ParseRedisTimeUs(const redisReply& reply, const std::string& where) {
  std::int64_t seconds = 0;
  std::int64_t micros = 0;
  if (reply.type != REDIS_REPLY_ARRAY || reply.elements != 2 || reply.element[0] == nullptr ||
      reply.element[1] == nullptr || !ParseDigits(*reply.element[0], &seconds) ||
      !ParseDigits(*reply.element[1], &micros) || micros >= 1000000 || seconds > kMaxUnixSeconds) {
    return CorruptData(fmt::format("{}: the reply to TIME is not [unix seconds, microseconds]", where));
  }
  return seconds * 1000000 + micros;
}

RedisClock::RedisClock(LocalClockUs local) : local_(local ? std::move(local) : LocalClockUs(SteadyNowUs)) {}

Status RedisClock::Sync(const ServerTimeUs& read) {
  std::int64_t best_round_trip = -1;
  std::int64_t best_offset = 0;
  for (int i = 0; i < kSyncSamples; ++i) {
    const std::int64_t before = local_();
    SW_ASSIGN_OR_RETURN(std::int64_t server_us, read());
    const std::int64_t after = local_();
    const std::int64_t round_trip = after - before;
    if (round_trip < 0) continue;  // not monotonic (a test's clock): no bound, not kept
    if (best_round_trip < 0 || round_trip < best_round_trip) {
      best_round_trip = round_trip;
      best_offset = server_us - (before + round_trip / 2);
    }
  }
  if (best_round_trip < 0) return Internal("RedisClock: the local clock went backwards in every sample");
  // Kept unless slow and worse than the offset kept: an offset measured over a 2 s round trip
  // (a Redis loaded when the coordinator started) gives way to a 300 ms one.
  if (best_round_trip > kMaxRoundTripUs && synced_.load(std::memory_order_acquire) &&
      best_round_trip > last_round_trip_us_.load(std::memory_order_relaxed)) {
    return Unavailable(fmt::format(
        "RedisClock: the shortest of {} TIME round trips took {} ms (more than {} ms and than the {} ms of the "
        "offset kept): the last offset is kept",
        kSyncSamples, best_round_trip / 1000, kMaxRoundTripUs / 1000,
        last_round_trip_us_.load(std::memory_order_relaxed) / 1000));
  }
  offset_us_.store(best_offset, std::memory_order_relaxed);
  last_round_trip_us_.store(best_round_trip, std::memory_order_relaxed);
  synced_.store(true, std::memory_order_release);
  return Status::Ok();
}

std::int64_t RedisClock::NowMs() const {
  if (!synced_.load(std::memory_order_acquire)) return SystemNowMs();
  const std::int64_t us = local_() + offset_us_.load(std::memory_order_relaxed);
  // Floor division: a server clock before 1970 (a broken one) still rounds one way.
  return us >= 0 ? us / 1000 : -((-us + 999) / 1000);
}

}  // namespace shardwire::control
