#include <algorithm>
#include <chrono>
#include <map>
#include <set>

#include <fmt/format.h>

#include "shardwire/planner.h"
#include "shardwire/weight_sync.h"
#include "workflows/membership.h"
#include "workflows/push_digest.h"
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
  int serving = 0;                // double-buffered: which buffer holds committed_version (0 = endpoint.weights)
  bool updating = false;          // between BeginUpdate and the end of WaitForUpdate
  std::uint64_t incarnation = 0;  // dynamic membership
  bool joined = false;
  std::int64_t join_request = 0;  // filed and not yet answered
  std::string plan_signature;     // trainers must have the same (SyncPlanSignature)
  // verify_digests: per source rank, the moves it writes here, in the order it hashes them.
  std::map<int, std::vector<Move>> digest_moves;
  std::map<std::string, int> source_rank_of;  // agent name -> trainer rank
  sync::Inbox inbox;

  std::span<std::byte> Buffer(int b) const { return b == 0 ? endpoint.weights : endpoint.second_weights; }
};

WeightSubscriber::WeightSubscriber(std::unique_ptr<State> state) : state_(std::move(state)) {}
WeightSubscriber::~WeightSubscriber() {
  if (state_ && state_->joined) (void)Leave();  // best effort: the trainers skip the slot from their next push
}

Result<std::unique_ptr<WeightSubscriber>> WeightSubscriber::Create(Rendezvous& rendezvous, const Layout& trainer_layout,
                                                                   const Layout& engine_layout, int rank,
                                                                   WeightSyncOptions options) {
  if (rank < 0 || rank >= engine_layout.world_size()) {
    return InvalidArgument(fmt::format("engine rank {} is outside layout {} of {} ranks", rank,
                                       engine_layout.description(), engine_layout.world_size()));
  }
  // The same conversion the publishers derive (a plain plan when the dtypes agree).
  SW_ASSIGN_OR_RETURN(const PushConversion conversion,
                      PushConversion::Create(trainer_layout, engine_layout, options.conversion,
                                             PlanOptions{.max_concurrency = options.max_concurrency}));
  auto state = std::make_unique<State>();
  state->rendezvous = &rendezvous;
  state->options = std::move(options);
  state->rank = rank;
  state->sources = conversion.SourcesOf(rank);
  if (state->options.verify_digests) {
    // The direct moves in plan order, then each conversion round's: the order the trainer hashes.
    auto mine = [&](const TransferPlan& plan, const Move& m) {
      const auto& group = plan.dst_groups()[m.dst_group];
      return std::find(group.begin(), group.end(), static_cast<std::uint32_t>(rank)) != group.end();
    };
    for (int src : state->sources) {
      std::vector<Move>& moves = state->digest_moves[src];
      for (const Move& m : conversion.direct_plan().MovesFrom(src))
        if (mine(conversion.direct_plan(), m)) moves.push_back(m);
      if (conversion.converts()) {
        SW_ASSIGN_OR_RETURN(const TrainerConversion tc, conversion.ForTrainerRank(src));
        for (const ConversionRound& round : tc.rounds)
          for (const Move& m : round.moves)
            if (mine(conversion.converted_plan(), m)) moves.push_back(m);
      }
    }
  }
  state->bytes_per_update = conversion.BytesTo(rank);
  if (state->options.dynamic_membership) {
    // Taken before the metadata is published, so a trainer that sees this incarnation's
    // join request finds this process's metadata (or a later one's) under the rank's key.
    SW_ASSIGN_OR_RETURN(const std::int64_t incarnation,
                        rendezvous.Add(sync::IncarnationKey(state->options.job, rank), 1));
    state->incarnation = static_cast<std::uint64_t>(incarnation);
  }
  state->plan_signature = sync::SyncPlanSignature(trainer_layout, engine_layout, state->options);
  SW_RETURN_IF_ERROR(
      sync::PublishPlanSignature(rendezvous, state->options.job, kEngineRole, rank, state->plan_signature));
  SW_ASSIGN_OR_RETURN(
      state->endpoint,
      sync::OpenRankEndpoint(rendezvous, state->options.job, kEngineRole, rank, engine_layout.rank(rank).buffer_bytes,
                             state->options.buffer, state->options.double_buffered, state->options.second_buffer));
  return std::unique_ptr<WeightSubscriber>(new WeightSubscriber(std::move(state)));
}

std::span<std::byte> WeightSubscriber::weights() { return state_->Buffer(state_->serving); }
std::span<std::byte> WeightSubscriber::back_buffer() {
  return state_->options.double_buffered ? state_->Buffer(1 - state_->serving) : state_->Buffer(0);
}
std::uint64_t WeightSubscriber::committed_version() const { return state_->committed_version; }
std::uint64_t WeightSubscriber::incarnation() const { return state_->incarnation; }

Result<std::uint64_t> WeightSubscriber::Join(double timeout_s) {
  State& s = *state_;
  if (!s.options.dynamic_membership) return InvalidArgument("WeightSubscriber::Join without dynamic membership");
  if (s.source_names.size() != s.sources.size()) return InvalidArgument("WeightSubscriber::Join before Connect");
  const std::string who =
      fmt::format("engine rank {} (incarnation {}) joining job {}", s.rank, s.incarnation, s.options.job);
  if (!s.joined || s.join_request == 0) {
    SW_ASSIGN_OR_RETURN(s.join_request,
                        sync::FileMembershipRequest(*s.rendezvous, s.options.job, s.rank, s.incarnation));
    s.joined = true;
  }
  auto version = sync::AwaitAdmission(*s.rendezvous, s.options.job, s.rank, s.incarnation, s.join_request,
                                      timeout_s < 0 ? s.options.timeout_s : timeout_s);
  if (!version.ok()) return version.status().WithContext(who);  // the request stands: Join may wait again
  s.join_request = 0;  // answered: the next Join (after a missed version) files a new one
  if (*version <= s.committed_version) {
    return FailedPrecondition(fmt::format("{}: admitted at version {}, not above its committed version {}", who,
                                          *version, s.committed_version));
  }
  return *version;
}

Status WeightSubscriber::Leave() {
  State& s = *state_;
  if (!s.options.dynamic_membership) return InvalidArgument("WeightSubscriber::Leave without dynamic membership");
  s.joined = false;
  return sync::FileMembershipRequest(*s.rendezvous, s.options.job, s.rank, 0).status();
}

Status WeightSubscriber::AdoptVersion(std::uint64_t version) {
  State& s = *state_;
  if (s.updating)
    return FailedPrecondition(fmt::format("AdoptVersion({}) during the update of v{}", version, s.begun_version));
  if (version <= s.committed_version) {
    return FailedPrecondition(
        fmt::format("AdoptVersion({}): not above the committed version {}", version, s.committed_version));
  }
  s.committed_version = version;
  return Status::Ok();
}

Status WeightSubscriber::Connect() {
  State& s = *state_;
  for (int src : s.sources) {
    SW_ASSIGN_OR_RETURN(const sync::PeerRank peer,
                        sync::ImportPeerRank(*s.rendezvous, *s.endpoint.agent, s.options.job, kTrainerRole, src,
                                             s.options.timeout_s, s.options.interrupt, kInterruptPollSeconds));
    SW_RETURN_IF_ERROR(sync::CheckPeerPlanSignature(*s.rendezvous, s.options.job, kTrainerRole, src, s.plan_signature,
                                                    s.options.timeout_s));
    s.source_names.insert(peer.name);
    s.source_rank_of[peer.name] = src;
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
  sync::Message ready_message{sync::MessageKind::kReady, version};
  if (s.options.double_buffered) ready_message.buffer = static_cast<std::uint8_t>(1 - s.serving);
  const auto ready = sync::Encode(ready_message);
  for (const std::string& name : s.source_names) {
    SW_RETURN_IF_ERROR(s.endpoint.agent->SendMessage(name, ready)
                           .WithContext(fmt::format("engine rank {} READY v{}", s.rank, version)));
  }
  s.begun_version = version;
  s.begun_at = std::chrono::steady_clock::now();
  s.updating = true;
  return Status::Ok();
}

Result<UpdateStats> WeightSubscriber::WaitForUpdate(std::uint64_t version) {
  State& s = *state_;
  if (version != s.begun_version) {
    return InvalidArgument(fmt::format("WaitForUpdate({}) without BeginUpdate({})", version, version));
  }
  std::map<std::string, sync::Message> done;
  const Status arrived =
      s.inbox.AwaitFromAll(*s.endpoint.agent, sync::MessageKind::kDone, version, s.source_names, s.options.timeout_s,
                           &done, sync::MessageKind::kMissed, s.options.interrupt);
  s.updating = false;
  if (!arrived.ok()) {
    return arrived.WithContext(fmt::format("engine rank {} update v{}", s.rank, version));
  }
  if (s.options.verify_digests) {
    // What landed, hashed as each source hashed what it sent; v is committed only if all agree.
    const std::span<std::byte> written = s.options.double_buffered ? s.Buffer(1 - s.serving) : s.Buffer(0);
    for (const auto& [name, message] : done) {
      sync::PushDigest landed;
      landed.Add(written.data(), s.digest_moves.at(s.source_rank_of.at(name)), sync::MoveSide::kDestination);
      if (!message.digest) {
        return VerificationFailed(
            fmt::format("engine rank {} update v{}: {} sent DONE without a digest", s.rank, version, name));
      }
      if (*message.digest != landed.value()) {
        return VerificationFailed(
            fmt::format("engine rank {} update v{}: the bytes from {} differ from what it sent (digest {:016x} sent, "
                        "{:016x} landed); v{} is not committed, the engine keeps v{}",
                        s.rank, version, name, *message.digest, landed.value(), version, s.committed_version));
      }
    }
  }
  s.committed_version = version;
  if (s.options.double_buffered) s.serving = 1 - s.serving;  // the new version is served from now on
  UpdateStats stats;
  stats.version = version;
  stats.bytes = s.bytes_per_update;
  stats.sources = static_cast<int>(s.sources.size());
  stats.wait_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - s.begun_at).count();
  return stats;
}

}  // namespace shardwire
