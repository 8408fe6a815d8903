#include <algorithm>
#include <array>
#include <chrono>
#include <cstring>
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
  std::map<int, std::uint64_t> bytes_to;  // per destination, direct and converted
  std::map<int, std::string> destination_names;  // every destination, direct or converted
  std::map<int, int> buffers_of;                 // destination -> 1, or 2 when double-buffered
  // Prepared transfers per destination and engine buffer (a double-buffered engine has two;
  // its READY(v) names the one to write; handle 0 = none).
  using Handles = std::array<TransferHandle, 2>;
  std::map<int, Handles> transfers;  // direct
  // Conversion: the converter, the staging arena (two slots) and per round, per destination, one
  // prepared transfer from the round's slot.
  std::unique_ptr<sync::PushConverter> converter;
  RegionId staging_region = 0;
  std::span<std::byte> staging;
  std::vector<std::map<int, std::vector<Move>>> round_moves;
  std::vector<std::map<int, Handles>> round_transfers;  // per round: destination -> transfers
  std::map<int, std::string> amax_peer_names;  // trainer rank -> agent name
  bool connected = false;
  sync::Inbox inbox;
};

WeightPublisher::WeightPublisher(std::unique_ptr<State> state) : state_(std::move(state)) {}

WeightPublisher::~WeightPublisher() {
  if (!state_ || !state_->endpoint.agent) return;
  auto release = [&](const State::Handles& hs) {
    for (TransferHandle h : hs)
      if (h != TransferHandle{}) (void)state_->endpoint.agent->Release(h);
  };
  for (const auto& [dst, hs] : state_->transfers) release(hs);
  for (const auto& round : state_->round_transfers) {
    for (const auto& [dst, hs] : round) release(hs);
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
      state->bytes_to[static_cast<int>(dst)] += m.bytes();
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
          state->bytes_to[static_cast<int>(dst)] += m.bytes();
        }
      }
    }
    state->bytes_per_push += state->converted_bytes_per_push;
    if (tc.slot_bytes > 0) {
      SW_ASSIGN_OR_RETURN(state->staging_region, state->endpoint.agent->AllocateArena(tc.slots * tc.slot_bytes));
      state->staging = state->endpoint.agent->RegionBytes(state->staging_region);
      // Touch every page now, not in step 1 (first touches cost a page fault each, and on a
      // shadow-paging hypervisor far more: docs/transport.md "Pre-faulting").
      std::memset(state->staging.data(), 0, state->staging.size());
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
AgentStats WeightPublisher::transport_stats() const { return state_->endpoint.agent->Stats(); }

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
  // A Connect that failed or was interrupted half-way starts over.
  s.connected = false;
  auto release = [&](const State::Handles& hs) {
    for (TransferHandle h : hs)
      if (h != TransferHandle{}) (void)agent.Release(h);
  };
  for (const auto& [dst, hs] : s.transfers) release(hs);
  for (const auto& round : s.round_transfers)
    for (const auto& [dst, hs] : round) release(hs);
  s.transfers.clear();
  s.round_transfers.clear();
  s.destination_names.clear();
  s.buffers_of.clear();
  s.amax_peer_names.clear();
  std::map<int, sync::PeerRank> peers;
  auto peer_of = [&](int dst) -> Result<sync::PeerRank> {
    if (auto it = peers.find(dst); it != peers.end()) return it->second;
    SW_ASSIGN_OR_RETURN(const sync::PeerRank peer,
                        sync::ImportPeerRank(*s.rendezvous, agent, s.options.job, kEngineRole, dst, s.options.timeout_s,
                                             s.options.interrupt, kInterruptPollSeconds));
    // Connect every lane now: UCX wires endpoints up lazily, and the handshake
    // (which needs the engine's lanes to answer) would otherwise land in step 1.
    SW_RETURN_IF_ERROR(agent.WireUp(peer.name, s.options.timeout_s));
    s.destination_names[dst] = peer.name;
    s.buffers_of[dst] = peer.second_region != 0 ? 2 : 1;
    peers[dst] = peer;
    return peer;
  };
  // One prepared transfer per engine buffer the destination has.
  auto prepare = [&](const sync::PeerRank& peer, const std::vector<Move>& moves, RegionId local,
                     std::uint64_t local_base) -> Result<State::Handles> {
    State::Handles hs{};
    const RegionId regions[2] = {peer.region, peer.second_region};
    for (int b = 0; b < 2; ++b) {
      if (regions[b] == 0) continue;
      SW_ASSIGN_OR_RETURN(hs[b], agent.PrepareTransfer(TransferOp::kWrite, peer.name,
                                                       Descriptors(moves, local, local_base, regions[b]), std::nullopt));
    }
    return hs;
  };
  for (const auto& [dst, moves] : s.moves_by_destination) {
    SW_ASSIGN_OR_RETURN(const sync::PeerRank peer, peer_of(dst));
    SW_ASSIGN_OR_RETURN(s.transfers[dst], prepare(peer, moves, s.endpoint.region, 0));
  }
  if (s.converter) {
    const std::uint64_t slot_bytes = s.converter->plan().slot_bytes;
    const std::uint32_t slots = s.converter->plan().slots;
    s.round_transfers.resize(s.round_moves.size());
    for (std::size_t k = 0; k < s.round_moves.size(); ++k) {
      for (const auto& [dst, moves] : s.round_moves[k]) {
        SW_ASSIGN_OR_RETURN(const sync::PeerRank peer, peer_of(dst));
        SW_ASSIGN_OR_RETURN(s.round_transfers[k][dst], prepare(peer, moves, s.staging_region, (k % slots) * slot_bytes));
      }
    }
    for (const BlockAmaxExchange& x : s.converter->plan().exchanges) {
      SW_ASSIGN_OR_RETURN(const sync::PeerRank peer,
                          sync::ImportPeerRank(*s.rendezvous, agent, s.options.job, kTrainerRole, x.peer,
                                               s.options.timeout_s, s.options.interrupt, kInterruptPollSeconds));
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
  const double engine_timeout_s = std::min(s.options.engine_timeout_s, s.options.timeout_s);
  PushStats stats;
  stats.version = version;
  // Fault isolation: an engine rank that is dead, silent or slow misses this version; the
  // others get it. `active` holds the destinations still in this push.
  std::map<int, std::string> active;
  std::map<int, int> buffer_of;  // destination -> the engine buffer this version goes into
  auto miss = [&](int dst, Status reason) {
    if (active.erase(dst) == 0) return;
    stats.missed.push_back({dst, reason.WithContext(fmt::format("engine rank {} missed v{}", dst, version))});
  };
  const auto t0 = Clock::now();
  {
    std::set<std::string> names;
    for (const auto& [dst, name] : s.destination_names) names.insert(name);
    SW_ASSIGN_OR_RETURN(const sync::Collected ready, s.inbox.Collect(agent, sync::MessageKind::kReady, version, names,
                                                                     engine_timeout_s, s.options.interrupt));
    active = s.destination_names;
    for (const auto& [dst, name] : s.destination_names) {
      if (auto it = ready.arrived.find(name); it != ready.arrived.end()) {
        // A double-buffered engine names the buffer to write; a single-buffered one has buffer 0.
        const int b = it->second.buffer.value_or(0);
        if (b >= s.buffers_of.at(dst)) {
          miss(dst, CorruptData(fmt::format("{} asked for buffer {} it never published", name, b)));
        } else {
          buffer_of[dst] = b;
        }
        continue;
      }
      auto failed = ready.failed.find(name);
      miss(dst, failed != ready.failed.end()
                    ? failed->second
                    : TimedOut(fmt::format("no READY(v{}) from {} within {:.1f} s", version, name, engine_timeout_s)));
    }
  }
  const auto t1 = Clock::now();
  // Conversion, step 1: partial amaxes of the blocks this rank shares with other trainer ranks
  // (a trainer that fails here fails the push: no engine gets a version it cannot complete).
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
        s.inbox
            .AwaitFromAll(agent, sync::MessageKind::kBlockAmax, version, peers, s.options.timeout_s, &received,
                          std::nullopt, s.options.interrupt)
            .WithContext(who));
    for (const BlockAmaxExchange& x : s.converter->plan().exchanges) {
      const std::string& name = s.amax_peer_names.at(x.peer);
      SW_RETURN_IF_ERROR(s.converter->AddPeerAmax(x.receive, received.at(name).amax, name).WithContext(who));
    }
  }
  const auto t2 = Clock::now();
  const AgentStats before = agent.Stats();
  // A transfer that did not complete within the engine's bound is stopped; if it cannot be
  // drained, the peer is abandoned (InvalidatePeer) so that nothing of it outlives the push.
  // With an interrupt hook the wait runs in slices; an interrupt cancels every transfer of this
  // push still in flight (no DONE goes out, so no engine commits the version) and ends the push.
  Status interrupted;
  std::vector<TransferHandle> posted;
  auto wait_sliced = [&](TransferHandle h) -> Status {
    if (!s.options.interrupt) return agent.Wait(h, engine_timeout_s);
    const auto deadline = Clock::now() + std::chrono::duration<double>(engine_timeout_s);
    while (true) {
      const double left = std::chrono::duration<double>(deadline - Clock::now()).count();
      Status st = agent.Wait(h, std::clamp(left, 0.0, kInterruptPollSeconds));
      if (st.code() != ErrorCode::kTimedOut || left <= kInterruptPollSeconds) return st;
      if (Status stop = s.options.interrupt(); !stop.ok()) {
        interrupted = stop;
        return stop;
      }
    }
  };
  auto settle = [&](int dst, const State::Handles& hs) {
    if (!active.count(dst) || !interrupted.ok()) return;
    const TransferHandle h = hs[static_cast<std::size_t>(buffer_of.at(dst))];
    const Status st = wait_sliced(h);
    if (st.ok() || !interrupted.ok()) return;
    if (st.code() == ErrorCode::kTimedOut && !agent.Cancel(h, 1.0).ok()) (void)agent.InvalidatePeer(active.at(dst));
    miss(dst, st);
  };
  auto cancel_posted = [&] {
    for (TransferHandle h : posted) {
      auto done = agent.Test(h);
      if (done.ok() && !*done) (void)agent.Cancel(h, s.options.timeout_s);
    }
  };
  auto post = [&](int dst, const State::Handles& hs, const std::vector<Move>& moves) {
    if (!active.count(dst) || !interrupted.ok()) return;
    const TransferHandle h = hs[static_cast<std::size_t>(buffer_of.at(dst))];
    if (const Status st = agent.Post(h); !st.ok()) return miss(dst, st);
    posted.push_back(h);
    stats.descriptors += moves.size();
    for (const Move& m : moves) stats.rows += m.count;
  };
  // Post every destination's prepared transfer first so they progress together, then
  // wait for each: Wait returns after remote completion (the bytes are visible at the
  // destination), and only then is DONE(v) sent, so it can never overtake the data.
  for (const auto& [dst, moves] : s.moves_by_destination) post(dst, s.transfers.at(dst), moves);
  // Conversion, step 2: round k is converted into slot k % slots while the rounds before it are
  // on the wire; before slot k % slots is overwritten, round k - slots' WRITEs must have completed.
  if (s.converter) {
    const TrainerConversion& tc = s.converter->plan();
    const std::size_t slots = tc.slots;
    auto settle_round = [&](std::size_t k) {
      for (const auto& [dst, hs] : s.round_transfers[k]) settle(dst, hs);
    };
    double convert_s = 0;
    std::uint64_t in_flight = 0;  // bytes of the rounds after the last settled one
    for (std::size_t k = 0; k < tc.rounds.size(); ++k) {
      if (k >= slots) {
        settle_round(k - slots);
        in_flight -= tc.rounds[k - slots].bytes;
      }
      if (!interrupted.ok()) break;
      in_flight += tc.rounds[k].bytes;
      stats.staging_peak_bytes = std::max(stats.staging_peak_bytes, in_flight);
      const auto c0 = Clock::now();
      SW_RETURN_IF_ERROR(
          s.converter->ConvertRound(k, s.staging.subspan((k % slots) * tc.slot_bytes, tc.slot_bytes)).WithContext(who));
      convert_s += Seconds(c0, Clock::now());
      for (const auto& [dst, hs] : s.round_transfers[k]) post(dst, hs, s.round_moves[k].at(dst));
    }
    for (std::size_t k = tc.rounds.size() >= slots ? tc.rounds.size() - slots : 0; k < tc.rounds.size(); ++k) {
      settle_round(k);
    }
    stats.convert_s = convert_s;
    stats.converted_bytes = s.converted_bytes_per_push;
    stats.staging_bytes = s.staging.size();
  }
  for (const auto& [dst, hs] : s.transfers) settle(dst, hs);
  if (!interrupted.ok()) {
    cancel_posted();
    return interrupted.WithContext(who);
  }
  const auto done = sync::Encode({sync::MessageKind::kDone, version});
  for (const auto& [dst, name] : std::map<int, std::string>(active)) {
    if (const Status st = agent.SendMessage(name, done); !st.ok()) miss(dst, st);
  }
  // Tell each engine rank that missed v, so that its WaitForUpdate(v) ends now instead of at
  // its timeout (a stalled one sees it when it resumes; a dead one does not care).
  const auto missed_msg = sync::Encode({sync::MessageKind::kMissed, version});
  for (const MissedEngine& m : stats.missed) (void)agent.SendMessage(s.destination_names.at(m.engine_rank), missed_msg);
  const auto t3 = Clock::now();
  const AgentStats after = agent.Stats();
  stats.direct_copy_bytes = after.direct_copy_bytes - before.direct_copy_bytes;
  stats.ucx_requests = after.ucx_requests - before.ucx_requests;
  for (const auto& [dst, name] : active) stats.bytes += s.bytes_to[dst];
  stats.ready_wait_s = Seconds(t0, t1);
  stats.amax_exchange_s = Seconds(t1, t2);
  stats.transfer_s = Seconds(t2, t3);
  if (active.empty() && !s.destination_names.empty()) {
    std::string why;
    for (const MissedEngine& m : stats.missed) why += (why.empty() ? "" : "; ") + m.reason.ToString();
    return PeerDisconnected(fmt::format("{}: no engine rank received it: {}", who, why));
  }
  return stats;
}

}  // namespace shardwire
