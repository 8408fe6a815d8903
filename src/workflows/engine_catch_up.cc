#include "shardwire/engine_catch_up.h"

#include <algorithm>
#include <charconv>
#include <chrono>
#include <map>
#include <set>
#include <thread>

#include <fmt/format.h>

#include "shardwire/model_identity.h"
#include "shardwire/model_layouts.h"

namespace shardwire {

namespace {

// The engine layout string without its dp= part: one replica's layout.
std::string ReplicaLayoutString(const std::string& engine_layout) {
  std::string out;
  std::size_t at = 0;
  while (at <= engine_layout.size()) {
    const std::size_t comma = std::min(engine_layout.find(',', at), engine_layout.size());
    const std::string part = engine_layout.substr(at, comma - at);
    if (!part.empty() && part.rfind("dp=", 0) != 0) out += (out.empty() ? "" : ",") + part;
    at = comma + 1;
  }
  return out;
}

// Parses the version out of revision "<job>@v<N>"; 0 when it is not one of `job`.
std::uint64_t VersionOf(const std::string& revision, const std::string& job) {
  const std::string prefix = job + "@v";
  if (revision.rfind(prefix, 0) != 0) return 0;
  std::uint64_t version = 0;
  const char* begin = revision.data() + prefix.size();
  const char* end = revision.data() + revision.size();
  return std::from_chars(begin, end, version).ptr == end ? version : 0;
}

// The versions of where.job that READY sources of `structure` in replicas other than where.replica
// serve: per version, whether some instance serves it whole (every rank READY), else a note
// of how incomplete the best instance is.
struct ServedVersion {
  bool complete = false;
  std::string incomplete;  // e.g. "1 of 2 ranks of catch/replica-0 serve it"
};

Result<std::map<std::uint64_t, ServedVersion, std::greater<>>> ServedVersions(SourceRegistry& registry,
                                                                             const std::string& structure,
                                                                             const EngineReplica& where) {
  SW_ASSIGN_OR_RETURN(const std::vector<SourceRecord> all, registry.ListSources("", SourceState::kReady));
  const std::string own = fmt::format("{}/replica-{}", where.job, where.replica);
  // version -> instance -> (world size, ranks READY)
  std::map<std::uint64_t, std::map<std::string, std::pair<int, std::set<int>>>> seen;
  for (const SourceRecord& r : all) {
    auto s = r.attributes.find(kSourceAttrStructure);
    auto v = r.attributes.find(kSourceAttrRevision);
    if (s == r.attributes.end() || s->second != structure || v == r.attributes.end()) continue;
    // This rank's own replica cannot be whole without this rank (a READY record of it is the
    // dead predecessor's, not yet stale).
    if (r.instance_id == own) continue;
    const std::uint64_t version = VersionOf(v->second, where.job);
    if (version == 0) continue;
    auto& [world, ranks] = seen[version][r.instance_id];
    world = r.world_size;
    ranks.insert(r.rank);
  }
  std::map<std::uint64_t, ServedVersion, std::greater<>> out;
  for (const auto& [version, instances] : seen) {
    ServedVersion& sv = out[version];
    std::size_t best = 0;
    for (const auto& [instance, wr] : instances) {
      const auto& [world, ranks] = wr;
      if (static_cast<int>(ranks.size()) >= world) sv.complete = true;
      if (ranks.size() >= best) {
        best = ranks.size();
        sv.incomplete = fmt::format("{} of {} ranks of {} serve it", ranks.size(), world, instance);
      }
    }
  }
  return out;
}

}  // namespace

Result<EngineReplica> LocateEngineRank(const ModelDescription& engine_model, const std::string& job,
                                       const std::string& engine_layout, int engine_rank) {
  SW_ASSIGN_OR_RETURN(const Layout whole, MakeLayoutFromString(engine_model, engine_layout));
  EngineReplica where;
  where.job = job;
  where.layout = ReplicaLayoutString(engine_layout);
  if (where.layout.empty()) where.layout = "tp=1";
  SW_ASSIGN_OR_RETURN(const Layout replica, MakeLayoutFromString(engine_model, where.layout));
  const int per_replica = replica.world_size();
  if (engine_rank < 0 || engine_rank >= whole.world_size() || whole.world_size() % per_replica != 0) {
    return InvalidArgument(fmt::format("engine rank {} of layout {} ({} ranks, {} per replica of {})", engine_rank,
                                       engine_layout, whole.world_size(), per_replica, where.layout));
  }
  where.replica = engine_rank / per_replica;
  where.rank = engine_rank % per_replica;
  return where;
}

std::string CommittedVersionRevision(const std::string& job, std::uint64_t version) {
  return fmt::format("{}@v{}", job, version);
}

CommittedVersionSources::CommittedVersionSources(SourceRegistry& registry, ModelDescription engine_model,
                                                 EngineReplica where, double bandwidth_bytes_per_s)
    : registry_(&registry),
      model_(std::move(engine_model)),
      where_(std::move(where)),
      bandwidth_bytes_per_s_(bandwidth_bytes_per_s) {}

CommittedVersionSources::~CommittedVersionSources() = default;

Status CommittedVersionSources::Publish(std::uint64_t version, std::span<std::byte> buffer) {
  std::erase_if(served_, [&](const Served& s) { return s.version == version || s.buffer == buffer.data(); });
  SW_ASSIGN_OR_RETURN(const ModelIdentity identity,
                      MakeModelIdentity(model_, CommittedVersionRevision(where_.job, version)));
  ModelSourceOptions options;
  options.instance_id = fmt::format("{}/replica-{}", where_.job, where_.replica);
  options.rank = where_.rank;
  options.layout = where_.layout;
  options.bandwidth_bytes_per_s = bandwidth_bytes_per_s_;
  SW_ASSIGN_OR_RETURN(auto source, ModelSource::Serve(*registry_, model_, identity, options, buffer));
  served_.push_back({version, buffer.data(), std::move(source)});
  while (served_.size() > 2) served_.erase(served_.begin());
  return Status::Ok();
}

void CommittedVersionSources::Withdraw(std::span<const std::byte> buffer) {
  std::erase_if(served_, [&](const Served& s) { return s.buffer == buffer.data(); });
}

std::vector<std::uint64_t> CommittedVersionSources::versions() const {
  std::vector<std::uint64_t> out;
  for (const Served& s : served_) out.push_back(s.version);
  return out;
}

Result<CatchUpReport> CatchUpFromLiveEngines(SourceRegistry& registry, const ModelDescription& engine_model,
                                             const EngineReplica& where, std::uint64_t incarnation,
                                             std::span<std::byte> buffer, const CatchUpOptions& options) {
  using Clock = std::chrono::steady_clock;
  CatchUpReport report;
  SW_ASSIGN_OR_RETURN(const ModelIdentity any, MakeModelIdentity(engine_model, "structure"));
  const std::string structure = any.StructureDigest();
  const std::string who =
      fmt::format("engine rank {} of replica {} of job {}", where.rank, where.replica, where.job);
  {
    SW_ASSIGN_OR_RETURN(const auto served, ServedVersions(registry, structure, where));
    if (served.empty()) return report;  // nobody else serves a version: nothing to catch up from
  }
  if (options.hold != nullptr) {
    // From here on at most the push already started completes: the newest version stays served.
    SW_RETURN_IF_ERROR(options.hold->HoldPushes());
    report.held = true;
    auto held = options.hold->AwaitHold(options.hold_ack_wait_s);
    if (held.ok()) {
      report.held_version = *held;
    } else if (held.status().code() != ErrorCode::kTimedOut) {
      return held.status();
    }  // else no push started meanwhile: the newest version stays until one does (and honours the hold)
  }
  const auto deadline = Clock::now() + std::chrono::duration<double>(options.wait_s);
  std::map<std::uint64_t, std::string> incomplete;  // versions not seen whole, with the last note
  while (report.attempts < options.max_attempts) {
    if (report.held && report.held_version == 0) {
      if (auto held = options.hold->AwaitHold(0); held.ok()) report.held_version = *held;
    }
    SW_ASSIGN_OR_RETURN(const auto served, ServedVersions(registry, structure, where));
    std::uint64_t version = 0;
    for (const auto& [v, sv] : served) {
      if (!sv.complete) {
        incomplete[v] = sv.incomplete;
        continue;
      }
      version = v;
      break;
    }
    // Under a hold the version to load is the held one: an older one is about to be withdrawn
    // (its engines are committing the held push), so wait for the held one unless time is up.
    const bool early = report.held_version > 0 && version < report.held_version;
    if (version == 0 || (early && Clock::now() < deadline)) {
      if (Clock::now() >= deadline) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      continue;
    }
    incomplete.erase(version);
    ++report.attempts;
    ModelLoaderOptions lo;
    lo.instance_id = fmt::format("{}/replica-{}/catch-up-{}", where.job, where.replica, incarnation);
    lo.layout = where.layout;
    lo.rank = where.rank;
    lo.revision = CommittedVersionRevision(where.job, version);
    lo.buffer = buffer;
    lo.relist_interval_s = 0;  // a version's sources do not multiply during its short life
    lo.stall_timeout_s = options.stall_timeout_s;
    lo.load_timeout_s = options.load_timeout_s;
    SW_ASSIGN_OR_RETURN(auto loader, ModelLoader::Create(registry, engine_model, lo));
    auto load = loader->Load();
    if (load.ok()) {
      report.version = version;
      report.load = std::move(*load);
      for (const auto& [v, note] : incomplete) {
        if (v > version) report.failures.push_back(fmt::format("v{}: skipped, {}", v, note));
      }
      return report;
    }
    // The same version is tried again while it stays the newest whole one (a stall under load);
    // a withdrawn one is no longer listed.
    report.failures.push_back(fmt::format("v{}: {}", version, load.status().ToString()));
  }
  for (const auto& [v, note] : incomplete) {
    if (v > report.held_version || report.held_version == 0)
      report.failures.push_back(fmt::format("v{}: never whole, {}", v, note));
  }
  std::string why;
  for (const std::string& f : report.failures) why += (why.empty() ? "" : "; ") + f;
  return Unavailable(fmt::format("{}: no catch-up load succeeded in {} attempts{}: {}", who, report.attempts,
                                 report.held ? " (pushes held)" : "", why.empty() ? "nothing whole to load" : why));
}

}  // namespace shardwire
