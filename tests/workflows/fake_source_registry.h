// An in-memory SourceRegistry for unit tests of the P2P loading workflow: the
// coordinator's source registry semantics (ids, READY/STALE, list filters and
// order) without a server. Thread-safe.
#pragma once

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <mutex>
#include <optional>

#include <fmt/format.h>

#include "shardwire/source_registry.h"

namespace shardwire::testing {

class FakeSourceRegistry final : public SourceRegistry {
 public:
  Result<SourceRecord> RegisterSource(const SourceRecord& record, double timeout_s) override {
    std::lock_guard<std::mutex> lock(mu_);
    last_register_bound_s_ = timeout_s;
    if (!register_error_.ok()) return register_error_;
    SourceRecord r = record;
    if (r.source_id.empty()) r.source_id = fmt::format("src-{:016x}", ++next_);  // else proposed: kept
    r.state = SourceState::kReady;
    r.stale_reason.clear();
    // A clock of one tick per registration, so that registration order is known (the
    // coordinator's registered_unix_ms); a repeat of a registration keeps its time.
    auto known = records_.find(r.source_id);
    r.registered_unix_ms = known != records_.end() ? known->second.registered_unix_ms : ++registrations_;
    r.last_heartbeat_unix_ms = r.registered_unix_ms;
    records_[r.source_id] = r;
    if (!lost_register_reply_.ok()) return lost_register_reply_;  // stored, but the caller hears an error
    return r;
  }
  // Only marks make a record STALE here (no leases), so a STALE record carries a mark:
  // reported, and cleared unless marks are sticky (then reported as still holding).
  Result<SourceHeartbeat> HeartbeatSource(const std::string& id, double timeout_s) override {
    std::lock_guard<std::mutex> lock(mu_);
    longest_lease_call_bound_s_ = std::max(longest_lease_call_bound_s_, timeout_s);
    auto it = records_.find(id);
    if (it == records_.end()) return NotFound("source " + id);
    ++heartbeats_;
    SourceHeartbeat found;
    if (it->second.state == SourceState::kStale) found.stale_reason = it->second.stale_reason;
    if (!sticky_stale_) {
      it->second.state = SourceState::kReady;
      it->second.stale_reason.clear();
    }
    found.state = it->second.state;
    return found;
  }
  Result<std::vector<SourceRecord>> ListSources(const std::string& identity,
                                                std::optional<SourceState> state) override {
    std::unique_lock<std::mutex> lock(mu_);
    std::vector<SourceRecord> out;
    for (const auto& [id, r] : records_) {
      if (!identity.empty() && r.model_identity != identity) continue;
      if (state && r.state != *state) continue;
      out.push_back(r);
    }
    std::sort(out.begin(), out.end(), [](const SourceRecord& a, const SourceRecord& b) {
      return std::tie(a.instance_id, a.rank) < std::tie(b.instance_id, b.rank);
    });
    if (after_list_) {
      const std::function<void()> after = after_list_;
      lock.unlock();
      after();  // e.g. registers a rank, as the next rank of a starting instance does
    }
    return out;
  }
  Status MarkSourceStale(const std::string& id, const std::string& reason, bool hold) override {
    std::function<void()> before;
    {
      std::lock_guard<std::mutex> lock(mu_);
      before = before_mark_;
    }
    if (before) before();  // e.g. blocks, as a coordinator that is gone does
    std::lock_guard<std::mutex> lock(mu_);
    auto it = records_.find(id);
    if (it == records_.end()) return NotFound("source " + id);
    it->second.state = SourceState::kStale;
    it->second.stale_reason = reason;
    held_[id] = hold;
    return Status::Ok();
  }
  Status DeregisterSource(const std::string& id, double timeout_s) override {
    std::lock_guard<std::mutex> lock(mu_);
    longest_lease_call_bound_s_ = std::max(longest_lease_call_bound_s_, timeout_s);
    ++deregistrations_;
    return records_.erase(id) ? Status::Ok() : NotFound("source " + id);
  }

  // Test helpers.
  /// Whether the last MarkSourceStale of `id` asked for a held mark; nullopt: never marked.
  std::optional<bool> MarkHeld(const std::string& id) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = held_.find(id);
    if (it == held_.end()) return std::nullopt;
    return it->second;
  }
  std::vector<SourceRecord> All() {
    auto all = ListSources("", std::nullopt);
    return all.ok() ? *all : std::vector<SourceRecord>{};
  }
  void Edit(const std::string& instance_id, const std::function<void(SourceRecord&)>& edit) {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [id, r] : records_) {
      if (r.instance_id == instance_id) edit(r);
    }
  }
  /// The largest timeout_s any HeartbeatSource / DeregisterSource was given (0: none yet).
  double longest_lease_call_bound_s() {
    std::lock_guard<std::mutex> lock(mu_);
    return longest_lease_call_bound_s_;
  }
  /// The timeout_s of the latest RegisterSource (0: none yet).
  double last_register_bound_s() {
    std::lock_guard<std::mutex> lock(mu_);
    return last_register_bound_s_;
  }
  int deregistrations() {
    std::lock_guard<std::mutex> lock(mu_);
    return deregistrations_;
  }
  /// Drops every record, as an in-memory coordinator restarted empty does.
  void Forget() {
    std::lock_guard<std::mutex> lock(mu_);
    records_.clear();
  }
  /// Called (without the lock) at the start of every MarkSourceStale; empty: none.
  void SetBeforeMarkStale(std::function<void()> hook) {
    std::lock_guard<std::mutex> lock(mu_);
    before_mark_ = std::move(hook);
  }
  /// Every RegisterSource fails with `error` (OK: they succeed again), as an unreachable
  /// coordinator's do.
  void SetRegisterError(Status error) {
    std::lock_guard<std::mutex> lock(mu_);
    register_error_ = std::move(error);
  }
  /// Every RegisterSource stores its record, then fails with `error` (OK: they succeed
  /// again), as a call whose reply was lost after the coordinator stored it does.
  void SetLostRegisterReply(Status error) {
    std::lock_guard<std::mutex> lock(mu_);
    lost_register_reply_ = std::move(error);
  }
  /// Called (without the lock) at the end of every ListSources, on the listing thread;
  /// empty: none.
  void SetAfterList(std::function<void()> hook) {
    std::lock_guard<std::mutex> lock(mu_);
    after_list_ = std::move(hook);
  }
  /// Heartbeats no longer revive STALE sources (so a test can observe the mark).
  void SetStickyStale(bool on) {
    std::lock_guard<std::mutex> lock(mu_);
    sticky_stale_ = on;
  }

 private:
  std::mutex mu_;
  std::map<std::string, SourceRecord> records_;
  std::uint64_t next_ = 0;
  std::int64_t registrations_ = 0;  // registered_unix_ms of the latest new registration
  std::uint64_t heartbeats_ = 0;
  double longest_lease_call_bound_s_ = 0;
  double last_register_bound_s_ = 0;
  int deregistrations_ = 0;
  bool sticky_stale_ = false;
  std::map<std::string, bool> held_;  // source id -> hold of its last mark
  Status register_error_;
  Status lost_register_reply_;
  std::function<void()> before_mark_;
  std::function<void()> after_list_;
};

}  // namespace shardwire::testing
