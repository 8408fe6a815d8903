// The coordinator: one service every trainer rank, inference rank and loading
// instance of a Shardwire deployment talks to (gRPC, proto/shardwire/v1/).
//
// It holds three kinds of state:
//   - a key-value rendezvous with bounded server-side waits (the Rendezvous
//     interface, rendezvous.h), where ranks exchange transport metadata;
//   - a registry of weight sources: every rank of a serving instance registers its
//     transport metadata blob, layout and model identity with a lease and
//     heartbeats; loaders list the READY sources of a model identity (P2P loading);
//   - jobs: the publishers and subscribers of an RL job, their membership (with a
//     membership epoch that changes whenever a member joins or leaves) and each
//     engine's committed weight version.
//
// Prior art: ModelExpress (gRPC server, Redis or Kubernetes state, sources
// READY/STALE with heartbeats and a reaper), Mooncake's metadata service, NIXL's
// etcd metadata. This is an independent design.
//
// State lives behind one interface with two implementations: in memory (the
// default, lost when the server stops) and Redis (survives coordinator restarts;
// several coordinators over one Redis serve one consistent state).
//
// Source states and leases: a source is READY while its last heartbeat is younger
// than `source_stale_after_s`; older than that it is STALE (ListSources reports it
// STALE even before the reaper wrote that down, so a lease expires even while no
// coordinator runs); a source whose last heartbeat is older than
// `source_delete_after_s` is gone (Redis key TTL, or the reaper in memory).
// MarkSourceStale makes a source STALE at once (a loader found it dead, stalled or
// serving bytes that failed their digest) until its next heartbeat; a mark with hold
// (the source itself reported CORRUPT: its bytes differ from its committed content) keeps
// it so for `source_mark_hold_s` however it heartbeats, and its first heartbeat after that
// makes it READY again. The source's heartbeat reply tells it of the mark (SourceHeartbeat).
//
// Times: seconds (double) in options; unix milliseconds (int64) in records, on the
// coordinator's clock: its wall clock in memory, the Redis server's with Redis (so every
// coordinator on one Redis agrees; docs/coordinator_redis.md, "Clocks").
#pragma once

#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "shardwire/rendezvous.h"
#include "shardwire/status.h"

namespace shardwire {

class MetricsRegistry;  // shardwire/metrics.h

/// Lifecycle state of a registered weight source.
enum class SourceState : std::uint8_t {
  kReady = 1,  ///< heartbeating; loaders may read from it
  kStale = 2,  ///< missed heartbeats or marked stale by a loader; not offered to loaders
};

/// "READY" or "STALE".
std::string_view SourceStateName(SourceState state);

/// What a source's heartbeat found (shardwire.v1.HeartbeatSourceResponse): whether a
/// loader's STALE mark was on the source when it arrived (one made since its previous
/// heartbeat, or a held one), and whether the mark still holds. A source learns this way that loaders found it stalled or its
/// bytes corrupt (a held mark: ModelLoader holds the mark of a source that itself reported
/// CORRUPT, its bytes differing from its committed content; a digest mismatch on the way
/// is marked without hold).
struct SourceHeartbeat {
  /// The state after the heartbeat: kReady, or kStale while a loader's held mark lasts
  /// (the coordinator's source_mark_hold_s after the mark).
  SourceState state = SourceState::kReady;
  /// The reason of the loader's mark the source carried when the heartbeat arrived
  /// (cleared by this heartbeat, or still holding it STALE); empty when it carried none.
  /// A lease that ran out between heartbeats is no mark; each mark is reported by the one
  /// heartbeat that finds it, and again by each later one while it holds. <= 4 KiB.
  std::string stale_reason;
};

/// One rank of a serving instance, registered as a weight source.
struct SourceRecord {
  /// "src-" + 16 lowercase hex digits, proposed by the caller, which makes the registration
  /// idempotent (a repeat with the same contents returns the stored record and renews its
  /// lease; other contents under a live record of the id: kAlreadyExists), so a call whose
  /// reply was lost is retried. Empty in CoordinatorClient::RegisterSource: the client draws
  /// one; a raw gRPC request without one gets one the coordinator draws (not idempotent).
  std::string source_id;
  /// What bytes the source holds (ModelIdentity digest, see the P2P loading
  /// workflow). Sources with equal identities hold equal tensors. 1..256 bytes.
  std::string model_identity;
  /// The serving instance this rank belongs to (all ranks of one instance share
  /// it). 1..256 bytes.
  std::string instance_id;
  int rank = 0;        ///< rank within the instance, in [0, world_size)
  int world_size = 1;  ///< ranks of the instance, >= 1
  /// The instance's layout string (as the CLI takes it, e.g. "tp=2"), <= 4 KiB.
  std::string layout;
  /// Digest of every shard's placement and buffer offset of this layout
  /// (hex), <= 256 bytes.
  std::string layout_fingerprint;
  /// The rank's transport metadata blob (Agent::ExportMetadata), <= 1 MiB.
  std::vector<std::byte> metadata;
  /// Free-form attributes (e.g. "region" -> "3", "weight_version" -> "17"),
  /// at most 64 entries, keys <= 256 bytes, values <= 4 KiB.
  std::map<std::string, std::string> attributes;
  // Set by the coordinator (ignored on input):
  SourceState state = SourceState::kReady;
  std::string stale_reason;                 ///< why it is STALE (empty when READY)
  /// When it was registered, unix ms on the coordinator's clock (with Redis: the Redis
  /// server's; docs/coordinator_redis.md, "Clocks").
  std::int64_t registered_unix_ms = 0;
  std::int64_t last_heartbeat_unix_ms = 0;  ///< last RegisterSource or HeartbeatSource, same clock
};

/// Role of a job member.
enum class JobRole : std::uint8_t {
  kPublisher = 1,   ///< a trainer rank (WeightPublisher)
  kSubscriber = 2,  ///< an inference engine rank (WeightSubscriber)
};

/// One member of an RL job.
struct JobMember {
  /// Unique within the job; chosen by the caller (e.g. "engine-1/rank-0"),
  /// 1..256 bytes. Joining with an id that is already a live member is
  /// kAlreadyExists unless the earlier member's lease expired.
  std::string member_id;
  JobRole role = JobRole::kSubscriber;
  /// Engine (replica) this rank belongs to, for subscribers; the trainer group
  /// for publishers. 0..256 bytes.
  std::string group;
  int rank = 0;        ///< rank within its group's layout
  int world_size = 1;  ///< ranks of its group
  std::string layout;  ///< the group's layout string, <= 4 KiB
  std::vector<std::byte> metadata;  ///< transport metadata blob, <= 1 MiB
  std::map<std::string, std::string> attributes;  ///< as SourceRecord::attributes
  // Set by the coordinator:
  std::uint64_t committed_version = 0;      ///< last CommitVersion (0: none)
  std::int64_t joined_unix_ms = 0;          ///< unix ms, the coordinator's clock (as SourceRecord's)
  std::int64_t last_heartbeat_unix_ms = 0;  ///< unix ms, the coordinator's clock
};

/// A job as the coordinator sees it.
struct JobView {
  std::string job;
  /// Incremented on every join and leave (and lease expiry); a publisher that
  /// saw epoch e re-plans when it sees a different one.
  std::uint64_t membership_epoch = 0;
  std::vector<JobMember> members;  ///< live members, sorted by member_id
};

/// Largest value (seconds) of every time option of CoordinatorClientOptions and
/// CoordinatorServerOptions: 1e9 s, about 31.7 years. A larger one would overflow the
/// int64 milliseconds and nanoseconds it becomes (a member_expire_after_s of 1e16 would
/// expire every member at once, a reaper_interval_s of 1e10 would run the reaper without
/// pause), so CoordinatorClient::Connect and CoordinatorServer::Start refuse it with
/// kInvalidArgument naming the option.
inline constexpr double kMaxCoordinatorTimeS = 1e9;

/// The environment variable a client reads its TLS root certificate file from when
/// CoordinatorClientOptions::tls_root_cert_file is empty.
inline constexpr const char* kTlsRootCertEnvironmentVariable = "SHARDWIRE_TLS_ROOT_CERT";

/// How a client reaches and authenticates to a coordinator.
struct CoordinatorClientOptions {
  /// "host:port" (IPv4, IPv6 in brackets, or a name).
  std::string address;
  /// Bearer token sent with every call. Empty: the SHARDWIRE_TOKEN environment
  /// variable if set (surrounding whitespace removed), else none. Visible ASCII only
  /// (0x21-0x7e; gRPC metadata): Connect refuses others with kInvalidArgument.
  std::string token;
  /// PEM file of the CA that signed the server's certificate (TLS). Empty: the file the
  /// SHARDWIRE_TLS_ROOT_CERT environment variable names (kTlsRootCertEnvironmentVariable; how
  /// the CLI's seed, load and demo commands and their workers reach a TLS coordinator), else
  /// plaintext. Connect refuses a file that is not a regular file of at most 1 MiB holding a PEM
  /// CERTIFICATE block with kInvalidArgument naming it. A plaintext client of a TLS coordinator
  /// sees its connections closed: kUnavailable ("Socket closed") after unavailable_timeout_s.
  std::string tls_root_cert_file;
  /// Seconds. Deadline of one RPC attempt (server-side waits add their own
  /// timeout on top). An attempt whose deadline passes is sent again, with twice
  /// this deadline, if the call is safe to repeat (Put, Get, Add, HeartbeatSource,
  /// ListSources, MarkSourceStale, HeartbeatMember, GetJob, CommitVersion): while
  /// unavailable_timeout_s has not passed since the call began, and once in any
  /// case, so that a caller stopped longer than the deadline (SIGSTOP, a debugger,
  /// a paused VM) is not failed by a deadline that passed while it was not running,
  /// nor a call to a coordinator that was stopped (which may judge a waiting request
  /// expired the moment it runs again). A coordinator that accepts connections but
  /// does not answer therefore fails those calls with kTimedOut after at most
  /// unavailable_timeout_s plus twice this deadline (at least two attempts: one
  /// deadline, then two). A call's own bound (timeout_s of the lease calls) caps
  /// every attempt. The other calls fail with kTimedOut at the first deadline (a
  /// repeat could register twice). > 0 and at most kMaxCoordinatorTimeS.
  double call_timeout_s = 10;
  /// Seconds. Total time a call keeps retrying a coordinator that cannot be
  /// reached (UNAVAILABLE), with bounded exponential backoff, before it fails
  /// with kUnavailable naming the address. >= 0 and at most kMaxCoordinatorTimeS.
  double unavailable_timeout_s = 15;
  /// Asked by Connect only, after each failed attempt to reach a coordinator that cannot be
  /// reached yet and at least every 0.1 s of the pauses between attempts (up to
  /// unavailable_timeout_s in all): a non-OK status ends Connect with that status, naming the
  /// address (the Python binding's hook runs Python's signal handlers, so Ctrl-C interrupts a
  /// client dialling a wrong address). An attempt in flight is not cut: with gRPC's own
  /// retries of it, under a second against an address that refuses connections, up to
  /// call_timeout_s against one that accepts but does not answer or drops the packets. Never
  /// called after Connect returns; the client keeps no copy. Empty: never interrupted.
  std::function<Status()> interrupt;
};

/// A connection to a coordinator. Implements Rendezvous (so WeightPublisher /
/// WeightSubscriber and barriers run over it) plus the source registry and jobs.
/// Every call has a deadline; transient failures (UNAVAILABLE, a coordinator
/// restart) are retried with bounded backoff, so with a Redis-backed
/// coordinator a restart is invisible to callers except as latency.
/// Errors common to every method: kUnavailable naming the address when the
/// coordinator cannot be reached within unavailable_timeout_s; kTimedOut naming
/// the address when it does not answer in time (see call_timeout_s), or when a
/// Redis-backed coordinator lost Redis's reply to a change it sent (the message says
/// whether it was applied is unknown; such a change is never repeated by the client
/// unless the call is safe to repeat); kUnauthenticated
/// for a missing or wrong token; kInvalidArgument for requests the server
/// refuses as malformed or oversized (the server's message is kept);
/// kFailedPrecondition from the state-bound methods once the state this client
/// joined is lost (see state_id()); kUnsupported when the coordinator does not
/// implement a method (UNIMPLEMENTED: an older coordinator); kCorruptData for
/// DATA_LOSS; kInternal for any other gRPC status.
/// Thread-safety: fully thread-safe; one client may be shared by all threads.
/// Fork: gRPC does not survive fork() without exec. A client used in a process forked from
/// the one that connected it fails every call with kFailedPrecondition at once (it waited
/// without end), and Connect in a process forked from one where gRPC ran fails alike; the
/// destructor of such an inherited client leaves its channel to the process's end.
class CoordinatorClient final : public Rendezvous {
 public:
  /// Creates the channel and checks the coordinator answers (one Ping) within
  /// unavailable_timeout_s. Errors: kInvalidArgument (empty address, no port or one outside
  /// 1..65535 in HOST:PORT, a timeout out of its range, naming the option; unreadable
  /// certificate file), kUnavailable,
  /// kUnauthenticated, kCorruptData (the Ping answer's state id is not 32 lowercase hex
  /// digits).
  static Result<std::unique_ptr<CoordinatorClient>> Connect(CoordinatorClientOptions options);
  ~CoordinatorClient() override;

  /// The address this client talks to.
  const std::string& address() const;
  /// The coordinator state this client joined (PingResponse.state_id at Connect: 32 hex
  /// digits; empty from a coordinator that predates state ids). Put, Get, Add and the job
  /// methods are bound to it: once the coordinator serves another state (an in-memory
  /// coordinator restarted, a Redis flushed or restarted without persistence) they fail with
  /// kFailedPrecondition saying the state is lost, at once, instead of waiting for keys that
  /// are gone. The source-registry methods are not bound (a source whose heartbeat gets
  /// kNotFound registers again). Connect a new client to join the new state.
  const std::string& state_id() const;

  // Rendezvous (contracts in rendezvous.h). Get waits on the server side, in
  // slices of at most 5 s, so no single RPC outlives its deadline; a coordinator that
  // accepts a slice but does not answer it fails Get with kUnavailable ("did not answer",
  // naming the address; not the kTimedOut of a key that did not appear, so a caller
  // polling a key in slices stops) once two attempts in a row went unanswered, the resend
  // a full attempt (at least call_timeout_s + the slice, so that a pause of this process
  // alone is not taken for silence): within the slice + max(call_timeout_s,
  // unavailable_timeout_s) + call_timeout_s + the slice again, whatever timeout_s is (+inf
  // included). A Get's value travels within
  // call_timeout_s: values beyond call_timeout_s x 4 MB/s (40 MB by default) over a slower link need a larger one.
  Status Put(const std::string& key, std::span<const std::byte> value) override;
  Result<std::vector<std::byte>> Get(const std::string& key, double timeout_s) override;
  Result<std::int64_t> Add(const std::string& key, std::int64_t delta) override;

  /// Registers a source (fields the coordinator sets are ignored) and returns
  /// the stored record with its source_id. `timeout_s` as for HeartbeatSource.
  /// The registration is made under a proposed source_id ("src-" and 16 lowercase
  /// hex digits): the record's, or one this client draws at random when it is
  /// empty. Under it a repeat is idempotent, so an attempt whose reply was lost
  /// (a passed deadline, a dropped connection) is sent again within the bound and
  /// never leaves a second record.
  /// Errors: kInvalidArgument (limits above, rank outside [0, world_size), a
  /// timeout_s that is not > 0, a malformed proposed id); kAlreadyExists when
  /// a live record of the proposed id has other contents; as HeartbeatSource
  /// for the bound.
  Result<SourceRecord> RegisterSource(const SourceRecord& record,
                                      double timeout_s = std::numeric_limits<double>::infinity());
  /// Renews a source's lease and makes a STALE source READY again, unless a loader's held
  /// mark still holds it STALE; returns what the heartbeat found (SourceHeartbeat: the
  /// state after it and the reason of a loader's mark the source carried). A coordinator
  /// older than that reply field gives kReady and no reason.
  /// `timeout_s`: seconds the whole call may take, retries included (> 0; +inf: bounded
  /// by unavailable_timeout_s and call_timeout_s alone), so a heartbeat thread or a
  /// shutdown never waits longer than its owner allows. Of a heartbeat resent after a
  /// lost reply, the reply of the attempt that answered is returned: a mark the lost
  /// attempt cleared is then not reported.
  /// Errors: kNotFound when the source was deleted (register again); kUnavailable or
  /// kTimedOut naming the address when `timeout_s` runs out; kInvalidArgument for a
  /// timeout_s that is not > 0; kCorruptData for a reply whose reason is over 4 KiB (a
  /// state this client does not know reads as kReady: the lease was renewed).
  Result<SourceHeartbeat> HeartbeatSource(const std::string& source_id,
                                          double timeout_s = std::numeric_limits<double>::infinity());
  /// Sources of `model_identity` (every identity when empty), filtered by
  /// state when given, sorted by (instance_id, rank). Errors: kInvalidArgument when
  /// more than 100,000 match (the server's RESOURCE_EXHAUSTED: filter by identity);
  /// kCorruptData naming the Redis key of a record that cannot be read.
  Result<std::vector<SourceRecord>> ListSources(const std::string& model_identity,
                                                std::optional<SourceState> state);
  /// Marks a source STALE with a reason: until its next heartbeat, or with `hold` for the
  /// coordinator's source_mark_hold_s whatever its heartbeats say (a loader holds the mark
  /// of a source whose bytes failed their digest, not of one that stalled: the stall may be
  /// the loader's own). Errors: kNotFound.
  Status MarkSourceStale(const std::string& source_id, const std::string& reason, bool hold = false);
  /// Removes a source. `timeout_s` as for HeartbeatSource.
  /// Errors: kNotFound (not when an earlier attempt of this call, whose reply was
  /// lost, may have removed it: then Ok); as HeartbeatSource for the bound.
  Status DeregisterSource(const std::string& source_id,
                          double timeout_s = std::numeric_limits<double>::infinity());

  /// Adds a member to `job` (created on first join); returns the stored member
  /// and the new membership epoch. An attempt that failed as unavailable may have
  /// joined before its reply was lost: when the attempt sent again is refused
  /// because the member id is live, the job is read and a member holding exactly
  /// what was sent counts as this join (its view is returned). Errors:
  /// kAlreadyExists (a live member id with other contents), kInvalidArgument.
  Result<JobView> JoinJob(const std::string& job, const JobMember& member);
  /// Renews a member's lease (members whose heartbeat is older than the
  /// server's member_expire_after_s leave the job). Errors: kNotFound.
  Status HeartbeatMember(const std::string& job, const std::string& member_id);
  /// Removes a member. Errors: kNotFound (not when an earlier attempt of this call,
  /// whose reply was lost, may have removed it: then Ok).
  Status LeaveJob(const std::string& job, const std::string& member_id);
  /// The job's live members and epoch. Errors: kNotFound for an unknown job.
  Result<JobView> GetJob(const std::string& job);
  /// Records that subscriber `member_id` committed `version`.
  /// Errors: kNotFound; kFailedPrecondition when `version` is below the
  /// member's committed version (versions never go backwards; equal is a no-op).
  Status CommitVersion(const std::string& job, const std::string& member_id, std::uint64_t version);

 private:
  struct Impl;
  explicit CoordinatorClient(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

/// Options of a coordinator server (`shardwire serve`, or embedded in a demo).
struct CoordinatorServerOptions {
  /// "host:port"; port 0 picks a free port (see CoordinatorServer::port()).
  std::string listen_address = "127.0.0.1:0";
  /// Empty: in-memory state. Otherwise "redis://host:port[/db]" (Redis >= 6).
  std::string redis_url;
  /// Bearer token every call must carry; empty: no authentication. Visible ASCII only
  /// (0x21-0x7e): Start refuses others with kInvalidArgument.
  std::string token;
  /// PEM certificate chain and private key; both empty: plaintext. Start refuses a file
  /// without a PEM CERTIFICATE / PRIVATE KEY block with kInvalidArgument naming it; a pair
  /// gRPC cannot use is the kIoError of a failed listen (gRPC logs why).
  std::string tls_cert_file;
  std::string tls_key_file;
  /// Seconds without heartbeat after which a source is STALE (ModelExpress: 30 s
  /// heartbeats, STALE at 90 s; ours are shorter because a dead source on a
  /// fabric is a failed load). Every time below (seconds) is > 0 and at most
  /// kMaxCoordinatorTimeS; Start refuses others with kInvalidArgument naming the option.
  double source_stale_after_s = 10;
  /// Seconds without heartbeat after which a source is deleted (>= source_stale_after_s).
  double source_delete_after_s = 60;
  /// Seconds a loader's MarkSourceStale with hold (a source whose bytes failed their
  /// digest) keeps a source STALE whatever its heartbeats (and repeated registrations) say,
  /// so the next loads do not try it again at once; the first heartbeat after the hold
  /// makes it READY again. Marks without hold (stalls, failed reads) last until the next
  /// heartbeat. 0: no hold. At least 0 and at most kMaxCoordinatorTimeS, else Start
  /// refuses it with kInvalidArgument.
  double source_mark_hold_s = 30;
  /// Seconds without heartbeat after which a job member leaves its job.
  double member_expire_after_s = 10;
  /// Seconds between reaper passes. (The coordinator's clock, with Redis the Redis server's, is
  /// measured again every min(reaper_interval_s, 1) seconds; docs/coordinator_redis.md, "Clocks".)
  double reaper_interval_s = 1;
  /// With Redis: microseconds the heartbeat thread polls for Redis's reply to a
  /// heartbeat round before it sleeps in read() (saves a sleep and a wake-up
  /// per round, costs at most this much CPU per round; docs/coordinator.md).
  /// 0 (the default) turns it off: on a CPU-saturated machine it cost the
  /// Redis-backed coordinator its 10,000 heartbeats/s (docs/benchmarks_history.md).
  /// At most 10,000 (kInvalidArgument beyond).
  int redis_reply_spin_us = 0;
  /// Where the coordinator reports its metrics (requests by method and status code, sources
  /// by state: docs/metrics.md); must outlive the server. nullptr: no metrics (no interceptor
  /// installed, nothing computed). Errors at Start: kAlreadyExists when the registry already
  /// holds another coordinator's metrics.
  MetricsRegistry* metrics = nullptr;
};

/// A running coordinator (gRPC server + state + reaper thread). Destroying it
/// stops the server (in-flight calls get UNAVAILABLE or CANCELLED).
/// Thread-safety: the object itself is not used concurrently; the service it
/// runs is fully concurrent.
class CoordinatorServer {
 public:
  /// Binds, connects the state (Redis: PING within 5 s) and starts serving.
  /// Errors: kInvalidArgument (bad address or options, e.g. a time out of its range,
  /// naming the option; unreadable TLS files),
  /// kIoError naming the address when the port is in use, kUnavailable naming
  /// the Redis URL.
  static Result<std::unique_ptr<CoordinatorServer>> Start(CoordinatorServerOptions options);
  ~CoordinatorServer();
  CoordinatorServer(const CoordinatorServer&) = delete;
  CoordinatorServer& operator=(const CoordinatorServer&) = delete;

  int port() const;                    ///< the bound port
  std::string address() const;         ///< "host:port" clients can dial
  /// The id of the state served now (32 hex digits; what clients see as
  /// CoordinatorClient::state_id). New at every in-memory start; with Redis the id stored
  /// there, re-read every reaper pass. Thread-safe.
  std::string state_id() const;
  /// Stops serving; in-flight calls get `grace_s` seconds to finish, then are cancelled.
  /// Idempotent. In a process forked from the one that started it (without exec), Shutdown
  /// and the destructor leave it alone: it serves on in the parent (gRPC's threads are not in
  /// the child, and a shutdown there closed the parent's listening socket).
  void Shutdown(double grace_s = 1);

  struct Impl;

 private:
  explicit CoordinatorServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace shardwire
