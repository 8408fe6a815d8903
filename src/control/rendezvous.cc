#include "shardwire/rendezvous.h"

#include <fmt/format.h>

#include <charconv>
#include <cmath>
#include <limits>
#include <system_error>

#include "control/rendezvous_internal.h"

namespace shardwire {
namespace control {

Status ValidateKey(std::string_view key) {
  if (key.empty()) return InvalidArgument("rendezvous key is empty");
  if (key.size() > kMaxRendezvousKeyBytes) {
    return InvalidArgument(fmt::format("rendezvous key of {} bytes exceeds the limit of {} bytes",
                                       key.size(), kMaxRendezvousKeyBytes));
  }
  return Status::Ok();
}

Status ValidateValueSize(std::size_t size, std::string_view key) {
  if (size > kMaxRendezvousValueBytes) {
    return InvalidArgument(fmt::format("value of {} bytes for rendezvous key '{}' exceeds the limit of {} bytes",
                                       size, key, kMaxRendezvousValueBytes));
  }
  return Status::Ok();
}

Status ValidateTimeout(double timeout_s, std::string_view what) {
  if (std::isnan(timeout_s) || timeout_s < 0) {
    return InvalidArgument(fmt::format("{}: timeout must be >= 0 seconds, got {}", what, timeout_s));
  }
  return Status::Ok();
}

Deadline DeadlineAfter(double timeout_s) {
  // Beyond ~30 years the wait is effectively unbounded; this also keeps the
  // duration arithmetic far from overflow.
  if (!(timeout_s < 1e9)) return Deadline::max();
  if (timeout_s <= 0) return Clock::now();
  return Clock::now() +
         std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_s));
}

int PollTimeoutMs(Deadline deadline) {
  if (deadline == Deadline::max()) return -1;
  auto left = deadline - Clock::now();
  if (left <= Clock::duration::zero()) return 0;
  auto ms = std::chrono::ceil<std::chrono::milliseconds>(left).count();
  return ms > std::numeric_limits<int>::max() ? std::numeric_limits<int>::max()
                                              : static_cast<int>(ms);
}

double SecondsLeft(Deadline deadline) {
  if (deadline == Deadline::max()) return std::numeric_limits<double>::infinity();
  auto left = std::chrono::duration<double>(deadline - Clock::now()).count();
  return left > 0 ? left : 0.0;
}

Status GetTimedOut(std::string_view key, double timeout_s) {
  return TimedOut(fmt::format("rendezvous key '{}' was not set within {} s", key, timeout_s));
}

Result<std::int64_t> ApplyAdd(const std::vector<std::byte>* existing, std::int64_t delta,
                              std::string_view key, std::vector<std::byte>* encoded) {
  std::int64_t old = 0;
  if (existing != nullptr) {
    const char* first = reinterpret_cast<const char*>(existing->data());
    const char* last = first + existing->size();
    auto [ptr, ec] = std::from_chars(first, last, old);
    // Canonical decimal only, as Redis's INCRBY (string2ll) takes it: "007" and "-0" parse
    // here but are refused there, and both backends must agree on what a counter is.
    char canonical[32];
    const auto written = std::to_chars(canonical, canonical + sizeof canonical, old);
    const bool is_canonical = ec == std::errc() && ptr == last &&
                              std::string_view(first, existing->size()) ==
                                  std::string_view(canonical, static_cast<std::size_t>(written.ptr - canonical));
    if (existing->empty() || !is_canonical) {
      return InvalidArgument(fmt::format(
          "rendezvous key '{}' holds a {}-byte value that is not a counter (decimal int64)",
          key, existing->size()));
    }
  }
  constexpr std::int64_t kMax = std::numeric_limits<std::int64_t>::max();
  constexpr std::int64_t kMin = std::numeric_limits<std::int64_t>::min();
  if ((delta > 0 && old > kMax - delta) || (delta < 0 && old < kMin - delta)) {
    return InvalidArgument(
        fmt::format("counter '{}' would overflow int64: {} + {}", key, old, delta));
  }
  const std::int64_t now = old + delta;
  char buf[32];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, now);
  (void)ec;  // 32 bytes always hold an int64
  const auto* b = reinterpret_cast<const std::byte*>(buf);
  encoded->assign(b, b + (end - buf));
  return now;
}

}  // namespace control


// ---------------------------------------------------------------------------
// Barrier and string helpers

Status Barrier(Rendezvous& rz, const std::string& name, int rank, int world_size,
               double timeout_s) {
  if (world_size < 1) {
    return InvalidArgument(fmt::format("barrier '{}': world_size must be >= 1, got {}", name, world_size));
  }
  if (rank < 0 || rank >= world_size) {
    return InvalidArgument(
        fmt::format("barrier '{}': rank {} is outside [0, {})", name, rank, world_size));
  }
  SW_RETURN_IF_ERROR(control::ValidateTimeout(timeout_s, fmt::format("barrier '{}'", name)));
  const control::Deadline deadline = control::DeadlineAfter(timeout_s);
  const std::string prefix = "shardwire/barrier/" + name;
  const std::string arrived_key = prefix + "/arrived";
  const std::string done_key = prefix + "/done";

  auto arrived = rz.Add(arrived_key, 1);
  if (!arrived.ok()) return arrived.status().WithContext(fmt::format("barrier '{}' rank {}", name, rank));
  if (*arrived > world_size) {
    return InvalidArgument(fmt::format(
        "barrier '{}': {} arrivals for world_size {} (the name was reused, or ranks disagree on "
        "world_size)",
        name, *arrived, world_size));
  }
  if (*arrived == world_size) {
    Status s = PutString(rz, done_key, "1");
    if (!s.ok()) return s.WithContext(fmt::format("barrier '{}' rank {}", name, rank));
  }
  auto done = rz.Get(done_key, control::SecondsLeft(deadline));
  if (done.ok()) return Status::Ok();
  if (done.status().code() != ErrorCode::kTimedOut) {
    return done.status().WithContext(fmt::format("barrier '{}' rank {}", name, rank));
  }
  auto count = rz.Add(arrived_key, 0);
  std::string how_many = count.ok() ? std::to_string(*count) : "an unknown number";
  return TimedOut(fmt::format("barrier '{}' timed out after {} s on rank {}: {} of {} ranks arrived",
                              name, timeout_s, rank, how_many, world_size));
}

Status PutString(Rendezvous& rz, const std::string& key, std::string_view value) {
  return rz.Put(key, std::as_bytes(std::span<const char>(value.data(), value.size())));
}

Result<std::string> GetString(Rendezvous& rz, const std::string& key, double timeout_s) {
  SW_ASSIGN_OR_RETURN(std::vector<std::byte> bytes, rz.Get(key, timeout_s));
  return std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

// ---------------------------------------------------------------------------
// InProcessRendezvous

Status InProcessRendezvous::Put(const std::string& key, std::span<const std::byte> value) {
  SW_RETURN_IF_ERROR(control::ValidateKey(key));
  SW_RETURN_IF_ERROR(control::ValidateValueSize(value.size(), key));
  std::vector<std::byte> copy(value.begin(), value.end());
  {
    std::lock_guard<std::mutex> lock(mu_);
    store_[key] = std::move(copy);
  }
  changed_.notify_all();
  return Status::Ok();
}

Result<std::vector<std::byte>> InProcessRendezvous::Get(const std::string& key, double timeout_s) {
  SW_RETURN_IF_ERROR(control::ValidateKey(key));
  SW_RETURN_IF_ERROR(control::ValidateTimeout(timeout_s, fmt::format("Get '{}'", key)));
  const control::Deadline deadline = control::DeadlineAfter(timeout_s);
  std::unique_lock<std::mutex> lock(mu_);
  auto present = [&] { return store_.find(key) != store_.end(); };
  if (deadline == control::Deadline::max()) {
    changed_.wait(lock, present);
  } else if (!changed_.wait_until(lock, deadline, present)) {
    return control::GetTimedOut(key, timeout_s);
  }
  return store_.find(key)->second;
}

Result<std::int64_t> InProcessRendezvous::Add(const std::string& key, std::int64_t delta) {
  SW_RETURN_IF_ERROR(control::ValidateKey(key));
  std::int64_t now = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = store_.find(key);
    std::vector<std::byte> encoded;
    SW_ASSIGN_OR_RETURN(now, control::ApplyAdd(it == store_.end() ? nullptr : &it->second, delta,
                                          key, &encoded));
    store_[key] = std::move(encoded);
  }
  changed_.notify_all();
  return now;
}

}  // namespace shardwire
