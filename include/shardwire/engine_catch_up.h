// Catch-up of RL engines that join late or restart (WeightSyncOptions::dynamic_membership):
// every engine rank serves the versions it committed as P2P weight sources (ModelSource over
// its own buffers, no copy), and a new engine process loads the latest committed version
// from them with the P2P loader (ModelLoader, shardwire/model_loading.h) before it joins the
// push. The bytes come from live engines, not from the trainers and not from disk, so a
// restart costs the trainers nothing and the new engine serves a recent version at once;
// the next push then rewrites every byte (every push writes every byte).
//
// Naming: version v of job J is the content revision "J@v<v>" of the engine model's identity
// (ModelIdentity over the engine format, e.g. FP8 weights and scales); each engine replica is
// one source instance "J/replica-<d>" whose layout is one replica's layout (the engine layout
// without dp=). The loader groups sources by instance and uses only complete ones: catch-up
// needs another replica whose ranks all serve the version (with dp=1 a restarting rank leaves
// its own replica incomplete, and the engine starts from what the caller loaded instead).
//
// Why pushes are held: a live engine withdraws version v as soon as it commits v+1
// (double-buffered: v's buffer is the one v+2 lands in, and the engine declares READY for v+2
// right after committing v+1), and creating a source per version, listing it, importing
// its metadata and reading it takes a new process longer than one push of a small model (or
// of a large one on a loaded host). So the catch-up first asks the trainers to hold their pushes
// (CatchUpOptions::hold, WeightSubscriber::HoldPushes): once trainer rank 0 sees the hold no push
// starts until this process joins (or the hold runs out after the trainers' catch_up_hold_s), so
// the version the live engines serve stays served while it is read. Trainer rank 0 acknowledges
// the hold with the last version it pushed (WeightSubscriber::AwaitHold); the catch-up waits until
// a replica serves that version whole and loads it, and its join admits it at the next push.
// Healthy engines never stop serving; the trainers wait at most catch_up_hold_s.
//
// Thread-safety: CommittedVersionSources is used by one thread (the engine's update loop);
// CatchUpFromLiveEngines is reentrant.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "shardwire/model_description.h"
#include "shardwire/model_loading.h"
#include "shardwire/source_registry.h"
#include "shardwire/status.h"
#include "shardwire/weight_sync.h"

namespace shardwire {

/// Where an engine rank of an RL job sits: its replica and its rank within the replica.
struct EngineReplica {
  std::string job;
  std::string layout;  ///< one replica's layout string (the engine layout without dp=), e.g. "tp=2"
  int replica = 0;     ///< which replica (engine rank / ranks per replica)
  int rank = 0;        ///< rank within the replica
};

/// Locates `engine_rank` of `engine_layout` (a layout string, e.g. "tp=2,dp=3").
/// Errors: kInvalidArgument for a layout string the model cannot take or a rank outside it.
Result<EngineReplica> LocateEngineRank(const ModelDescription& engine_model, const std::string& job,
                                       const std::string& engine_layout, int engine_rank);

/// The content revision of version `version` of `job`: "<job>@v<version>".
std::string CommittedVersionRevision(const std::string& job, std::uint64_t version);

/// Serves an engine rank's committed versions to engines that catch up. At most two
/// versions are served at once (the committed one and, double-buffered, the previous one
/// while its buffer is not written).
class CommittedVersionSources {
 public:
  /// `registry` must outlive this object. Nothing is served until Publish.
  /// `bandwidth_bytes_per_s` > 0 caps what each served version gives loaders
  /// (ModelSourceOptions::bandwidth_bytes_per_s: for tests and demos that need a slow catch-up).
  CommittedVersionSources(SourceRegistry& registry, ModelDescription engine_model, EngineReplica where,
                          double bandwidth_bytes_per_s = 0);
  ~CommittedVersionSources();
  CommittedVersionSources(const CommittedVersionSources&) = delete;
  CommittedVersionSources& operator=(const CommittedVersionSources&) = delete;

  /// Serves `buffer` (the rank's buffer, holding committed `version` and not written until
  /// Withdraw(buffer)) as that version: a new ModelSource over it (an agent, the buffer
  /// registered in place, xxh3 digests of its content: about one pass over the buffer). A
  /// version already served from another buffer is replaced.
  /// Errors: those of ModelSource::Serve (the engine goes on; only catch-up is affected).
  Status Publish(std::uint64_t version, std::span<std::byte> buffer);

  /// Stops serving whatever lies in `buffer`. Call before an update writes it
  /// (BeginUpdate, with the subscriber's back_buffer()); loaders reading it then re-read
  /// elsewhere or try a later version.
  void Withdraw(std::span<const std::byte> buffer);

  /// The versions served now, oldest first.
  std::vector<std::uint64_t> versions() const;

 private:
  SourceRegistry* registry_;
  ModelDescription model_;
  EngineReplica where_;
  double bandwidth_bytes_per_s_ = 0;
  struct Served {
    std::uint64_t version;
    const std::byte* buffer;
    std::unique_ptr<ModelSource> source;
  };
  std::vector<Served> served_;
};

/// What a catch-up did.
struct CatchUpReport {
  std::uint64_t version = 0;          ///< version loaded; 0 when no live engine serves one (nothing loaded)
  LoadReport load;                    ///< the successful load (bytes per instance, bytes_from_disk = 0, ...)
  int attempts = 0;                   ///< loads tried (a version withdrawn mid-load is retried with a later one)
  std::vector<std::string> failures;  ///< why earlier attempts failed, and versions skipped as incomplete
  bool held = false;                  ///< the pushes were held (CatchUpOptions::hold) during the catch-up
  /// With held: the last version pushed before trainer rank 0 honoured the hold (0: it had not
  /// started a push since, within hold_ack_wait_s).
  std::uint64_t held_version = 0;
};

/// How a catch-up goes about it.
struct CatchUpOptions {
  /// Loads tried at most, each of the newest version some other replica serves whole (the same
  /// version again after a failure while it stays the newest: a stall under load).
  int max_attempts = 4;
  /// Seconds to wait, listing again about every 10 ms, while other replicas serve versions but
  /// none is complete yet (their ranks still committing), or, under a hold, while the held
  /// version is not yet served whole (then the newest whole one is loaded).
  double wait_s = 10;
  /// With hold: seconds to wait for trainer rank 0 to honour the hold (WeightSubscriber::
  /// AwaitHold) before the first load. It answers when it next starts a push (at once when the
  /// trainers push back to back); no answer means no push is starting, so the newest version
  /// stays served anyway.
  double hold_ack_wait_s = 1;
  /// This engine process's subscriber (dynamic membership): when set, the catch-up first asks
  /// the trainers to hold their pushes until it joins (WeightSubscriber::HoldPushes). The
  /// caller must then Join (or Leave, or destroy the subscriber) after the catch-up, whatever
  /// its result, to end the hold (it also runs out after the trainers' catch_up_hold_s).
  /// nullptr: no hold (the catch-up races the pushes).
  WeightSubscriber* hold = nullptr;
  /// Per load (ModelLoaderOptions): no-progress bound and whole-load bound, seconds.
  double stall_timeout_s = 2;
  double load_timeout_s = 60;
};

/// Loads into `buffer` (this engine rank's buffer, laid out by engine layout `where` is a
/// rank of; the caller's memory, registered in place) the latest version that live engines of
/// `where.job` serve, with the P2P loader, every move digest-verified. With options.hold it
/// first holds the trainers' pushes and learns the version the hold keeps (held_version),
/// which it waits for and loads. Only versions that some other replica serves whole (every
/// rank of it READY) are tried, the newest first; when a load fails (the version was withdrawn
/// as the next push began, sources died) it lists again, up to options.max_attempts loads in
/// all, waiting up to options.wait_s for a whole version. Returns version 0 at once (nothing loaded, buffer untouched)
/// when no other replica serves any version. `incarnation` makes the loader's instance id unique. Errors (the buffer's
/// content is then unspecified: load it from elsewhere): kUnavailable listing every attempt's failure (and incomplete
/// versions) when none succeeded; registry errors; kInvalidArgument (buffer too small); HoldPushes' errors; AwaitHold's
/// errors other than kTimedOut; ModelLoader::Create's errors.
Result<CatchUpReport> CatchUpFromLiveEngines(SourceRegistry& registry, const ModelDescription& engine_model,
                                             const EngineReplica& where, std::uint64_t incarnation,
                                             std::span<std::byte> buffer, const CatchUpOptions& options = {});

}  // namespace shardwire
