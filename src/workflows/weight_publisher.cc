#include <chrono>
#include <map>
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
using Clock = std::chrono::steady_clock;
double Seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }
}  // namespace

struct WeightPublisher::State {
  Rendezvous* rendezvous = nullptr;
  WeightSyncOptions options;
  int rank = 0;
  sync::RankEndpoint endpoint;
  std::map<int, std::vector<Move>> moves_by_destination;
  std::uint64_t bytes_per_push = 0;
  std::map<int, std::string> destination_names;
  std::vector<TransferHandle> transfers;
  sync::Inbox inbox;
};

WeightPublisher::WeightPublisher(std::unique_ptr<State> state) : state_(std::move(state)) {}

WeightPublisher::~WeightPublisher() {
  if (!state_ || !state_->endpoint.agent) return;
  for (TransferHandle h : state_->transfers) (void)state_->endpoint.agent->Release(h);
}

Result<std::unique_ptr<WeightPublisher>> WeightPublisher::Create(Rendezvous& rendezvous, const Layout& trainer_layout,
                                                                 const Layout& engine_layout, int rank,
                                                                 WeightSyncOptions options) {
  if (rank < 0 || rank >= trainer_layout.world_size()) {
    return InvalidArgument(fmt::format("trainer rank {} is outside layout {} of {} ranks", rank,
                                       trainer_layout.description(), trainer_layout.world_size()));
  }
  SW_ASSIGN_OR_RETURN(const TransferPlan plan, PlanTransfer(trainer_layout, engine_layout));
  auto state = std::make_unique<State>();
  state->rendezvous = &rendezvous;
  state->options = std::move(options);
  state->rank = rank;
  for (const Move& m : plan.MovesFrom(rank)) {
    // A move to a destination group is written to each member (a fan-out tree is a
    // transport-level optimisation this publisher does not do yet).
    for (std::uint32_t dst : plan.dst_groups()[m.dst_group]) {
      state->moves_by_destination[static_cast<int>(dst)].push_back(m);
      state->bytes_per_push += m.bytes();
    }
  }
  SW_ASSIGN_OR_RETURN(state->endpoint, sync::OpenRankEndpoint(rendezvous, state->options.job, kTrainerRole, rank,
                                                              trainer_layout.rank(rank).buffer_bytes, state->options.buffer));
  return std::unique_ptr<WeightPublisher>(new WeightPublisher(std::move(state)));
}

std::span<std::byte> WeightPublisher::weights() { return state_->endpoint.weights; }
std::uint64_t WeightPublisher::bytes_per_push() const { return state_->bytes_per_push; }
AgentStats WeightPublisher::transport_stats() const { return state_->endpoint.agent->Stats(); }

Status WeightPublisher::Connect() {
  State& s = *state_;
  Agent& agent = *s.endpoint.agent;
  for (const auto& [dst, moves] : s.moves_by_destination) {
    SW_ASSIGN_OR_RETURN(const sync::PeerRank peer, sync::ImportPeerRank(*s.rendezvous, agent, s.options.job,
                                                                        kEngineRole, dst, s.options.timeout_s));
    // Connect every lane now: UCX wires endpoints up lazily, and the handshake
    // (which needs the engine's lanes to answer) would otherwise land in step 1.
    SW_RETURN_IF_ERROR(agent.WireUp(peer.name, s.options.timeout_s));
    std::vector<TransferDescriptor> descriptors;
    descriptors.reserve(moves.size());
    // One descriptor per move: a row-parallel shard's rows travel as one strided
    // descriptor (count rows, src/dst strides), not one descriptor per row.
    for (const Move& m : moves) {
      descriptors.push_back(TransferDescriptor{.local_region = s.endpoint.region,
                                               .local_offset = m.src_offset,
                                               .remote_region = peer.region,
                                               .remote_offset = m.dst_offset,
                                               .length = m.length,
                                               .count = m.count,
                                               .local_stride = m.src_stride,
                                               .remote_stride = m.dst_stride});
    }
    SW_ASSIGN_OR_RETURN(TransferHandle handle,
                        agent.PrepareTransfer(TransferOp::kWrite, peer.name, std::move(descriptors), std::nullopt));
    s.destination_names[dst] = peer.name;
    s.transfers.push_back(handle);
  }
  return Status::Ok();
}

Result<PushStats> WeightPublisher::Push(std::uint64_t version) {
  State& s = *state_;
  Agent& agent = *s.endpoint.agent;
  if (s.transfers.size() != s.moves_by_destination.size()) {
    return InvalidArgument("WeightPublisher::Push called before Connect");
  }
  PushStats stats;
  stats.version = version;
  const auto t0 = Clock::now();
  std::set<std::string> destinations;
  for (const auto& [dst, name] : s.destination_names) destinations.insert(name);
  SW_RETURN_IF_ERROR(s.inbox.AwaitFromAll(agent, sync::MessageKind::kReady, version, destinations, s.options.timeout_s)
                         .WithContext(fmt::format("trainer rank {} push v{}", s.rank, version)));
  const auto t1 = Clock::now();
  const AgentStats before = agent.Stats();
  // Post every destination's prepared transfer first so they progress together, then
  // wait for each: Wait returns after remote completion (the bytes are visible at the
  // destination), and only then is DONE(v) sent, so it can never overtake the data.
  std::size_t i = 0;
  for (const auto& [dst, moves] : s.moves_by_destination) {
    SW_RETURN_IF_ERROR(agent.Post(s.transfers[i++]));
    stats.descriptors += moves.size();
    for (const Move& m : moves) stats.rows += m.count;
  }
  const auto done = sync::Encode({sync::MessageKind::kDone, version});
  i = 0;
  for (const auto& [dst, name] : s.destination_names) {
    Status st = agent.Wait(s.transfers[i++], s.options.timeout_s);
    if (st.ok()) st = agent.SendMessage(name, done);
    if (!st.ok())
      return st.WithContext(fmt::format("trainer rank {} push v{} to engine rank {}", s.rank, version, dst));
  }
  const auto t2 = Clock::now();
  const AgentStats after = agent.Stats();
  stats.direct_copy_bytes = after.direct_copy_bytes - before.direct_copy_bytes;
  stats.ucx_requests = after.ucx_requests - before.ucx_requests;
  stats.bytes = s.bytes_per_push;
  stats.ready_wait_s = Seconds(t0, t1);
  stats.transfer_s = Seconds(t1, t2);
  return stats;
}

}  // namespace shardwire
