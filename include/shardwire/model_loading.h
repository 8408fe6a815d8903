// P2P model loading: a new inference instance pulls its weights from instances that
// already serve the same model, whatever their tensor-parallel layouts, and falls
// back to the checkpoint on disk when no usable source exists.
//
//   serving instance rank (ModelSource)        new instance rank (ModelLoader)
//   -----------------------------------        -------------------------------
//   registers {identity, layout, fingerprint,  lists READY sources of its identity
//     metadata blob, region} with a lease      groups them by instance; compares each
//   heartbeats on a thread                       instance's layout fingerprint with the
//                                                one it computes itself (no descriptor
//                                                before that); a mismatch skips the
//                                                instance (it stays READY)
//                                              plans its shards from every usable
//                                                instance (PlanTransfer per instance)
//                                                and splits the bytes evenly among them
//   serves one-sided READs (transport)  <----  posts READs (Agent, kRead)
//   answers digest requests: xxh3 of   <----   per move: xxh3 over where the bytes
//     the served ranges (+ a check of            landed; mismatch -> re-read elsewhere
//     its buffer against the digests           dead / stalled source -> re-plan its
//     recorded when it started serving)          missing bytes from the others, then
//                                                mark it STALE with the reason
//                                              nothing usable -> checkpoint on disk
//                                              commit only when every byte is verified
//
// One ModelSource / ModelLoader serves one rank; an engine runs one per rank and
// process. Design, protocol and failure handling: docs/p2p_loading.md.
//
// Thread-safety: ModelSource runs two threads of its own (heartbeat, serving) and is
// otherwise not used concurrently; ModelLoader is used by one thread at a time. During
// Load a ModelLoader re-lists the registry and marks failed sources STALE on helper
// threads (so a slow or vanished coordinator never stalls the transfers); Load waits
// for the marks at its end for at most 2 s (not after an interrupt or load_timeout_s),
// and the loader's destructor (and the next Load) for every listing and mark still in
// flight (each registry call at most its own timeout; a failed instance of n ranks is
// marked in n calls).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "shardwire/agent.h"
#include "shardwire/layout.h"
#include "shardwire/model_description.h"
#include "shardwire/model_identity.h"
#include "shardwire/source_registry.h"
#include "shardwire/status.h"

namespace shardwire {

/// Attribute keys a ModelSource sets on its SourceRecord.
inline constexpr const char* kSourceAttrRegion = "region";             ///< region id of the shard buffer
inline constexpr const char* kSourceAttrStructure = "structure";       ///< ModelIdentity::StructureDigest()
inline constexpr const char* kSourceAttrRevision = "revision";         ///< ModelIdentity::revision
inline constexpr const char* kSourceAttrBandwidthCap = "bandwidth";    ///< bytes/s cap, "0" = none
inline constexpr const char* kSourceAttrBufferBytes = "buffer_bytes";  ///< rank buffer size, bytes
/// CheckpointRevision ("xxh3:...") of the checkpoint the served bytes equal, when the
/// source knows it (absent otherwise). Lets a loader check a disk fallback checkpoint
/// when the identity's revision is a user string.
inline constexpr const char* kSourceAttrContent = "content";

/// Construction options of a ModelSource.
struct ModelSourceOptions {
  /// The serving instance this rank belongs to (all ranks share it), 1..256 bytes.
  std::string instance_id;
  /// Rank within the instance's layout, in [0, world size).
  int rank = 0;
  /// The instance's layout string (MakeLayoutFromString), e.g. "tp=2".
  std::string layout;
  /// Seconds between heartbeats (> 0 and at most 86400; well below the coordinator's
  /// source_stale_after_s, default 10 s). A heartbeat answered kNotFound (the record
  /// was deleted, or an in-memory coordinator was restarted and lost it) registers
  /// the source again under the same source_id and logs a warning, so loaders find it
  /// again within about one interval of the coordinator's return. Each heartbeat, and
  /// each such re-registration, gives up after max(2 x heartbeat_interval_s, 1 s)
  /// when the coordinator does not answer (the next interval tries again); the first
  /// failed heartbeat after a success, and the recovery, are logged as warnings.
  double heartbeat_interval_s = 1;
  /// Seconds the destructor spends at most deregistering (>= 0 and finite; 0 skips it);
  /// also the bound of the deregistration after a registration that failed kUnavailable
  /// or kTimedOut (Create, Serve, BecomeSource).
  /// With an unreachable coordinator the record is left to its lease: STALE after the
  /// coordinator's source_stale_after_s, so loaders stop choosing it, then deleted. The
  /// destructor's whole wait on the coordinator is at most this plus two heartbeat
  /// bounds (a heartbeat and a re-registration in flight on the heartbeat thread).
  double shutdown_timeout_s = 2;
  /// Bytes per second this rank serves at most (0: unlimited). Models a source NIC
  /// on one host where memory bandwidth is shared: readers take a lease for each
  /// move (LEASE -> GRANT), the source grants one reader at a time, the loader
  /// instance of the lowest lease priority first (ModelLoaderOptions::lease_priority),
  /// and a grant lasts bytes / cap seconds even when the bytes arrived sooner; it
  /// ends then (or at the reader's RELEASE, if sooner), and the source grants the next
  /// waiting reader. Advertised to loaders in the record's "bandwidth" attribute.
  /// Finite and >= 0 (kInvalidArgument otherwise).
  double bandwidth_bytes_per_s = 0;
  /// CheckpointRevision of the checkpoint whose bytes this source serves ("xxh3:" +
  /// 32 hex), advertised as the "content" attribute; empty: unknown (not advertised).
  /// Needed only when identity.revision is a user string: loaders then compare a
  /// disk-fallback checkpoint with it. BecomeSource fills it from the loader.
  std::string content_revision;
  /// Create only: after `fill`, the buffer is made read-only (mprotect PROT_READ):
  /// no write from this process (a stray write faults instead of corrupting what
  /// loaders read) and none by kernel copy from another (process_vm_writev fails).
  /// The source then answers a digest request for parts of a 1 MiB block by hashing
  /// the parts alone, without re-hashing the whole block against its committed digest
  /// (no write can have changed it); a verify request still hashes every block.
  /// Row-parallel moves are all parts of blocks: the source then hashes their bytes
  /// once instead of once plus a whole-block check per request that touches the
  /// block (three passes for a tp=2 -> tp=4 load; docs/benchmarks_history.md, "P2P load on a
  /// host with cheap page faults").
  /// false: the buffer stays writable (e.g. Python hands out writable tensor views of
  /// it) and every part's block is checked, as for Serve. Serve and BecomeSource
  /// never protect the caller's memory.
  bool read_only_buffer = true;
  /// Agent options; name and lanes are filled in when empty / 0.
  AgentOptions agent = {};
  /// For failure tests only: the source adds 1 to every digest it reports, as if
  /// the bytes had changed on the way (the loader must re-read elsewhere).
  bool test_lie_about_digests = false;
};

/// A serving instance's rank, registered as a weight source. Created over a shard
/// buffer it fills (Create) or over a ModelLoader's committed buffer
/// (ModelLoader::BecomeSource). While it lives it heartbeats, serves READs of its
/// buffer and answers HELLO / digest / lease requests; destruction deregisters it
/// (best effort), stops its threads and releases the agent (loaders mid-read see
/// the peer disconnect and re-plan).
class ModelSource {
 public:
  /// Allocates the rank's buffer (layout.rank(rank).buffer_bytes bytes) as an
  /// agent arena in private huge pages (ArenaMemory::kPrivateHugePages: same-host
  /// loaders read it by kernel copy, others through UCX), calls `fill` on it (e.g.
  /// LoadShardsFromCheckpoint), makes it read-only (options.read_only_buffer),
  /// records the digests of its content (xxh3 per 1 MiB block), registers with
  /// `registry` and starts serving. `registry` must outlive the source.
  /// Errors: kInvalidArgument (bad options, rank out of range, a layout string the
  /// model cannot take); fill's error; the agent's and the registry's errors. A
  /// registration that failed kUnavailable or kTimedOut (the coordinator may have stored
  /// it before its reply was lost) is deregistered, best effort within
  /// options.shutdown_timeout_s (0: not), so loaders do not list a source that never served
  /// (a Register attempt still in flight can land after it: that record is left to its
  /// lease); with the coordinator down that adds up to shutdown_timeout_s to the failure.
  static Result<std::unique_ptr<ModelSource>> Create(SourceRegistry& registry, const ModelDescription& model,
                                                     const ModelIdentity& identity, ModelSourceOptions options,
                                                     const std::function<Status(std::span<std::byte>)>& fill);
  /// Serves weights the caller already holds, in its own memory (e.g. an engine's
  /// committed weights): registers the first layout.rank(rank).buffer_bytes bytes of
  /// `buffer` (which must be at least that long, laid out by that rank's Layout) with a new
  /// agent in place (no copy; bytes past them are neither registered nor readable by
  /// loaders), records the
  /// digests of its content and registers with `registry`. The caller must keep `buffer`
  /// valid and unwritten until the source is destroyed: a write makes digest requests
  /// report the touched blocks as corrupt, and loaders re-read those bytes elsewhere.
  /// Errors: as Create, plus kInvalidArgument when `buffer` is smaller than the rank's
  /// buffer.
  static Result<std::unique_ptr<ModelSource>> Serve(SourceRegistry& registry, const ModelDescription& model,
                                                    const ModelIdentity& identity, ModelSourceOptions options,
                                                    std::span<std::byte> buffer);
  /// Stops heartbeating, deregisters (bounded by options.shutdown_timeout_s; a failure is
  /// logged, not thrown; serving goes on meanwhile, so no loader lists a source that no
  /// longer answers), then stops serving. The buffer and the
  /// agent stay until destruction: loaders mid-read get no more digest or lease
  /// answers and re-plan after their stall timeout, and memory the caller still reads
  /// (the Python views of it) stays valid. Idempotent. Call from one thread (not
  /// concurrently with itself or the destructor); blocks up to about
  /// shutdown_timeout_s + one heartbeat interval.
  void Stop();
  /// Stop(), then releases the agent and its buffer (loaders mid-read see the peer
  /// disconnect and re-plan at once).
  ~ModelSource();
  ModelSource(const ModelSource&) = delete;
  ModelSource& operator=(const ModelSource&) = delete;

  /// The coordinator's id of this source (kept when it has to register again).
  std::string source_id() const;
  /// The shard buffer (the instance's weights for this rank). After Create it is
  /// read-only unless options.read_only_buffer was false (a write then makes digest
  /// requests report the touched blocks as corrupt).
  std::span<std::byte> buffer() const;
  /// Moves served so far (digest requests answered), bytes those requests covered
  /// (whole 1 MiB blocks are answered from the digests recorded at commit, unhashed).
  std::uint64_t digests_served() const;
  std::uint64_t bytes_digested() const;
  /// What the last heartbeat that found a loader's mark on this source found: the
  /// source's state after that heartbeat (kStale while a held mark lasts: this source
  /// reported CORRUPT to a loader, its bytes differing from its committed content) and the
  /// mark's reason; nullopt while no heartbeat has
  /// found one. When a later heartbeat finds a held mark gone, `state` turns kReady. Each
  /// new mark, and the end of a hold, is also logged as a warning. Thread-safe.
  std::optional<SourceHeartbeat> last_mark() const;
  /// How many heartbeats found a loader's mark (a held mark counts at every heartbeat it
  /// holds). Thread-safe.
  std::uint64_t marks_seen() const;

  struct Impl;

 private:
  friend class ModelLoader;
  // Serves `region` of `agent` (the rank's buffer of `layout`): records block
  // digests, registers, starts the threads. `read_only`: the buffer cannot be written
  // (Create protected it), so parts of blocks are served without checking the block.
  // `agent` is moved from only on success: on an error it is left with the caller.
  static Result<std::unique_ptr<ModelSource>> Start(SourceRegistry& registry, std::unique_ptr<Agent>& agent,
                                                    RegionId region, std::span<std::byte> buffer, const Layout& layout,
                                                    const ModelIdentity& identity, ModelSourceOptions options,
                                                    bool read_only = false);
  explicit ModelSource(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

/// The smallest ModelLoaderOptions::stall_timeout_s (seconds). A source that does not answer
/// within the bound is marked STALE for every loader, so a bound below what a healthy source
/// on a loaded host needs (scheduling, a UCX wire-up: tens of milliseconds) would take
/// healthy sources out of service; a loader looping with such a bound kept a fleet from loading.
inline constexpr double kMinStallTimeoutSeconds = 0.1;

/// Options of one rank's load.
struct ModelLoaderOptions {
  /// The new instance's id (becomes its instance_id when it serves), its layout
  /// string and this rank.
  std::string instance_id;
  std::string layout;
  int rank = 0;
  /// Content revision wanted. Empty: the one revision of this model structure the
  /// registry offers (kFailedPrecondition listing them when several are served);
  /// with none served and a checkpoint given, CheckpointRevision of it.
  std::string revision;
  /// Checkpoint (file, index or directory) for the disk fallback; empty: none.
  /// Before a single byte of it is used, its CheckpointRevision is compared with the
  /// content of the identity being loaded: the revision itself when it is a
  /// CheckpointRevision ("xxh3:..."), else the "content" attribute the sources of the
  /// identity advertise (the one most instances advertise; instances advertising another are
  /// skipped with kVerificationFailed; on a tie for the most this checkpoint's revision decides,
  /// computed then, and without a checkpoint no instance advertising a content is used). A
  /// checkpoint of another revision fails the load with
  /// kFailedPrecondition naming both (never a silent load of other bytes). With a user
  /// revision and no source advertising its content, the checkpoint cannot be checked:
  /// it is trusted when `revision` names that revision (the caller paired them), and
  /// refused with kFailedPrecondition when the revision was taken from the sources
  /// (`revision` empty: nothing ties the checkpoint to it). Computing the revision reads the whole
  /// checkpoint once (~0.1 s per GB warm), only when the fallback is used. The fallback reads
  /// exactly the bytes no source gave, straight into the buffer (ShardReadOptions::only); it
  /// and the revision check ask `load_timeout_s` before they start and then every 64 MiB
  /// (kInterruptCheckBytes; the hash also every tensor), `interrupt` at those points at most
  /// every 0.1 s. The deadline covers them: a load from a cold disk of a checkpoint larger
  /// than load_timeout_s allows (it is read twice when its revision must be checked) needs a
  /// larger load_timeout_s.
  std::string checkpoint_path;
  /// Seconds a move may take without progress (READ not complete, digest or
  /// HELLO not answered, lease not acknowledged) before its source is declared
  /// dead or stalled and its bytes are re-planned from the other sources. The READs in
  /// flight from one source rank share its link and one deadline: stall_timeout_s plus
  /// 1 s per 10 MB of all their bytes, moved out as each is posted. Counted
  /// while the loader runs: a pause of the loader itself or a stall of its agent's
  /// lanes (LoadReport::paused_seconds) does not count against its sources.
  /// >= kMinStallTimeoutSeconds; +inf (or anything beyond 1e9 s): never.
  double stall_timeout_s = 3;
  /// Seconds a whole load may take before it fails with kTimedOut (not committed),
  /// counted from the start of Load, the disk fallback included. > 0; +inf (or anything
  /// beyond 1e9 s): never.
  double load_timeout_s = 600;
  /// Largest move (bytes): the unit of reading, digest verification and re-reading.
  std::uint64_t move_bytes = 16ull << 20;  ///< > 0 (kInvalidArgument otherwise)
  /// Use at most this many instances (0: all usable ones; >= 0).
  int max_instances = 0;
  /// Seconds between re-listings of the registry while some bytes still wait for
  /// a source (queued, or waiting for a bandwidth lease): instances that became
  /// READY since the load began take a share of those bytes (a fleet doubles its
  /// sources each round). 0: list once.
  double relist_interval_s = 0.2;
  /// Order in which bandwidth-capped sources grant leases to loader instances: lower
  /// first, ties by instance id, then by arrival. Every rank of one instance must pass
  /// the same value (e.g. the instance's start time in ms since the Unix epoch), so
  /// that every source rank of every source agrees on one order and serves one loader
  /// instance after another (a loader whose ranks are first at one source rank but
  /// last at another would finish only with the last). 0: the Unix time in ms when
  /// this rank's loader was created. Must be >= 0 (kInvalidArgument otherwise).
  std::int64_t lease_priority = 0;
  /// Seconds of a capped source's bandwidth one move asks for (moves from a source
  /// with a bandwidth cap are cut to cap x lease_seconds bytes, at least 64 KiB (or
  /// move_bytes when smaller), at most move_bytes): the granularity at which sources
  /// re-apply the priority order.
  /// Must be > 0 (kInvalidArgument).
  double lease_seconds = 0.2;
  /// Agent options; name and lanes are filled in when empty / 0.
  AgentOptions agent = {};
  /// Where to load: the caller's memory (e.g. the engine's own weights), registered in
  /// place, at least the rank's buffer_bytes; it must stay valid while the loader (or the
  /// source it becomes) lives. Empty: an arena the loader allocates (private huge-page
  /// memory, ArenaMemory::kPrivateHugePages: same-host sources are read into it by kernel
  /// copy, ReadPath::kAuto; docs/p2p_loading.md, "Memory and page faults").
  std::span<std::byte> buffer = {};
  /// Interruption hook (e.g. Python's Ctrl-C): when set, Load calls it on its own
  /// thread about every 0.1 s (kInterruptPollSeconds in weight_sync.h) while it
  /// transfers or reads a disk fallback (at its start, then every 64 MiB); a non-OK
  /// status it returns stops the load (outstanding READs are cancelled, sources are
  /// told BYE, nothing is committed) and Load returns that status. Load may then be
  /// called again and starts over.
  std::function<Status()> interrupt = {};
  /// Where this rank reports its metrics (docs/metrics.md): load durations (seconds,
  /// histogram), loads by result, bytes by origin, and its agent's bytes and transfers by
  /// peer (also when agent.metrics is null). Must outlive the loader and the source it
  /// becomes. nullptr: no metrics.
  MetricsRegistry* metrics = nullptr;
};

/// What a load did.
struct LoadReport {
  std::string identity;                                     ///< ModelIdentity digest loaded
  std::uint64_t buffer_bytes = 0;                           ///< this rank's buffer, bytes
  std::uint64_t bytes_from_sources = 0;                     ///< verified bytes read from peers
  std::uint64_t bytes_from_disk = 0;                        ///< bytes read from the checkpoint
  std::map<std::string, std::uint64_t> bytes_per_instance;  ///< instance_id -> bytes
  std::vector<std::string> skipped;                         ///< instances skipped, with the reason
  std::vector<std::string> failed;                          ///< instances that failed mid-load, with the reason
  std::uint64_t moves = 0;                                  ///< moves verified
  std::uint64_t rereads = 0;                                ///< moves re-planned after a failure or mismatch
  std::uint64_t replans = 0;                                ///< waiting bytes re-split because new instances appeared
  double seconds = 0;                                       ///< wall time of Load, seconds
  double digest_seconds = 0;                                ///< of which hashing landed bytes, seconds
  /// Phases of Load, wall seconds (for profiling; they add up to about `seconds`):
  /// resolving the identity and listing and vetting the sources (coordinator calls,
  /// layout fingerprints, coverage plans); from then until the first READ was posted
  /// (metadata import, HELLO round trips); from then until the last move was verified
  /// (READs, digests on both sides, re-reads); the disk fallback and the commit.
  double list_seconds = 0;
  double handshake_seconds = 0;
  double transfer_seconds = 0;
  double finish_seconds = 0;
  /// Seconds this loader itself did not run while it waited for its sources (its
  /// process stopped, traced, or starved of CPU: gaps of more than 0.5 s between two
  /// turns of its loop, which otherwise take milliseconds), or its agent's lanes were
  /// held up while its loop ran (Agent::LaneStallSeconds; the larger of the two where
  /// both were). Every stall deadline moved by such a gap, so no source is declared
  /// stalled, re-read elsewhere or marked STALE for the loader's own pause.
  double paused_seconds = 0;
};

/// A new instance's rank loading its shards.
class ModelLoader {
 public:
  /// Builds the rank's layout (MakeLayoutFromString), creates the agent and
  /// allocates the rank's buffer as a private huge-page arena, zero-filled (or registers
  /// options.buffer, whose padding between shards is zeroed), page tables populated for
  /// writing; shard bytes are unspecified until Load commits.
  /// Nothing is read yet.
  /// Errors: kInvalidArgument (layout, rank, empty instance id, options.buffer too
  /// small, stall_timeout_s below kMinStallTimeoutSeconds, load_timeout_s not > 0, move_bytes 0, a negative
  /// lease_priority, lease_seconds not finite and > 0); agent errors.
  static Result<std::unique_ptr<ModelLoader>> Create(SourceRegistry& registry, const ModelDescription& model,
                                                     ModelLoaderOptions options);
  ~ModelLoader();
  ModelLoader(const ModelLoader&) = delete;
  ModelLoader& operator=(const ModelLoader&) = delete;

  /// Loads every byte of this rank's shards and commits. Order of work: list the
  /// READY sources of the identity; group by instance (instances missing a rank
  /// are skipped); for each instance compute its layout from its layout string and
  /// compare fingerprints (a mismatch, or an unparsable layout, skips the instance
  /// with a kLayoutMismatch reason listing the first differences, obtained from the
  /// source with a HELLO; the source is NOT marked STALE); split the bytes among the
  /// usable instances, read, verify, re-plan on failures (a dead or stalled source
  /// is marked STALE with the reason only after its bytes were re-planned, off the
  /// transfer loop: see the thread-safety note above); what no
  /// source can give comes from the checkpoint. Never commits a partial load.
  /// Errors (buffer then not loaded): kNotFound when no source serves the identity
  /// and there is no checkpoint; kFailedPrecondition when the fallback checkpoint is
  /// of another revision (see checkpoint_path); kUnavailable when every source failed and there is
  /// no checkpoint; kFailedPrecondition for an ambiguous revision; kTimedOut after
  /// load_timeout_s; checkpoint errors (kNotFound, kLayoutMismatch); kInvalidArgument
  /// when called again after a commit or after BecomeSource; the interrupt hook's status
  /// when it fires. (kNotFound also when sources were listed but every instance was
  /// skipped, e.g. all of other layouts' fingerprints failing, and there is no checkpoint.)
  Result<LoadReport> Load();

  /// True once Load committed.
  bool loaded() const;
  /// The rank's buffer (valid while the loader or the source it became lives).
  std::span<std::byte> buffer() const;
  /// The layout of the new instance.
  const Layout& layout() const;
  /// The identity loaded (valid after a successful Load).
  const ModelIdentity& identity() const;

  /// Turns the committed buffer into a source (no copy: the arena and the agent move
  /// into the source). The loader is empty afterwards. `options.instance_id`,
  /// `rank`, `layout` and `content_revision` (when the load learned it) are taken from
  /// the loader when empty.
  /// Errors: kFailedPrecondition when not loaded; those of ModelSource::Create
  /// (bad options, the registry unreachable). On an error nothing moved: the loader
  /// keeps its committed buffer and agent (loaded() stays true, buffer() and the
  /// memory behind it stay valid), and BecomeSource may be called again.
  Result<std::unique_ptr<ModelSource>> BecomeSource(ModelSourceOptions options = {});

  struct Impl;

 private:
  explicit ModelLoader(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace shardwire
