#include <chrono>
#include <map>
#include <set>

#include <fmt/format.h>

#include "shardwire/planner.h"
#include "shardwire/weight_sync.h"
#include "workflows/push_converter.h"
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
  Layout trainer_layout;
  std::optional<PushConversion> conversion;
  sync::RankEndpoint endpoint;
  std::map<int, std::vector<Move>> moves_by_destination;  // direct moves (from the trainer buffer)
  std::uint64_t bytes_per_push = 0;
  std::uint64_t converted_bytes_per_push = 0;
  std::map<int, std::string> destination_names;  // every destination, direct or converted
  std::vector<TransferHandle> transfers;         // direct, one per destination in moves_by_destination
  // Conversion: the converter, the staging arena (two slots) and per round, per destination, one
  // prepared transfer from the round's slot.
  std::unique_ptr<sync::PushConverter> converter;
  RegionId staging_region = 0;
  std::span<std::byte> staging;
  std::vector<std::map<int, std::vector<Move>>> round_moves;
  std::vector<std::vector<TransferHandle>> round_transfers;
  std::map<int, std::string> amax_peer_names;  // trainer rank -> agent name
  bool connected = false;
  sync::Inbox inbox;
};

WeightPublisher::WeightPublisher(std::unique_ptr<State> state) : state_(std::move(state)) {}

WeightPublisher::~WeightPublisher() {
  if (!state_ || !state_->endpoint.agent) return;
  for (TransferHandle h : state_->transfers) (void)state_->endpoint.agent->Release(h);
  for (const auto& round : state_->round_transfers) {
    for (TransferHandle h : round) (void)state_->endpoint.agent->Release(h);
  }
}

Result<std::unique_ptr<WeightPublisher>> WeightPublisher::Create(Rendezvous& rendezvous, const Layout& trainer_layout,
                                                                 const Layout& engine_layout, int rank,
                                                                 WeightSyncOptions options) {
  if (rank < 0 || rank >= trainer_layout.world_size()) {
    return InvalidArgument(fmt::format("trainer rank {} is outside layout {} of {} ranks", rank,
                                       trainer_layout.description(), trainer_layout.world_size()));
  }
  auto state = std::make_unique<State>();
  state->rendezvous = &rendezvous;
  state->options = std::move(options);
  state->rank = rank;
  state->trainer_layout = trainer_layout;
  SW_ASSIGN_OR_RETURN(PushConversion conversion,
                      PushConversion::Create(trainer_layout, engine_layout, state->options.conversion));
  const TransferPlan& plan = conversion.direct_plan();
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
  if (conversion.converts()) {
    SW_ASSIGN_OR_RETURN(TrainerConversion tc, conversion.ForTrainerRank(rank));
    const TransferPlan& converted = conversion.converted_plan();
    state->round_moves.resize(tc.rounds.size());
    for (std::size_t k = 0; k < tc.rounds.size(); ++k) {
      for (const Move& m : tc.rounds[k].moves) {
        for (std::uint32_t dst : converted.dst_groups()[m.dst_group]) {
          state->round_moves[k][static_cast<int>(dst)].push_back(m);
          state->converted_bytes_per_push += m.bytes();
        }
      }
    }
    state->bytes_per_push += state->converted_bytes_per_push;
    if (tc.slot_bytes > 0) {
      SW_ASSIGN_OR_RETURN(state->staging_region, state->endpoint.agent->AllocateArena(2 * tc.slot_bytes));
      state->staging = state->endpoint.agent->RegionBytes(state->staging_region);
    }
    state->conversion.emplace(std::move(conversion));
    state->converter = std::make_unique<sync::PushConverter>(state->trainer_layout, rank, *state->conversion,
                                                             std::move(tc), state->endpoint.weights,
                                                             state->options.conversion.fp8);
  }
  return std::unique_ptr<WeightPublisher>(new WeightPublisher(std::move(state)));
}

std::span<std::byte> WeightPublisher::weights() { return state_->endpoint.weights; }
std::uint64_t WeightPublisher::bytes_per_push() const { return state_->bytes_per_push; }

namespace {

// One descriptor per move: a row-parallel shard's rows travel as one strided descriptor
// (count rows, src/dst strides), not one descriptor per row.
std::vector<TransferDescriptor> Descriptors(const std::vector<Move>& moves, RegionId local, std::uint64_t local_base,
                                            RegionId remote) {
  std::vector<TransferDescriptor> descriptors;
  descriptors.reserve(moves.size());
  for (const Move& m : moves) {
    descriptors.push_back(TransferDescriptor{.local_region = local,
                                             .local_offset = local_base + m.src_offset,
                                             .remote_region = remote,
                                             .remote_offset = m.dst_offset,
                                             .length = m.length,
                                             .count = m.count,
                                             .local_stride = m.src_stride,
                                             .remote_stride = m.dst_stride});
  }
  return descriptors;
}

}  // namespace

Status WeightPublisher::Connect() {
  State& s = *state_;
  Agent& agent = *s.endpoint.agent;
  std::map<int, sync::PeerRank> peers;
  auto peer_of = [&](int dst) -> Result<sync::PeerRank> {
    if (auto it = peers.find(dst); it != peers.end()) return it->second;
    SW_ASSIGN_OR_RETURN(const sync::PeerRank peer, sync::ImportPeerRank(*s.rendezvous, agent, s.options.job,
                                                                        kEngineRole, dst, s.options.timeout_s));
    // Connect every lane now: UCX wires endpoints up lazily, and the handshake
    // (which needs the engine's lanes to answer) would otherwise land in step 1.
    SW_RETURN_IF_ERROR(agent.WireUp(peer.name, s.options.timeout_s));
    s.destination_names[dst] = peer.name;
    peers[dst] = peer;
    return peer;
  };
  for (const auto& [dst, moves] : s.moves_by_destination) {
    SW_ASSIGN_OR_RETURN(const sync::PeerRank peer, peer_of(dst));
    SW_ASSIGN_OR_RETURN(TransferHandle handle,
                        agent.PrepareTransfer(TransferOp::kWrite, peer.name,
                                              Descriptors(moves, s.endpoint.region, 0, peer.region), std::nullopt));
    s.transfers.push_back(handle);
  }
  if (s.converter) {
    const std::uint64_t slot_bytes = s.converter->plan().slot_bytes;
    s.round_transfers.resize(s.round_moves.size());
    for (std::size_t k = 0; k < s.round_moves.size(); ++k) {
      for (const auto& [dst, moves] : s.round_moves[k]) {
        SW_ASSIGN_OR_RETURN(const sync::PeerRank peer, peer_of(dst));
        SW_ASSIGN_OR_RETURN(TransferHandle handle,
                            agent.PrepareTransfer(TransferOp::kWrite, peer.name,
                                                  Descriptors(moves, s.staging_region, (k % 2) * slot_bytes, peer.region),
                                                  std::nullopt));
        s.round_transfers[k].push_back(handle);
      }
    }
    for (const BlockAmaxExchange& x : s.converter->plan().exchanges) {
      SW_ASSIGN_OR_RETURN(const sync::PeerRank peer, sync::ImportPeerRank(*s.rendezvous, agent, s.options.job,
                                                                          kTrainerRole, x.peer, s.options.timeout_s));
      SW_RETURN_IF_ERROR(agent.WireUp(peer.name, s.options.timeout_s));
      s.amax_peer_names[x.peer] = peer.name;
    }
  }
  s.connected = true;
  return Status::Ok();
}

Result<PushStats> WeightPublisher::Push(std::uint64_t version) {
  State& s = *state_;
  Agent& agent = *s.endpoint.agent;
  if (!s.connected) return InvalidArgument("WeightPublisher::Push called before Connect");
  const std::string who = fmt::format("trainer rank {} push v{}", s.rank, version);
  PushStats stats;
  stats.version = version;
  const auto t0 = Clock::now();
  std::set<std::string> destinations;
  for (const auto& [dst, name] : s.destination_names) destinations.insert(name);
  SW_RETURN_IF_ERROR(s.inbox.AwaitFromAll(agent, sync::MessageKind::kReady, version, destinations, s.options.timeout_s)
                         .WithContext(who));
  const auto t1 = Clock::now();
  // Conversion, step 1: partial amaxes of the blocks this rank shares with other trainer ranks.
  if (s.converter && !s.amax_peer_names.empty()) {
    s.converter->ClearPeerAmax();
    std::set<std::string> peers;
    for (const BlockAmaxExchange& x : s.converter->plan().exchanges) {
      SW_ASSIGN_OR_RETURN(std::vector<float> mine, s.converter->PartialAmax(x.send));
      const std::string& name = s.amax_peer_names.at(x.peer);
      SW_RETURN_IF_ERROR(
          agent.SendMessage(name, sync::Encode({sync::MessageKind::kBlockAmax, version, std::move(mine)}))
              .WithContext(who));
      peers.insert(name);
    }
    std::map<std::string, sync::Message> received;
    SW_RETURN_IF_ERROR(
        s.inbox.AwaitFromAll(agent, sync::MessageKind::kBlockAmax, version, peers, s.options.timeout_s, &received)
            .WithContext(who));
    for (const BlockAmaxExchange& x : s.converter->plan().exchanges) {
      const std::string& name = s.amax_peer_names.at(x.peer);
      SW_RETURN_IF_ERROR(s.converter->AddPeerAmax(x.receive, received.at(name).amax, name).WithContext(who));
    }
  }
  const auto t2 = Clock::now();
  // Post every destination's prepared transfer first so they progress together, then
  // wait for each: Wait returns after remote completion (the bytes are visible at the
  // destination), and only then is DONE(v) sent, so it can never overtake the data.
  std::size_t i = 0;
  for (const auto& [dst, moves] : s.moves_by_destination) {
    SW_RETURN_IF_ERROR(agent.Post(s.transfers[i++]).WithContext(who));
    stats.descriptors += moves.size();
    for (const Move& m : moves) stats.rows += m.count;
  }
  // Conversion, step 2: round k is converted into slot k % 2 while round k - 1 is on the
  // wire; before slot k % 2 is overwritten, round k - 2's WRITEs must have completed.
  if (s.converter) {
    const TrainerConversion& tc = s.converter->plan();
    auto wait_round = [&](std::size_t k) -> Status {
      for (TransferHandle h : s.round_transfers[k]) SW_RETURN_IF_ERROR(agent.Wait(h, s.options.timeout_s));
      return Status::Ok();
    };
    double convert_s = 0;
    for (std::size_t k = 0; k < tc.rounds.size(); ++k) {
      if (k >= 2) SW_RETURN_IF_ERROR(wait_round(k - 2).WithContext(who));
      const std::uint64_t in_flight = k >= 1 ? tc.rounds[k - 1].bytes : 0;
      stats.staging_peak_bytes = std::max(stats.staging_peak_bytes, in_flight + tc.rounds[k].bytes);
      const auto c0 = Clock::now();
      SW_RETURN_IF_ERROR(
          s.converter->ConvertRound(k, s.staging.subspan((k % 2) * tc.slot_bytes, tc.slot_bytes)).WithContext(who));
      convert_s += Seconds(c0, Clock::now());
      for (TransferHandle h : s.round_transfers[k]) SW_RETURN_IF_ERROR(agent.Post(h).WithContext(who));
      for (const auto& [dst, moves] : s.round_moves[k]) {
        stats.descriptors += moves.size();
        for (const Move& m : moves) stats.rows += m.count;
      }
    }
    for (std::size_t k = tc.rounds.size() >= 2 ? tc.rounds.size() - 2 : 0; k < tc.rounds.size(); ++k) {
      SW_RETURN_IF_ERROR(wait_round(k).WithContext(who));
    }
    stats.convert_s = convert_s;
    stats.converted_bytes = s.converted_bytes_per_push;
    stats.staging_bytes = s.staging.size();
  }
  const auto done = sync::Encode({sync::MessageKind::kDone, version});
  i = 0;
  for (const auto& [dst, moves] : s.moves_by_destination) {
    const Status st = agent.Wait(s.transfers[i++], s.options.timeout_s);
    if (!st.ok()) return st.WithContext(fmt::format("{} to engine rank {}", who, dst));
  }
  for (const auto& [dst, name] : s.destination_names) {
    const Status st = agent.SendMessage(name, done);
    if (!st.ok()) return st.WithContext(fmt::format("{} to engine rank {}", who, dst));
  }
  const auto t3 = Clock::now();
  stats.bytes = s.bytes_per_push;
  stats.ready_wait_s = Seconds(t0, t1);
  stats.amax_exchange_s = Seconds(t1, t2);
  stats.transfer_s = Seconds(t2, t3);
  return stats;
}

}  // namespace shardwire
