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
// needs one replica whose ranks all serve the version (with dp=1 a restarting rank leaves
// its own replica incomplete, and the engine starts from what the caller loaded instead).
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
  CommittedVersionSources(SourceRegistry& registry, ModelDescription engine_model, EngineReplica where);
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
  LoadReport load;                    ///< the successful load (bytes per instance, seconds, ...)
  int attempts = 0;                   ///< loads tried (a version withdrawn mid-load is retried with a later one)
  std::vector<std::string> failures;  ///< why earlier attempts failed
};

/// Loads into `buffer` (this engine rank's buffer, laid out by engine layout `where` is a
/// rank of; the caller's memory, registered in place) the latest version that live engines of
/// `where.job` serve, with the P2P loader, every move digest-verified. Tries the newest
/// version first; when a load fails (the version was withdrawn as the next push began,
/// sources died) it lists again, up to `max_attempts` loads in all. `incarnation` makes the
/// loader's instance id unique. Errors (the buffer's content is then unspecified: load it
/// from elsewhere): kUnavailable listing every attempt's failure when none succeeded;
/// registry errors; kInvalidArgument (buffer too small).
Result<CatchUpReport> CatchUpFromLiveEngines(SourceRegistry& registry, const ModelDescription& engine_model,
                                             const EngineReplica& where, std::uint64_t incarnation,
                                             std::span<std::byte> buffer, int max_attempts = 4);

}  // namespace shardwire
