// CoordinatorState: where a coordinator keeps what it serves. Two implementations:
// in memory (coordinator_state_memory.cc) and Redis (coordinator_state_redis.cc).
//
// The gRPC service (coordinator_service.cc) validates every request first (limits of
// coordinator.h), then calls exactly one state method per mutation, so each mutation
// is atomic: the Redis implementation runs each as one Lua script (EVALSHA) or one
// MULTI/EXEC, so two coordinators over one Redis never lose a heartbeat or a
// registration under concurrency.
//
// Time: every method that depends on time takes `now_ms` (unix milliseconds) from the
// caller, so tests control time; the service passes NowMs() (Redis: the Redis
// server's clock). Source state is derived at read time: READY when now -
// last_heartbeat < stale_after, STALE otherwise or when marked; a source whose
// heartbeat is older than delete_after is gone (Redis: key TTL set to delete_after
// on every register/heartbeat, so it expires even with no coordinator running; in
// memory: Reap deletes it).
//
// Errors: kNotFound, kAlreadyExists, kFailedPrecondition, kInvalidArgument as the
// methods say; kUnavailable naming the Redis URL when Redis cannot be reached (the
// service maps it to gRPC UNAVAILABLE so clients retry); kCorruptData when a stored
// record cannot be decoded (names the key).
//
// Thread-safety: every implementation is fully thread-safe.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "shardwire/coordinator.h"
#include "shardwire/status.h"

namespace shardwire::control {

/// Times that turn heartbeats into states (seconds), from CoordinatorServerOptions.
struct LeasePolicy {
  double source_stale_after_s = 10;
  double source_delete_after_s = 60;
  /// How long a loader's MarkSourceStale with hold keeps a source STALE whatever its
  /// heartbeats say (CoordinatorServerOptions::source_mark_hold_s); 0: until its next heartbeat.
  double source_mark_hold_s = 30;
  double member_expire_after_s = 10;
};

/// Milliseconds of a LeasePolicy time of `seconds`, clamped to [0, kMaxCoordinatorTimeS s]
/// (NaN and negative: 0). CoordinatorServer::Start refuses times beyond that range; the
/// clamp keeps other callers (tests, tools) from an int64 overflow that would expire every
/// lease at once.
inline std::int64_t LeaseMs(double seconds) {
  if (!(seconds > 0)) return 0;
  return static_cast<std::int64_t>((seconds < kMaxCoordinatorTimeS ? seconds : kMaxCoordinatorTimeS) * 1000.0);
}

/// Until when (unix ms) a mark made at `now_ms` holds a source STALE, for a hold of
/// `hold_ms` (LeaseMs of source_mark_hold_s): now_ms + hold_ms, saturating at INT64_MAX.
inline std::int64_t MarkHeldUntilMs(std::int64_t now_ms, std::int64_t hold_ms) {
  return now_ms > INT64_MAX - hold_ms ? INT64_MAX : now_ms + hold_ms;
}

/// What one Reap pass did.
struct ReapStats {
  int sources_marked_stale = 0;
  int sources_deleted = 0;
  int members_expired = 0;
};

/// How many registered sources are in each state (CountSources).
struct SourceCounts {
  std::uint64_t ready = 0;
  std::uint64_t stale = 0;
};

/// Longest AddRequest.request_id (bytes), and how long an applied one is remembered (ms).
inline constexpr std::size_t kMaxAddRequestIdBytes = 64;
inline constexpr std::int64_t kAddRequestIdTtlMs = 10 * 60 * 1000;

class CoordinatorState {
 public:
  virtual ~CoordinatorState() = default;

  // Bound calls. The methods whose meaning depends on earlier calls (Put, Add and every job
  // method) take `state_id`: the state the caller is bound
  // to (the service passes the client's metadata entry kStateIdMetadataKey, state_id.h). When it
  // is not empty and the store no longer holds that state, the call is kFailedPrecondition naming
  // both ids and changes nothing; checked inside the same atomic step as the change (Redis: in
  // the method's Lua script), so a Redis that lost its data (flushed, restarted without
  // persistence) never serves a bound call from the empty state, not even before the next
  // RefreshStateId. Empty: not checked (unbound callers, tests).

  // Key-value rendezvous (semantics of Rendezvous; waiting is the service's job:
  // it re-reads after local Puts and at least every 10 ms for shared backends).
  virtual Status Put(const std::string& key, std::span<const std::byte> value, const std::string& state_id = {}) = 0;
  /// nullopt when absent.
  virtual Result<std::optional<std::vector<std::byte>>> Get(const std::string& key) = 0;
  /// With a non-empty `request_id` (<= kMaxAddRequestIdBytes), applied at most once per key: a
  /// repeat on the same key within kAddRequestIdTtlMs returns the first result without adding
  /// again (the same id on another key is another Add).
  /// Errors: kInvalidArgument when the key holds a non-counter or the sum overflows.
  virtual Result<std::int64_t> Add(const std::string& key, std::int64_t delta, const std::string& request_id = {},
                                   const std::string& state_id = {}) = 0;
  /// A number that changes whenever any key changes (for waiters to detect
  /// changes cheaply); may change spuriously.
  virtual Result<std::uint64_t> KvGeneration() = 0;

  // Sources. `record` arrives validated; the state assigns registered/last-heartbeat times,
  // state READY, and a random source_id unless the record proposes one. With a proposed id
  // the call is idempotent: a live record of that id with the same contents (identity,
  // instance, rank, world size, layout, fingerprint, metadata, attributes) is returned with
  // its lease renewed (as a heartbeat would), so a retry after a lost reply registers nothing
  // twice. Errors: kAlreadyExists when a live record of the proposed id has other contents.
  virtual Result<SourceRecord> RegisterSource(SourceRecord record, std::int64_t now_ms) = 0;
  /// Renews the lease; a source marked STALE becomes READY again unless the mark still
  /// holds (now_ms < mark time + source_mark_hold_s): then only the lease is renewed.
  /// Returns what the heartbeat found (SourceHeartbeat): the state after it, and the reason
  /// of the loader's mark the source carried (cleared now, or still holding).
  /// Errors: kNotFound.
  virtual Result<SourceHeartbeat> HeartbeatSource(const std::string& source_id, std::int64_t now_ms) = 0;
  /// Sorted by (instance_id, rank). Empty identity: all.
  virtual Result<std::vector<SourceRecord>> ListSources(const std::string& model_identity,
                                                        std::optional<SourceState> state, std::int64_t now_ms) = 0;
  /// How many sources are READY and STALE at now_ms, as ListSources("", nullopt, now_ms)
  /// would list them, without building or moving the records (the metrics scrape: a fleet's
  /// records carry up to 1 MiB of transport metadata each). Errors: as ListSources.
  virtual Result<SourceCounts> CountSources(std::int64_t now_ms) = 0;
  /// STALE at once with `reason` (empty: "marked stale"). With `hold`, held so until now_ms +
  /// source_mark_hold_s however the source heartbeats or repeats its registration (a held
  /// mark of a marked source restarts the hold); without, until its next heartbeat (a mark
  /// without hold leaves a running hold as it is). Errors: kNotFound.
  virtual Status MarkSourceStale(const std::string& source_id, const std::string& reason, std::int64_t now_ms,
                                 bool hold) = 0;
  /// Errors: kNotFound.
  virtual Status DeregisterSource(const std::string& source_id) = 0;

  // Jobs.
  /// Errors: kAlreadyExists for a live member id.
  virtual Result<JobView> JoinJob(const std::string& job, JobMember member, std::int64_t now_ms,
                                  const std::string& state_id = {}) = 0;
  /// Errors: kNotFound.
  virtual Status HeartbeatMember(const std::string& job, const std::string& member_id, std::int64_t now_ms,
                                 const std::string& state_id = {}) = 0;
  /// Errors: kNotFound.
  virtual Status LeaveJob(const std::string& job, const std::string& member_id, std::int64_t now_ms,
                          const std::string& state_id = {}) = 0;
  /// Errors: kNotFound for a job with no live members and no history.
  virtual Result<JobView> GetJob(const std::string& job, std::int64_t now_ms, const std::string& state_id = {}) = 0;
  /// Errors: kNotFound; kFailedPrecondition when version < committed.
  virtual Status CommitVersion(const std::string& job, const std::string& member_id, std::uint64_t version,
                               std::int64_t now_ms, const std::string& state_id = {}) = 0;

  // Asynchronous forms of the heartbeat calls, for the coordinator's
  // heartbeat loop (heartbeat_loop.h): the same semantics and errors as the
  // synchronous method of the same name; `done` is called exactly once with
  // its status, on the caller's thread or on another caller's (Redis: the
  // thread leading the pipeline's round, see redis_pipeline.h), so it must be
  // quick and must not block. The call itself may block for the Redis rounds
  // it leads (each bounded by the Redis timeout).
  // The default runs the synchronous method and calls `done` at once (the
  // in-memory state: a mutex held for microseconds).
  //
  // Batches: between BeginHeartbeatBatch() and EndHeartbeatBatch() on one
  // thread, that thread's *Async calls may be held back and sent together by
  // EndHeartbeatBatch() (Redis: queued on one pipeline and sent as one
  // pipelined round, one write for the whole batch); every `done` of the
  // batch has run when EndHeartbeatBatch() returns, unless another thread
  // leads that pipeline's round (then that thread runs them). A batch holds
  // no lock; calls of other threads are unaffected. Batches do not nest. The
  // defaults do nothing (in memory every call completes at once).
  using DoneCallback = std::function<void(Status)>;
  using SourceHeartbeatCallback = std::function<void(Result<SourceHeartbeat>)>;
  virtual void HeartbeatSourceAsync(const std::string& source_id, std::int64_t now_ms, SourceHeartbeatCallback done) {
    done(HeartbeatSource(source_id, now_ms));
  }
  virtual void HeartbeatMemberAsync(const std::string& job, const std::string& member_id, std::int64_t now_ms,
                                    DoneCallback done, const std::string& state_id = {}) {
    done(HeartbeatMember(job, member_id, now_ms, state_id));
  }

  virtual void BeginHeartbeatBatch() {}
  virtual void EndHeartbeatBatch() {}

  // State identity (shardwire.v1.PingResponse.state_id).
  /// Names the stored state: 32 lowercase hex digits, the same for every coordinator serving
  /// this state and across their restarts; a new one once the state is lost (an in-memory state
  /// is new with every object; Redis: the key "shardwire:v1:state_id", made by the first
  /// coordinator with SET NX, so a flushed Redis, or one restarted without persistence, gets a
  /// new id at the next RefreshStateId). Cheap (cached); thread-safe.
  virtual std::string StateId() = 0;
  /// Re-reads the state id from the store, making a new one when the store has none (Redis:
  /// one Lua script, SET NX then GET); the reaper calls it every pass. In memory: nothing.
  /// Errors: kUnavailable (Redis unreachable; the cached id is kept), kCorruptData (the stored
  /// id is not 32 hex digits; names the key).
  virtual Status RefreshStateId() { return Status::Ok(); }
  /// OK when `state_id` is empty (an unbound caller) or the store still holds that state.
  /// Otherwise kFailedPrecondition (StateGone, naming both ids), after re-reading the id as
  /// RefreshStateId does. For a Get that found nothing: between two reaper passes the cached id
  /// of a flushed Redis is still the old one, and the Get would end as a key "not set" rather
  /// than as the lost state. Redis: one GET; in memory: nothing. Other errors: as RefreshStateId.
  /// Thread-safe.
  virtual Status CheckStateId(const std::string& state_id) {
    (void)state_id;
    return Status::Ok();
  }

  // Time.
  /// The clock the service passes as `now_ms` to every time-dependent method: unix
  /// milliseconds. In memory: this machine's wall clock (std::chrono::system_clock). Redis: the
  /// Redis server's clock as the last SyncClock measured it (RedisClock, redis_clock.h), so
  /// coordinators sharing one Redis agree on every lease and mark whatever their own clocks say
  /// (docs/coordinator_redis.md, "Clocks"). No round trip; thread-safe.
  virtual std::int64_t NowMs() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
  }
  /// Measures the store's clock again (Redis: RedisClock::Sync, RedisClock::kSyncSamples TIME
  /// round trips); the connect function and then the reaper, every pass, call it. In memory:
  /// nothing. Errors (the last measurement is kept): kUnavailable (Redis unreachable, not
  /// ready, or answering too slowly for a useful measurement), kCorruptData (a reply that is not
  /// a time), kInternal (Redis refused TIME: the connect function then keeps the wall clock and
  /// later calls do nothing).
  virtual Status SyncClock() { return Status::Ok(); }

  /// One reaper pass: writes STALE for sources past stale_after, deletes sources
  /// past delete_after (in memory; Redis TTLs do it themselves) and expires
  /// members past member_expire_after (bumping their job's epoch).
  virtual Result<ReapStats> Reap(std::int64_t now_ms) = 0;
};

/// In-memory state (the default). Never returns kUnavailable.
std::unique_ptr<CoordinatorState> MakeInMemoryCoordinatorState(LeasePolicy policy);

/// Redis state. `url`: "redis://host:port[/db]". Connects and PINGs within
/// `connect_timeout_s`; every later command has the same bound and reconnects
/// once on a broken connection. Keys live under "shardwire:v1:".
/// Errors: kInvalidArgument (bad URL), kUnavailable (Redis unreachable).
Result<std::unique_ptr<CoordinatorState>> ConnectRedisCoordinatorState(const std::string& url, LeasePolicy policy,
                                                                       double connect_timeout_s = 5);

}  // namespace shardwire::control
