// In-memory CoordinatorState: maps under one mutex. The default state of a
// coordinator; everything is lost when the process stops (documented in
// docs/coordinator.md).
//
// Leases are derived at read time exactly as the Redis state does it: a source is
// STALE when marked or when now - last_heartbeat >= stale_after, and invisible
// (as if deleted) once now - last_heartbeat >= delete_after, even before Reap
// removed it. Job members past member_expire_after are expired (epoch bumped)
// by the first operation on their job or by Reap, whichever comes first.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <deque>
#include <map>
#include <mutex>
#include <random>
#include <utility>

#include "control/coordinator_state.h"
#include "control/rendezvous_internal.h"
#include "control/state_id.h"

namespace shardwire::control {
namespace {

struct StoredSource {
  SourceRecord record;  // state/stale_reason as last written (marked stale or by Reap)
  bool marked_stale = false;
  // A loader's mark holds the source STALE until this time (unix ms), whatever its
  // heartbeats say (LeasePolicy::source_mark_hold_s); 0: no hold.
  std::int64_t mark_held_until_ms = 0;
};

struct Job {
  std::uint64_t epoch = 0;
  std::map<std::string, JobMember> members;
};

class InMemoryCoordinatorState final : public CoordinatorState {
 public:
  explicit InMemoryCoordinatorState(LeasePolicy policy)
      : stale_after_ms_(LeaseMs(policy.source_stale_after_s)),
        delete_after_ms_(LeaseMs(policy.source_delete_after_s)),
        mark_hold_ms_(LeaseMs(policy.source_mark_hold_s)),
        expire_after_ms_(LeaseMs(policy.member_expire_after_s)),
        rng_(std::random_device{}()),
        state_id_(NewStateId()) {}

  std::string StateId() override { return state_id_; }

  // A bound call (coordinator_state.h) names this object's state or none: this state is never
  // lost while the object lives, so another id is a state that ended with another object.
  Status CheckBound(const std::string& state_id) const {
    return state_id.empty() || state_id == state_id_ ? Status::Ok() : StateGone(state_id, state_id_);
  }

  // --- key-value ---------------------------------------------------------

  Status Put(const std::string& key, std::span<const std::byte> value, const std::string& state_id) override {
    SW_RETURN_IF_ERROR(CheckBound(state_id));
    SW_RETURN_IF_ERROR(control::ValidateKey(key));
    SW_RETURN_IF_ERROR(control::ValidateValueSize(value.size(), key));
    std::vector<std::byte> copy(value.begin(), value.end());
    std::lock_guard<std::mutex> lock(mu_);
    kv_[key] = std::move(copy);
    ++generation_;
    return Status::Ok();
  }

  Result<std::optional<std::vector<std::byte>>> Get(const std::string& key) override {
    SW_RETURN_IF_ERROR(control::ValidateKey(key));
    std::lock_guard<std::mutex> lock(mu_);
    auto it = kv_.find(key);
    if (it == kv_.end()) return std::optional<std::vector<std::byte>>();
    return std::optional<std::vector<std::byte>>(it->second);
  }

  Result<std::int64_t> Add(const std::string& key, std::int64_t delta, const std::string& request_id,
                           const std::string& state_id) override {
    SW_RETURN_IF_ERROR(CheckBound(state_id));
    SW_RETURN_IF_ERROR(control::ValidateKey(key));
    std::lock_guard<std::mutex> lock(mu_);
    // Forget applied request ids older than the TTL (oldest first), then answer a repeat.
    const auto now_t = std::chrono::steady_clock::now();
    while (!applied_order_.empty() &&
           now_t - applied_order_.front().first > std::chrono::milliseconds(kAddRequestIdTtlMs)) {
      applied_adds_.erase(applied_order_.front().second);
      applied_order_.pop_front();
    }
    if (!request_id.empty()) {
      if (auto seen = applied_adds_.find({key, request_id}); seen != applied_adds_.end()) return seen->second;
    }
    auto it = kv_.find(key);
    std::vector<std::byte> encoded;
    SW_ASSIGN_OR_RETURN(std::int64_t now,
                        control::ApplyAdd(it == kv_.end() ? nullptr : &it->second, delta, key, &encoded));
    kv_[key] = std::move(encoded);
    ++generation_;
    if (!request_id.empty()) {
      applied_adds_.emplace(std::make_pair(key, request_id), now);
      applied_order_.emplace_back(now_t, std::make_pair(key, request_id));
    }
    return now;
  }

  // Adds with a request id applied in the last kAddRequestIdTtlMs: (key, id) -> result, and
  // (key, id) by time.
  std::map<std::pair<std::string, std::string>, std::int64_t> applied_adds_;
  std::deque<std::pair<std::chrono::steady_clock::time_point, std::pair<std::string, std::string>>> applied_order_;

  Result<std::uint64_t> KvGeneration() override {
    std::lock_guard<std::mutex> lock(mu_);
    return generation_;
  }

  // --- sources -----------------------------------------------------------

  Result<SourceRecord> RegisterSource(SourceRecord record, std::int64_t now_ms) override {
    std::lock_guard<std::mutex> lock(mu_);
    std::string id = record.source_id;
    if (!id.empty()) {  // proposed by the caller: a repeat of the same registration is idempotent
      auto it = sources_.find(id);
      if (it != sources_.end() && Deleted(it->second, now_ms)) {
        sources_.erase(it);
      } else if (it != sources_.end()) {
        SourceRecord& stored = it->second.record;
        if (stored.model_identity != record.model_identity || stored.instance_id != record.instance_id ||
            stored.rank != record.rank || stored.world_size != record.world_size || stored.layout != record.layout ||
            stored.layout_fingerprint != record.layout_fingerprint || stored.metadata != record.metadata ||
            stored.attributes != record.attributes) {
          return AlreadyExists(fmt::format("source {} is registered with other contents", id));
        }
        stored.last_heartbeat_unix_ms = std::max(stored.last_heartbeat_unix_ms, now_ms);
        ClearMarkUnlessHeld(it->second, now_ms);
        return Derive(it->second, now_ms);
      }
    } else {
      do {
        id = fmt::format("src-{:016x}", rng_());
      } while (sources_.count(id) != 0);
    }
    record.source_id = id;
    record.state = SourceState::kReady;
    record.stale_reason.clear();
    record.registered_unix_ms = now_ms;
    record.last_heartbeat_unix_ms = now_ms;
    sources_[id] = StoredSource{record, false};
    return record;
  }

  Result<SourceHeartbeat> HeartbeatSource(const std::string& source_id, std::int64_t now_ms) override {
    std::lock_guard<std::mutex> lock(mu_);
    StoredSource* s = FindLiveSource(source_id, now_ms);
    if (s == nullptr) return SourceNotFound(source_id);
    s->record.last_heartbeat_unix_ms = std::max(s->record.last_heartbeat_unix_ms, now_ms);
    SourceHeartbeat found;
    if (s->marked_stale) found.stale_reason = s->record.stale_reason;
    ClearMarkUnlessHeld(*s, now_ms);
    found.state = s->marked_stale ? SourceState::kStale : SourceState::kReady;
    return found;
  }

  Result<std::vector<SourceRecord>> ListSources(const std::string& model_identity, std::optional<SourceState> state,
                                                std::int64_t now_ms) override {
    std::vector<SourceRecord> out;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (const auto& [id, s] : sources_) {
        if (!model_identity.empty() && s.record.model_identity != model_identity) continue;
        if (Deleted(s, now_ms)) continue;
        SourceRecord r = Derive(s, now_ms);
        if (state.has_value() && r.state != *state) continue;
        out.push_back(std::move(r));
      }
    }
    std::sort(out.begin(), out.end(), [](const SourceRecord& a, const SourceRecord& b) {
      if (a.instance_id != b.instance_id) return a.instance_id < b.instance_id;
      if (a.rank != b.rank) return a.rank < b.rank;
      return a.source_id < b.source_id;
    });
    return out;
  }

  Result<SourceCounts> CountSources(std::int64_t now_ms) override {
    std::lock_guard<std::mutex> lock(mu_);
    SourceCounts counts;
    for (const auto& [id, s] : sources_) {
      if (Deleted(s, now_ms)) continue;
      ++(s.marked_stale || Expired(s, now_ms) ? counts.stale : counts.ready);
    }
    return counts;
  }

  Status MarkSourceStale(const std::string& source_id, const std::string& reason, std::int64_t now_ms,
                         bool hold) override {
    std::lock_guard<std::mutex> lock(mu_);
    StoredSource* s = FindLiveSource(source_id, now_ms);
    if (s == nullptr) return SourceNotFound(source_id);
    s->marked_stale = true;
    if (hold) s->mark_held_until_ms = MarkHeldUntilMs(now_ms, mark_hold_ms_);
    s->record.state = SourceState::kStale;
    s->record.stale_reason = reason.empty() ? "marked stale" : reason;
    return Status::Ok();
  }

  Status DeregisterSource(const std::string& source_id) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (sources_.erase(source_id) == 0) return SourceNotFound(source_id);
    return Status::Ok();
  }

  // --- jobs --------------------------------------------------------------

  Result<JobView> JoinJob(const std::string& job, JobMember member, std::int64_t now_ms,
                          const std::string& state_id) override {
    SW_RETURN_IF_ERROR(CheckBound(state_id));
    std::lock_guard<std::mutex> lock(mu_);
    // A live member of that id refuses the join before anything changes (as the Redis script).
    if (auto found = jobs_.find(job); found != jobs_.end()) {
      auto m = found->second.members.find(member.member_id);
      if (m != found->second.members.end() && now_ms - m->second.last_heartbeat_unix_ms < expire_after_ms_) {
        return AlreadyExists(fmt::format("job '{}' already has a live member '{}'", job, member.member_id));
      }
    }
    Job& j = jobs_[job];
    ExpireMembers(j, now_ms);
    member.committed_version = 0;
    member.joined_unix_ms = now_ms;
    member.last_heartbeat_unix_ms = now_ms;
    j.members[member.member_id] = std::move(member);
    ++j.epoch;
    return View(job, j);
  }

  Status HeartbeatMember(const std::string& job, const std::string& member_id, std::int64_t now_ms,
                         const std::string& state_id) override {
    SW_RETURN_IF_ERROR(CheckBound(state_id));
    std::lock_guard<std::mutex> lock(mu_);
    SW_ASSIGN_OR_RETURN(JobMember * m, FindMember(job, member_id, now_ms));
    m->last_heartbeat_unix_ms = std::max(m->last_heartbeat_unix_ms, now_ms);
    return Status::Ok();
  }

  Status LeaveJob(const std::string& job, const std::string& member_id, std::int64_t now_ms,
                  const std::string& state_id) override {
    SW_RETURN_IF_ERROR(CheckBound(state_id));
    std::lock_guard<std::mutex> lock(mu_);
    SW_ASSIGN_OR_RETURN(JobMember * m, FindMember(job, member_id, now_ms));
    (void)m;
    Job& j = jobs_[job];
    j.members.erase(member_id);
    ++j.epoch;
    return Status::Ok();
  }

  Result<JobView> GetJob(const std::string& job, std::int64_t now_ms, const std::string& state_id) override {
    SW_RETURN_IF_ERROR(CheckBound(state_id));
    std::lock_guard<std::mutex> lock(mu_);
    auto it = jobs_.find(job);
    if (it == jobs_.end()) return NotFound(fmt::format("job '{}' does not exist", job));
    ExpireMembers(it->second, now_ms);
    return View(job, it->second);
  }

  Status CommitVersion(const std::string& job, const std::string& member_id, std::uint64_t version, std::int64_t now_ms,
                       const std::string& state_id) override {
    SW_RETURN_IF_ERROR(CheckBound(state_id));
    std::lock_guard<std::mutex> lock(mu_);
    SW_ASSIGN_OR_RETURN(JobMember * m, FindMember(job, member_id, now_ms));
    if (version < m->committed_version) {
      return FailedPrecondition(fmt::format("job '{}' member '{}': version {} is below the committed version {}", job,
                                            member_id, version, m->committed_version));
    }
    m->committed_version = version;
    return Status::Ok();
  }

  Result<ReapStats> Reap(std::int64_t now_ms) override {
    ReapStats stats;
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = sources_.begin(); it != sources_.end();) {
      StoredSource& s = it->second;
      if (Deleted(s, now_ms)) {
        it = sources_.erase(it);
        ++stats.sources_deleted;
        continue;
      }
      if (s.record.state == SourceState::kReady && Expired(s, now_ms)) {
        s.record = Derive(s, now_ms);
        ++stats.sources_marked_stale;
      }
      ++it;
    }
    for (auto& [name, j] : jobs_) stats.members_expired += ExpireMembers(j, now_ms);
    return stats;
  }

 private:
  static Status SourceNotFound(const std::string& id) {
    return NotFound(fmt::format("source '{}' is not registered (deleted or never registered; register again)", id));
  }

  // A heartbeat (or a repeated registration) at now_ms: READY again unless a loader's
  // mark still holds the source STALE.
  static void ClearMarkUnlessHeld(StoredSource& s, std::int64_t now_ms) {
    if (s.marked_stale && now_ms < s.mark_held_until_ms) return;
    s.marked_stale = false;
    s.mark_held_until_ms = 0;
    s.record.state = SourceState::kReady;
    s.record.stale_reason.clear();
  }

  bool Expired(const StoredSource& s, std::int64_t now_ms) const {
    return now_ms - s.record.last_heartbeat_unix_ms >= stale_after_ms_;
  }
  bool Deleted(const StoredSource& s, std::int64_t now_ms) const {
    return now_ms - s.record.last_heartbeat_unix_ms >= delete_after_ms_;
  }

  // The record as a reader at now_ms sees it (state derived from the lease).
  SourceRecord Derive(const StoredSource& s, std::int64_t now_ms) const {
    SourceRecord r = s.record;
    if (s.marked_stale) {
      r.state = SourceState::kStale;
    } else if (Expired(s, now_ms)) {
      r.state = SourceState::kStale;
      r.stale_reason = fmt::format("no heartbeat for {} ms (stale after {} ms)",
                                   now_ms - s.record.last_heartbeat_unix_ms, stale_after_ms_);
    } else {
      r.state = SourceState::kReady;
      r.stale_reason.clear();
    }
    return r;
  }

  StoredSource* FindLiveSource(const std::string& id, std::int64_t now_ms) {
    auto it = sources_.find(id);
    if (it == sources_.end()) return nullptr;
    if (Deleted(it->second, now_ms)) {
      sources_.erase(it);
      return nullptr;
    }
    return &it->second;
  }

  // Removes members past their lease; bumps the epoch once per member. Returns how many.
  int ExpireMembers(Job& j, std::int64_t now_ms) {
    int n = 0;
    for (auto it = j.members.begin(); it != j.members.end();) {
      if (now_ms - it->second.last_heartbeat_unix_ms >= expire_after_ms_) {
        it = j.members.erase(it);
        ++j.epoch;
        ++n;
      } else {
        ++it;
      }
    }
    return n;
  }

  Result<JobMember*> FindMember(const std::string& job, const std::string& member_id, std::int64_t now_ms) {
    auto it = jobs_.find(job);
    if (it == jobs_.end()) return NotFound(fmt::format("job '{}' does not exist", job));
    ExpireMembers(it->second, now_ms);
    auto m = it->second.members.find(member_id);
    if (m == it->second.members.end()) {
      return NotFound(fmt::format("job '{}' has no live member '{}' (left, expired or never joined)", job, member_id));
    }
    return &m->second;
  }

  static JobView View(const std::string& name, const Job& j) {
    JobView v;
    v.job = name;
    v.membership_epoch = j.epoch;
    v.members.reserve(j.members.size());
    for (const auto& [id, m] : j.members) v.members.push_back(m);  // std::map: sorted by member_id
    return v;
  }

  const std::int64_t stale_after_ms_;
  const std::int64_t delete_after_ms_;
  const std::int64_t mark_hold_ms_;
  const std::int64_t expire_after_ms_;

  std::mutex mu_;
  std::mt19937_64 rng_;
  const std::string state_id_;  // new with every object: its state ends with it
  std::map<std::string, std::vector<std::byte>, std::less<>> kv_;
  std::uint64_t generation_ = 0;
  std::map<std::string, StoredSource> sources_;
  std::map<std::string, Job> jobs_;
};

}  // namespace

std::unique_ptr<CoordinatorState> MakeInMemoryCoordinatorState(LeasePolicy policy) {
  return std::make_unique<InMemoryCoordinatorState>(policy);
}

}  // namespace shardwire::control
