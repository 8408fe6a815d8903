#include "shardwire/engine_catch_up.h"

#include <algorithm>
#include <charconv>
#include <set>

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

// Versions of `job` that READY sources of `structure` serve, newest first.
Result<std::vector<std::uint64_t>> ServedVersions(SourceRegistry& registry, const std::string& structure,
                                                  const std::string& job) {
  SW_ASSIGN_OR_RETURN(const std::vector<SourceRecord> all, registry.ListSources("", SourceState::kReady));
  const std::string prefix = job + "@v";
  std::set<std::uint64_t, std::greater<>> versions;
  for (const SourceRecord& r : all) {
    auto s = r.attributes.find(kSourceAttrStructure);
    auto v = r.attributes.find(kSourceAttrRevision);
    if (s == r.attributes.end() || s->second != structure || v == r.attributes.end()) continue;
    if (v->second.rfind(prefix, 0) != 0) continue;
    std::uint64_t version = 0;
    const char* begin = v->second.data() + prefix.size();
    const char* end = v->second.data() + v->second.size();
    if (std::from_chars(begin, end, version).ptr == end && version > 0) versions.insert(version);
  }
  return std::vector<std::uint64_t>(versions.begin(), versions.end());
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
                                                 EngineReplica where)
    : registry_(&registry), model_(std::move(engine_model)), where_(std::move(where)) {}

CommittedVersionSources::~CommittedVersionSources() = default;

Status CommittedVersionSources::Publish(std::uint64_t version, std::span<std::byte> buffer) {
  std::erase_if(served_, [&](const Served& s) { return s.version == version || s.buffer == buffer.data(); });
  SW_ASSIGN_OR_RETURN(const ModelIdentity identity,
                      MakeModelIdentity(model_, CommittedVersionRevision(where_.job, version)));
  ModelSourceOptions options;
  options.instance_id = fmt::format("{}/replica-{}", where_.job, where_.replica);
  options.rank = where_.rank;
  options.layout = where_.layout;
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
                                             std::span<std::byte> buffer, int max_attempts) {
  CatchUpReport report;
  SW_ASSIGN_OR_RETURN(const ModelIdentity any, MakeModelIdentity(engine_model, "structure"));
  const std::string structure = any.StructureDigest();
  std::set<std::uint64_t> tried;
  while (report.attempts < max_attempts) {
    SW_ASSIGN_OR_RETURN(const std::vector<std::uint64_t> versions, ServedVersions(registry, structure, where.job));
    auto next = std::find_if(versions.begin(), versions.end(), [&](std::uint64_t v) { return !tried.count(v); });
    if (next == versions.end()) {
      if (report.attempts == 0) return report;  // nobody serves a version: nothing to catch up from
      break;
    }
    const std::uint64_t version = *next;
    tried.insert(version);
    ++report.attempts;
    ModelLoaderOptions options;
    options.instance_id = fmt::format("{}/replica-{}/catch-up-{}", where.job, where.replica, incarnation);
    options.layout = where.layout;
    options.rank = where.rank;
    options.revision = CommittedVersionRevision(where.job, version);
    options.buffer = buffer;
    options.relist_interval_s = 0;  // a version's sources do not multiply during its short life
    options.stall_timeout_s = 2;
    options.load_timeout_s = 60;
    SW_ASSIGN_OR_RETURN(auto loader, ModelLoader::Create(registry, engine_model, options));
    auto load = loader->Load();
    if (load.ok()) {
      report.version = version;
      report.load = std::move(*load);
      return report;
    }
    report.failures.push_back(fmt::format("v{}: {}", version, load.status().ToString()));
  }
  std::string why;
  for (const std::string& f : report.failures) why += (why.empty() ? "" : "; ") + f;
  return Unavailable(
      fmt::format("engine rank {} of replica {} of job {}: no catch-up load succeeded in {} attempts: {}", where.rank,
                  where.replica, where.job, report.attempts, why));
}

}  // namespace shardwire
