#include <chrono>
#include <set>

#include <fmt/format.h>

#include "shardwire/planner.h"
#include "shardwire/weight_sync.h"
#include "workflows/rank_endpoint.h"
#include "workflows/sync_messages.h"

namespace shardwire {

namespace {
constexpr const char* kTrainerRole = "trainer";
constexpr const char* kEngineRole = "engine";
}  // namespace

struct WeightSubscriber::State {
  Rendezvous* rendezvous = nullptr;
  WeightSyncOptions options;
  int rank = 0;
  sync::RankEndpoint endpoint;
  std::vector<int> sources;
  std::uint64_t bytes_per_update = 0;
  std::set<std::string> source_names;
  std::uint64_t begun_version = 0;
  std::chrono::steady_clock::time_point begun_at;
  std::uint64_t committed_version = 0;
  sync::Inbox inbox;
};

WeightSubscriber::WeightSubscriber(std::unique_ptr<State> state) : state_(std::move(state)) {}
WeightSubscriber::~WeightSubscriber() = default;

Result<std::unique_ptr<WeightSubscriber>> WeightSubscriber::Create(Rendezvous& rendezvous, const Layout& trainer_layout,
                                                                   const Layout& engine_layout, int rank,
                                                                   WeightSyncOptions options) {
  if (rank < 0 || rank >= engine_layout.world_size()) {
    return InvalidArgument(fmt::format("engine rank {} is outside layout {} of {} ranks", rank,
                                       engine_layout.description(), engine_layout.world_size()));
  }
  SW_ASSIGN_OR_RETURN(const TransferPlan plan, PlanTransfer(trainer_layout, engine_layout));
  auto state = std::make_unique<State>();
  state->rendezvous = &rendezvous;
  state->options = std::move(options);
  state->rank = rank;
  state->sources = plan.SourcesOf(rank);
  for (const Move& m : plan.MovesTo(rank)) state->bytes_per_update += m.bytes();
  SW_ASSIGN_OR_RETURN(state->endpoint,
                      sync::OpenRankEndpoint(rendezvous, state->options.job, kEngineRole, rank,
                                             engine_layout.rank(rank).buffer_bytes, state->options.buffer));
  return std::unique_ptr<WeightSubscriber>(new WeightSubscriber(std::move(state)));
}

std::span<std::byte> WeightSubscriber::weights() { return state_->endpoint.weights; }
std::uint64_t WeightSubscriber::committed_version() const { return state_->committed_version; }

Status WeightSubscriber::Connect() {
  State& s = *state_;
  for (int src : s.sources) {
    SW_ASSIGN_OR_RETURN(const sync::PeerRank peer, sync::ImportPeerRank(*s.rendezvous, *s.endpoint.agent, s.options.job,
                                                                        kTrainerRole, src, s.options.timeout_s));
    s.source_names.insert(peer.name);
  }
  return Status::Ok();
}

Status WeightSubscriber::BeginUpdate(std::uint64_t version) {
  State& s = *state_;
  if (s.source_names.size() != s.sources.size()) return InvalidArgument("WeightSubscriber::BeginUpdate before Connect");
  if (version <= s.committed_version) {
    return InvalidArgument(
        fmt::format("version {} is not newer than the committed version {}", version, s.committed_version));
  }
  const auto ready = sync::Encode({sync::MessageKind::kReady, version});
  for (const std::string& name : s.source_names) {
    SW_RETURN_IF_ERROR(s.endpoint.agent->SendMessage(name, ready)
                           .WithContext(fmt::format("engine rank {} READY v{}", s.rank, version)));
  }
  s.begun_version = version;
  s.begun_at = std::chrono::steady_clock::now();
  return Status::Ok();
}

Result<UpdateStats> WeightSubscriber::WaitForUpdate(std::uint64_t version) {
  State& s = *state_;
  if (version != s.begun_version) {
    return InvalidArgument(fmt::format("WaitForUpdate({}) without BeginUpdate({})", version, version));
  }
  SW_RETURN_IF_ERROR(
      s.inbox.AwaitFromAll(*s.endpoint.agent, sync::MessageKind::kDone, version, s.source_names, s.options.timeout_s)
          .WithContext(fmt::format("engine rank {} update v{}", s.rank, version)));
  s.committed_version = version;
  UpdateStats stats;
  stats.version = version;
  stats.bytes = s.bytes_per_update;
  stats.sources = static_cast<int>(s.sources.size());
  stats.wait_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - s.begun_at).count();
  return stats;
}

}  // namespace shardwire
