#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <system_error>
#include <thread>

#include <time.h>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "core/streaming_store.h"
#include "core/thread_cpu_time.h"
#include "shardwire/planner.h"
#include "shardwire/weight_sync.h"
#include "workflows/membership.h"
#include "workflows/own_pause.h"
#include "workflows/partial_reduction.h"
#include "workflows/push_converter.h"
#include "workflows/push_digest.h"
#include "workflows/push_workers.h"
#include "workflows/rank_endpoint.h"
#include "workflows/relay_tree.h"
#include "workflows/replica_fanout.h"
#include "workflows/sync_messages.h"
#include "workflows/workflow_metrics.h"

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
  workflows::PublisherMetrics metrics;  // WeightSyncOptions::metrics (no-op without)
  int rank = 0;
  Layout trainer_layout;
  std::optional<PushConversion> conversion;
  workflows::RankEndpoint endpoint;
  std::map<int, std::vector<Move>> moves_by_destination;  // direct moves (from the trainer buffer)
  std::uint64_t bytes_per_push = 0;
  std::uint64_t converted_bytes_per_push = 0;
  std::map<int, std::uint64_t> bytes_to;         // per destination, direct and converted
  std::map<int, std::string> destination_names;  // every destination, direct or converted
  std::map<int, int> buffers_of;                 // destination -> 1, or 2 when double-buffered
  // Prepared transfers per destination and engine buffer (a double-buffered engine has two;
  // its READY(v) names the one to write; handle 0 = none).
  using Handles = std::array<TransferHandle, 2>;
  // The push by schedule round (WeightSyncOptions::max_concurrency), run one after another:
  // per round, its direct moves and prepared transfers per destination, the earlier rounds
  // whose ROUND_DONE it waits for (round -> trainer ranks that wrote one of its destinations
  // then), and the trainer ranks it tells ROUND_DONE(v, round) when it completes. Converted moves of a round are in the
  // converter's staging rounds of that schedule round (ConversionRound::schedule_round).
  struct Stage {
    std::uint32_t round = 0;
    std::map<int, std::vector<Move>> moves;
    std::map<int, Handles> transfers;
    std::map<std::uint32_t, std::set<int>> wait_for;
    std::set<int> notify;
  };
  std::vector<Stage> stages;
  std::map<int, std::string> round_peer_names;  // trainer rank -> agent name
  std::optional<workflows::RelayTree> relay;    // relay_broadcasts
  // Conversion: the converter, the staging arena (two slots) and per round, per destination, one
  // prepared transfer from the round's slot.
  std::unique_ptr<workflows::PushConverter> converter;
  RegionId staging_region = 0;
  std::span<std::byte> staging;
  std::vector<std::map<int, std::vector<Move>>> round_moves;
  std::vector<std::map<int, Handles>> round_transfers;  // per round: destination -> transfers
  std::map<int, std::string> amax_peer_names;           // trainer rank -> agent name
  // Writing into mapped engine buffers: per destination whose every buffer the transport maps
  // here (Agent::MapPeerRegion), the mapping of each engine buffer and what goes through it:
  // the converted bytes (WeightSyncOptions::convert_into_mapped: no staging round transfers, the
  // converter writes straight into the mapping; per round, its row segments sorted by slot
  // offset) and / or the direct moves (copy_into_mapped: no prepared transfers, the pushing
  // threads copy them, replica_fanout.h).
  struct Segment {
    std::uint64_t src = 0, dst = 0, length = 0;  // bytes: slot offset, engine buffer offset, length
  };
  struct MappedDestination {
    std::array<MappedRegion, 2> views;
    bool converted = false;
    bool copied = false;
  };
  std::map<int, MappedDestination> mapped;
  std::vector<std::map<int, std::vector<Segment>>> round_segments;  // per round: destination -> segments
  std::vector<std::vector<std::byte>> scratches;  // per conversion thread: PushConverter::ConvertRoundTo
  bool connected = false;
  bool closed = false;  // Close ran: Connect, Push and WaitForEngines fail
  workflows::Inbox inbox;
  // Dynamic membership: the leader (rank 0), the incarnation each connected destination
  // had when it was connected, and the version each destination last missed (it is skipped
  // until it joins again after that).
  int engine_ranks = 0;
  std::string claim_key;          // "<job>/trainer/<rank>/claims": +1 per publisher of the rank
  std::int64_t claim = 0;         // this publisher's claim
  std::string plan_signature;     // peers must have the same (SyncPlanSignature)
  std::uint64_t last_pushed = 0;  // the last version every reachable engine got (0: none yet)
  std::optional<workflows::MembershipLeader> leader;
  std::map<int, std::uint64_t> incarnation_of;
  std::map<int, std::uint64_t> missed_at;
  // The engine ranks whose READY the current push took and that have been sent neither DONE nor
  // MISSED yet: if the push fails, each is told MISSED(v) with the error (Push), so that its
  // WaitForUpdate ends at once rather than at its timeout.
  std::map<int, std::string> awaiting_done;
  // Destinations this rank failed to connect to (the process gone, or stalled past
  // engine_timeout_s): the member record (incarnation, join request) it was found in and why.
  // Not connected to again until the record changes (a replacement process, or the same one
  // joining again after the version it missed), so a stalled joiner costs one engine_timeout_s.
  struct FailedConnect {
    std::pair<std::uint64_t, std::int64_t> record;
    Status why;
  };
  std::map<int, FailedConnect> failed_connect;
  // Partial(sum) sources (transfer_plan.h, Reduction): this rank's addends for each other
  // reducer (prepared WRITEs into its scratch), the copies it makes into its own scratch, the
  // sums it computes as a reducer, and the ranks whose addends it waits for.
  std::uint64_t buffer_bytes = 0;  // plan offsets at or beyond it address the scratch
  std::map<int, std::vector<ReduceCopy>> copies_to;
  std::vector<ReduceCopy> local_copies;
  std::vector<Reduction> reductions;
  std::set<int> addend_sources;
  std::map<int, TransferHandle> copy_transfers;  // reducer -> prepared WRITE of my addends
  std::map<int, std::string> reducer_names;
  std::set<std::string> addend_source_names;
  // The version every reducer opened its slots for (SLOTS_OPEN) in a push of this rank: a
  // retry of that version (after an interrupt) writes the same addends again without waiting
  // for a SLOTS_OPEN that was consumed. 0: none since Connect.
  std::uint64_t slots_opened_for = 0;

  void ReleaseTransfersTo(int dst);
  // Imports engine rank `dst`'s metadata (of `incarnation` with dynamic membership, else 0: the
  // one published), checks its plan signature, wires the lanes up and prepares its transfers,
  // each wait bounded by `timeout_s` seconds.
  Status ConnectDestination(int dst, std::uint64_t incarnation, double timeout_s);
  // Imports trainer rank `peer`'s metadata, checks its plan signature and wires the lanes up.
  Result<workflows::PeerRank> ConnectTrainerPeer(int peer);
};

namespace {

// Where a move's source lies: `local` at local_base + offset, or, for plan offsets at or beyond
// `buffer_bytes` (a reduced Partial sum), the scratch region at offset - buffer_bytes.
struct LocalSource {
  RegionId local = 0;
  std::uint64_t local_base = 0;
  std::uint64_t buffer_bytes = ~0ull;
  RegionId scratch = 0;
};

// One descriptor per move: a row-parallel shard's rows travel as one strided descriptor
// (count rows, src/dst strides), not one descriptor per row.
std::vector<TransferDescriptor> Descriptors(const std::vector<Move>& moves, const LocalSource& from, RegionId remote) {
  std::vector<TransferDescriptor> descriptors;
  descriptors.reserve(moves.size());
  for (const Move& m : moves) {
    const bool scratch = m.src_offset >= from.buffer_bytes;
    descriptors.push_back(
        TransferDescriptor{.local_region = scratch ? from.scratch : from.local,
                           .local_offset = scratch ? m.src_offset - from.buffer_bytes : from.local_base + m.src_offset,
                           .remote_region = remote,
                           .remote_offset = m.dst_offset,
                           .length = m.length,
                           .count = m.count,
                           .local_stride = m.src_stride,
                           .remote_stride = m.dst_stride});
  }
  return descriptors;
}

// The rounds of trainer rank `rank` (the schedule of the push, both plans scheduled jointly by
// PushConversion: direct moves and converted ones), with the direct moves of each and the
// ROUND_DONE dependencies that keep every engine rank at <= K writers at once: a round-r WRITE to
// engine rank e waits for the writers of e in the previous round in which e receives
// (transitively, for all earlier ones), and each of those tells it when its round completed.
// Rounds are totally ordered and each trainer runs its own in order, so the waits cannot form a
// cycle. `plans` = {direct plan} or {direct plan, converted plan}; only the first one's moves
// are kept (the converted ones travel in the converter's staging rounds).
std::vector<WeightPublisher::State::Stage> PushStages(std::initializer_list<const TransferPlan*> plans, int rank) {
  std::map<int, std::set<std::uint32_t>> receive_rounds;           // engine rank -> rounds
  std::map<std::pair<int, std::uint32_t>, std::set<int>> writers;  // (engine rank, round) -> trainer ranks
  std::map<std::uint32_t, WeightPublisher::State::Stage> by_round;
  std::map<std::uint32_t, std::set<int>> written;  // round -> engine ranks this rank writes
  for (const TransferPlan* plan : plans) {
    const bool direct = plan == *plans.begin();
    for (const Bucket& b : plan->buckets()) {
      for (std::uint32_t member : plan->dst_groups()[b.dst_group]) {
        const int dst = static_cast<int>(member);
        receive_rounds[dst].insert(b.round);
        writers[{dst, b.round}].insert(static_cast<int>(b.src_rank));
        if (static_cast<int>(b.src_rank) != rank) continue;
        WeightPublisher::State::Stage& stage = by_round[b.round];
        stage.round = b.round;
        written[b.round].insert(dst);
        if (!direct) continue;
        for (std::uint64_t i = b.first_move; i < b.first_move + b.move_count; ++i)
          stage.moves[dst].push_back(plan->moves()[i]);
      }
    }
  }
  std::vector<WeightPublisher::State::Stage> stages;
  // Each (round, trainer rank) is waited for once, in the first stage that needs it: its
  // ROUND_DONE arrives once, and the stages run in order, so the later ones are covered.
  std::set<std::pair<std::uint32_t, int>> awaited;
  for (auto& [round, stage] : by_round) {
    for (int dst : written.at(round)) {
      const std::set<std::uint32_t>& rounds = receive_rounds.at(dst);
      const auto at = rounds.find(round);
      if (at != rounds.begin()) {
        const std::uint32_t previous = *std::prev(at);
        for (int t : writers.at({dst, previous})) {
          if (t != rank && awaited.emplace(previous, t).second) stage.wait_for[previous].insert(t);
        }
      }
      if (const auto next = std::next(at); next != rounds.end()) {
        for (int t : writers.at({dst, *next}))
          if (t != rank) stage.notify.insert(t);
      }
    }
    stages.push_back(std::move(stage));
  }
  return stages;
}

}  // namespace

void WeightPublisher::State::ReleaseTransfersTo(int dst) {
  auto release = [&](std::map<int, Handles>& by_destination) {
    auto it = by_destination.find(dst);
    if (it == by_destination.end()) return;
    for (TransferHandle h : it->second)
      if (h != TransferHandle{}) (void)endpoint.agent->Release(h);
    by_destination.erase(it);
  };
  for (Stage& stage : stages) release(stage.transfers);
  for (auto& round : round_transfers) release(round);
  mapped.erase(dst);
  for (auto& round : round_segments) round.erase(dst);
  destination_names.erase(dst);
  buffers_of.erase(dst);
}

WeightPublisher::WeightPublisher(std::unique_ptr<State> state) : state_(std::move(state)) {}

WeightPublisher::~WeightPublisher() {
  if (state_) Close();
}

void WeightPublisher::Close() {
  if (state_->closed || !state_->endpoint.agent) {
    state_->closed = true;
    return;
  }
  state_->closed = true;
  auto release = [&](const State::Handles& hs) {
    for (TransferHandle h : hs)
      if (h != TransferHandle{}) (void)state_->endpoint.agent->Release(h);
  };
  for (const State::Stage& stage : state_->stages) {
    for (const auto& [dst, hs] : stage.transfers) release(hs);
  }
  for (const auto& [reducer, h] : state_->copy_transfers) (void)state_->endpoint.agent->Release(h);
  for (const auto& round : state_->round_transfers) {
    for (const auto& [dst, hs] : round) release(hs);
  }
  state_->stages.clear();
  state_->copy_transfers.clear();
  state_->round_transfers.clear();
  state_->connected = false;
}

namespace {
// kFailedPrecondition naming `call` once the publisher was closed (WeightPublisher::Close).
Status CheckOpen(const WeightPublisher::State& s, std::string_view call) {
  if (!s.closed) return Status::Ok();
  return FailedPrecondition(fmt::format("WeightPublisher::{} on trainer rank {} after Close", call, s.rank));
}
}  // namespace

Result<std::unique_ptr<WeightPublisher>> WeightPublisher::Create(Rendezvous& rendezvous, const Layout& trainer_layout,
                                                                 const Layout& engine_layout, int rank,
                                                                 WeightSyncOptions options) {
  SW_RETURN_IF_ERROR(ValidateWeightSyncTimes(options));
  if (rank < 0 || rank >= trainer_layout.world_size()) {
    return InvalidArgument(fmt::format("trainer rank {} is outside layout {} of {} ranks", rank,
                                       trainer_layout.description(), trainer_layout.world_size()));
  }
  auto state = std::make_unique<State>();
  state->rendezvous = &rendezvous;
  state->options = std::move(options);
  state->rank = rank;
  state->trainer_layout = trainer_layout;
  state->engine_ranks = engine_layout.world_size();
  if (state->options.dynamic_membership && rank == 0) {
    state->leader.emplace(std::max(0.0, std::min(state->options.catch_up_hold_s, state->options.timeout_s / 2)));
  }
  if (state->options.max_concurrency < 1) {
    return InvalidArgument(
        fmt::format("max_concurrency (K) must be at least 1, not {}", state->options.max_concurrency));
  }
  // Each conversion thread gets a scratch buffer at Create: 2^32 - 1 of them was std::bad_alloc.
  if (state->options.convert_threads > kMaxConvertThreads) {
    return InvalidArgument(
        fmt::format("convert_threads is {}; at most {}", state->options.convert_threads, kMaxConvertThreads));
  }
  SW_ASSIGN_OR_RETURN(PushConversion conversion,
                      PushConversion::Create(trainer_layout, engine_layout, state->options.conversion,
                                             PlanOptions{.max_concurrency = state->options.max_concurrency}));
  const TransferPlan& plan = conversion.direct_plan();
  state->buffer_bytes = trainer_layout.rank(rank).buffer_bytes;
  // The reductions of the whole push: the moved tensors' and the converted ones' (whose reducers
  // convert the sums from their scratch, PushConversion::SourceOf).
  for (const ReduceCopy& c : conversion.reduce_copies()) {
    const int reducer = static_cast<int>(c.reducer), src = static_cast<int>(c.src_rank);
    if (src == rank && reducer == rank) state->local_copies.push_back(c);
    if (src == rank && reducer != rank) state->copies_to[reducer].push_back(c);
    if (reducer == rank && src != rank) state->addend_sources.insert(src);
  }
  for (const Reduction& r : conversion.reductions())
    if (static_cast<int>(r.reducer) == rank) state->reductions.push_back(r);
  for (const Move& m : plan.MovesFrom(rank)) {
    // A move to a destination group is written to each member (a fan-out tree is a
    // transport-level optimisation this publisher does not do yet).
    for (std::uint32_t dst : plan.dst_groups()[m.dst_group]) {
      state->moves_by_destination[static_cast<int>(dst)].push_back(m);
      state->bytes_per_push += m.bytes();
      state->bytes_to[static_cast<int>(dst)] += m.bytes();
    }
  }
  if (state->options.relay_broadcasts)
    state->relay = workflows::MakeRelayTree(engine_layout, state->options.max_concurrency);
  // The rank's claim: a later publisher of the same rank (a restarted trainer, or a second one by
  // mistake) takes the next claim, and this one stops at its next push with kAlreadyExists.
  state->claim_key = workflows::MetadataKey(state->options.job, kTrainerRole, rank) + "/claims";
  SW_ASSIGN_OR_RETURN(state->claim, rendezvous.Add(state->claim_key, 1));
  state->plan_signature = workflows::SyncPlanSignature(trainer_layout, engine_layout, state->options);
  SW_RETURN_IF_ERROR(
      workflows::PublishPlanSignature(rendezvous, state->options.job, kTrainerRole, rank, state->plan_signature));
  SW_ASSIGN_OR_RETURN(
      state->endpoint,
      workflows::OpenRankEndpoint(
          rendezvous, state->options.job, kTrainerRole, rank, trainer_layout.rank(rank).buffer_bytes,
          state->options.buffer, false, {}, conversion.scratch_bytes(rank),
          state->options.buffer_memory == BufferMemory::kShared ? ArenaMemory::kShared : ArenaMemory::kPrivateHugePages,
          state->options.metrics, /*incarnation=*/0, state->options.lanes));
  SW_ASSIGN_OR_RETURN(state->metrics,
                      workflows::PublisherMetrics::Make(state->options.metrics, state->options.job, rank));
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
    state->stages = PushStages({&state->conversion->direct_plan(), &state->conversion->converted_plan()}, rank);
    state->converter = std::make_unique<workflows::PushConverter>(
        state->trainer_layout, rank, *state->conversion, std::move(tc), state->endpoint.weights,
        state->endpoint.scratch, state->options.conversion.fp8);
    state->scratches.resize(std::max<std::uint32_t>(1, state->options.convert_threads));
    for (auto& scratch : state->scratches) scratch.resize(state->converter->ScratchBytes());
  }
  if (!state->conversion) state->stages = PushStages({&plan}, rank);
  return std::unique_ptr<WeightPublisher>(new WeightPublisher(std::move(state)));
}

std::span<std::byte> WeightPublisher::weights() { return state_->endpoint.weights; }

Result<int> WeightPublisher::WaitForEngines(int engine_ranks, double timeout_s) {
  State& s = *state_;
  SW_RETURN_IF_ERROR(CheckOpen(s, "WaitForEngines"));
  if (!s.options.dynamic_membership)
    return InvalidArgument("WeightPublisher::WaitForEngines without dynamic membership");
  if (engine_ranks < 1 || engine_ranks > s.engine_ranks) {
    return InvalidArgument(
        fmt::format("WaitForEngines({}): the engine layout has {} ranks", engine_ranks, s.engine_ranks));
  }
  if (!(timeout_s >= 0)) return InvalidArgument(fmt::format("WaitForEngines: timeout_s {} is not >= 0", timeout_s));
  // +inf: a deadline 1e9 s (31 years) away; the conversion of more overflows the clock.
  const auto deadline = Clock::now() + std::chrono::duration<double>(std::min(timeout_s, 1e9));
  while (true) {
    SW_ASSIGN_OR_RETURN(const std::set<int> joining,
                        workflows::JoiningRanks(*s.rendezvous, s.options.job, s.engine_ranks));
    const int asked = static_cast<int>(joining.size());
    if (asked >= engine_ranks) return asked;
    if (Clock::now() >= deadline) {
      return TimedOut(fmt::format("job {}: {} of the {} engine ranks waited for asked to join within {:.1f} s",
                                  s.options.job, asked, engine_ranks, timeout_s));
    }
    if (s.options.interrupt) SW_RETURN_IF_ERROR(s.options.interrupt());
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}
std::uint64_t WeightPublisher::bytes_per_push() const { return state_->bytes_per_push; }
AgentStats WeightPublisher::transport_stats() const { return state_->endpoint.agent->Stats(); }

Status WeightPublisher::State::ConnectDestination(int dst, std::uint64_t incarnation, double timeout_s) {
  Agent& agent = *endpoint.agent;
  ReleaseTransfersTo(dst);
  SW_ASSIGN_OR_RETURN(const workflows::PeerRank peer,
                      workflows::ImportPeerRank(*rendezvous, agent, options.job, kEngineRole, dst, timeout_s,
                                                options.interrupt, kInterruptPollSeconds, incarnation));
  // Before a single descriptor: the engine must plan for the same layouts (else its bytes
  // would land at other offsets than it expects).
  SW_RETURN_IF_ERROR(
      workflows::CheckPeerPlanSignature(*rendezvous, options.job, kEngineRole, dst, plan_signature, timeout_s));
  // Connect every lane now: UCX wires endpoints up lazily, and the handshake
  // (which needs the engine's lanes to answer) would otherwise land in the first push.
  // (A failed wire-up forgets the peer, so the rank's next process or join imports afresh.)
  SW_RETURN_IF_ERROR(agent.WireUp(peer.name, timeout_s));
  // One prepared transfer per engine buffer the destination has.
  auto prepare = [&](const std::vector<Move>& moves, RegionId local, std::uint64_t local_base) -> Result<Handles> {
    Handles hs{};
    const RegionId regions[2] = {peer.region, peer.second_region};
    const LocalSource from{local, local_base, local == endpoint.region ? buffer_bytes : ~0ull, endpoint.scratch_region};
    for (int b = 0; b < 2; ++b) {
      if (regions[b] == 0) continue;
      SW_ASSIGN_OR_RETURN(hs[b], agent.PrepareTransfer(TransferOp::kWrite, peer.name,
                                                       Descriptors(moves, from, regions[b]), std::nullopt));
    }
    return hs;
  };
  // The direct-mapped destination capability: when the transport maps every engine buffer of
  // this destination into this process (a same-host arena), the pushing threads copy its direct
  // moves (copy_into_mapped) and the converter writes into it (convert_into_mapped).
  bool has_direct = false, has_converted = false;
  for (const Stage& stage : stages) has_direct = has_direct || stage.moves.count(dst) > 0;
  for (const auto& round : round_moves) has_converted = has_converted || round.count(dst) > 0;
  MappedDestination into;
  const RegionId regions[2] = {peer.region, peer.second_region};
  if ((options.copy_into_mapped && has_direct) || (converter && options.convert_into_mapped && has_converted)) {
    bool all = true;
    for (int b = 0; b < 2 && all; ++b) {
      if (regions[b] == 0) continue;
      auto view = agent.MapPeerRegion(peer.name, regions[b]);
      if (!view.ok()) {
        // Not mappable (another host, RDMA, TCP, caller-registered memory): the lanes and the
        // staging ring.
        if (view.status().code() != ErrorCode::kUnsupported)
          return view.status().WithContext("mapping an engine buffer");
        all = false;
        break;
      }
      into.views[static_cast<std::size_t>(b)] = *view;
    }
    into.copied = all && options.copy_into_mapped && has_direct;
    into.converted = all && converter && options.convert_into_mapped && has_converted;
  }
  // Pre-faults the pages a move writes through this process's mappings (as PrepareTransfer does
  // for the lanes' mappings: docs/transport.md "Pre-faulting"); also checks that the move lies
  // inside every engine buffer.
  auto prefault = [&](const Move& m) -> Status {
    if (m.count == 0) return Status::Ok();
    const std::uint64_t span = (m.count - 1) * m.dst_stride + m.length;
    for (int b = 0; b < 2; ++b) {
      if (regions[b] == 0) continue;
      SW_RETURN_IF_ERROR(into.views[static_cast<std::size_t>(b)].PrefaultForWrite(m.dst_offset, span).status());
    }
    return Status::Ok();
  };
  const workflows::FanoutSource source{endpoint.weights.first(buffer_bytes), endpoint.scratch};
  for (Stage& stage : stages) {
    auto it = stage.moves.find(dst);
    if (it == stage.moves.end()) continue;
    if (into.copied) {
      SW_RETURN_IF_ERROR(workflows::CheckFanoutSource(it->second, source)
                             .WithContext(fmt::format("direct moves to engine rank {}", dst)));
      for (const Move& m : it->second) SW_RETURN_IF_ERROR(prefault(m).WithContext("mapping an engine buffer"));
    } else {
      SW_ASSIGN_OR_RETURN(stage.transfers[dst], prepare(it->second, endpoint.region, 0));
    }
  }
  if (into.converted) {
    round_segments.resize(round_moves.size());
    for (std::size_t k = 0; k < round_moves.size(); ++k) {
      auto it = round_moves[k].find(dst);
      if (it == round_moves[k].end()) continue;
      std::vector<Segment>& segs = round_segments[k][dst];
      for (const Move& m : it->second) {
        for (std::uint64_t row = 0; row < m.count; ++row) {
          segs.push_back({m.src_offset + row * m.src_stride, m.dst_offset + row * m.dst_stride, m.length});
        }
        SW_RETURN_IF_ERROR(prefault(m).WithContext("mapping an engine buffer"));
      }
      std::sort(segs.begin(), segs.end(), [](const Segment& a, const Segment& b) { return a.src < b.src; });
    }
  }
  if (into.copied || into.converted) mapped[dst] = into;
  if (converter) round_transfers.resize(round_moves.size());
  if (converter && !into.converted) {
    const std::uint64_t slot_bytes = converter->plan().slot_bytes;
    for (std::size_t k = 0; k < round_moves.size(); ++k) {
      if (auto it = round_moves[k].find(dst); it != round_moves[k].end()) {
        SW_ASSIGN_OR_RETURN(round_transfers[k][dst],
                            prepare(it->second, staging_region, (k % converter->plan().slots) * slot_bytes));
      }
    }
  }
  destination_names[dst] = peer.name;
  buffers_of[dst] = peer.second_region != 0 ? 2 : 1;
  return Status::Ok();
}

Result<workflows::PeerRank> WeightPublisher::State::ConnectTrainerPeer(int peer_rank) {
  Agent& agent = *endpoint.agent;
  SW_ASSIGN_OR_RETURN(workflows::PeerRank peer,
                      workflows::ImportPeerRank(*rendezvous, agent, options.job, kTrainerRole, peer_rank,
                                                options.timeout_s, options.interrupt, kInterruptPollSeconds));
  SW_RETURN_IF_ERROR(workflows::CheckPeerPlanSignature(*rendezvous, options.job, kTrainerRole, peer_rank,
                                                       plan_signature, options.timeout_s));
  SW_RETURN_IF_ERROR(agent.WireUp(peer.name, options.timeout_s));
  return peer;
}

Status WeightPublisher::Connect() {
  State& s = *state_;
  SW_RETURN_IF_ERROR(CheckOpen(s, "Connect"));
  Agent& agent = *s.endpoint.agent;
  // A Connect that failed or was interrupted half-way starts over.
  s.connected = false;
  for (const auto& [dst, bytes] : s.bytes_to) s.ReleaseTransfersTo(dst);
  s.amax_peer_names.clear();
  s.incarnation_of.clear();
  s.missed_at.clear();
  s.failed_connect.clear();
  // Static membership: every destination now. Dynamic: each when it joins (Push).
  if (!s.options.dynamic_membership) {
    for (const auto& [dst, bytes] : s.bytes_to) SW_RETURN_IF_ERROR(s.ConnectDestination(dst, 0, s.options.timeout_s));
  }
  // Each trainer peer is imported once per Connect (a reducer, an amax peer, a round peer): a
  // second import would orphan the transfers prepared against the first (the addend WRITEs).
  std::map<int, workflows::PeerRank> trainer_peers;
  auto trainer_peer = [&](int t) -> Result<workflows::PeerRank> {
    if (auto it = trainer_peers.find(t); it != trainer_peers.end()) return it->second;
    SW_ASSIGN_OR_RETURN(workflows::PeerRank peer, s.ConnectTrainerPeer(t));
    return trainer_peers.emplace(t, std::move(peer)).first->second;
  };
  // Partial(sum) sources: one prepared WRITE of this rank's addends into each other reducer's
  // scratch (slot offsets from the plan), and the agent names of the ranks whose addends come here.
  for (auto& [reducer, h] : s.copy_transfers) (void)agent.Release(h);
  s.copy_transfers.clear();
  s.addend_source_names.clear();
  s.slots_opened_for = 0;
  for (const auto& [reducer, copies] : s.copies_to) {
    SW_ASSIGN_OR_RETURN(const workflows::PeerRank peer, trainer_peer(reducer));
    if (peer.scratch_region == 0) {
      return CorruptData(fmt::format("trainer rank {} reduces Partial(sum) addends but published no scratch", reducer));
    }
    std::vector<TransferDescriptor> descriptors;
    for (const ReduceCopy& c : copies) {
      descriptors.push_back(TransferDescriptor{.local_region = s.endpoint.region,
                                               .local_offset = c.src_offset,
                                               .remote_region = peer.scratch_region,
                                               .remote_offset = c.slot_offset,
                                               .length = c.length,
                                               .count = c.count,
                                               .local_stride = c.src_stride,
                                               .remote_stride = c.slot_stride});
    }
    SW_ASSIGN_OR_RETURN(s.copy_transfers[reducer],
                        agent.PrepareTransfer(TransferOp::kWrite, peer.name, std::move(descriptors), std::nullopt));
    s.reducer_names[reducer] = peer.name;
  }
  // The addend sources are imported too: this rank tells them SLOTS_OPEN as each push starts.
  for (int src : s.addend_sources) {
    SW_ASSIGN_OR_RETURN(const workflows::PeerRank peer, trainer_peer(src));
    s.addend_source_names.insert(peer.name);
  }
  if (s.converter) {
    for (const BlockAmaxExchange& x : s.converter->plan().exchanges) {
      SW_ASSIGN_OR_RETURN(const workflows::PeerRank peer, trainer_peer(x.peer));
      s.amax_peer_names[x.peer] = peer.name;
    }
  }
  // Rounds: the trainer ranks this one waits for or tells ROUND_DONE.
  s.round_peer_names.clear();
  for (const State::Stage& stage : s.stages) {
    std::set<int> peers = stage.notify;
    for (const auto& [round, ranks] : stage.wait_for) peers.insert(ranks.begin(), ranks.end());
    for (int t : peers) {
      if (s.round_peer_names.count(t)) continue;
      SW_ASSIGN_OR_RETURN(const workflows::PeerRank peer, trainer_peer(t));
      s.round_peer_names[t] = peer.name;
    }
  }
  s.connected = true;
  return Status::Ok();
}

namespace {
Result<PushStats> PushVersion(WeightPublisher::State& s, std::uint64_t version);
}  // namespace

Result<PushStats> WeightPublisher::Push(std::uint64_t version) {
  State& s = *state_;
  SW_RETURN_IF_ERROR(CheckOpen(s, "Push"));
  const auto t0 = std::chrono::steady_clock::now();
  s.awaiting_done.clear();
  auto stats = PushVersion(s, version);
  if (!stats.ok()) {
    // The engine ranks that sent READY(v) wait for this rank's DONE(v), which will not come:
    // tell them why (MISSED with the error), best effort, so they fail v now. Not recorded as
    // a miss (missed_at): the push itself failed, and a retry of v (after an interrupt) must
    // reach a dynamic member that joined again for it.
    const auto missed =
        workflows::Encode({.kind = workflows::MessageKind::kMissed, .version = version, .reason = stats.status()});
    for (const auto& [dst, name] : s.awaiting_done) {
      if (const Status st = s.endpoint.agent->SendMessage(name, missed); !st.ok()) {
        spdlog::debug("trainer rank {} push v{}: MISSED to {} not sent: {}", s.rank, version, name, st.ToString());
      }
    }
    s.awaiting_done.clear();
    s.metrics.Failed(stats.status());
    return stats;
  }
  s.metrics.Pushed(version, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
                   stats->bytes);
  return stats;
}

namespace {

Result<PushStats> PushVersion(WeightPublisher::State& s, std::uint64_t version) {
  using State = WeightPublisher::State;
  Agent& agent = *s.endpoint.agent;
  if (!s.connected) return InvalidArgument("WeightPublisher::Push called before Connect");
  const std::string who = fmt::format("trainer rank {} push v{}", s.rank, version);
  if (version == 0 || version <= s.last_pushed) {
    return FailedPrecondition(
        fmt::format("{}: versions must increase (the last pushed version is v{}; 0 is reserved)", who, s.last_pushed));
  }
  {
    SW_ASSIGN_OR_RETURN(const std::int64_t latest, s.rendezvous->Add(s.claim_key, 0));
    if (latest < s.claim) {
      // Claims only grow: a smaller counter means the rendezvous forgot the job (an in-memory
      // coordinator restarted). Not another publisher, and not retryable.
      return FailedPrecondition(
          fmt::format("{}: the rendezvous lost job {}'s state (trainer rank {}'s claim counter is {}, below this "
                      "publisher's claim {}): was its coordinator restarted without Redis (serve --redis)? "
                      "Restart the job",
                      who, s.options.job, s.rank, latest, s.claim));
    }
    if (latest != s.claim) {
      return AlreadyExists(
          fmt::format("{}: another publisher claimed trainer rank {} of job {} (claim {}, this "
                      "one holds claim {}); this one stops",
                      who, s.rank, s.options.job, latest, s.claim));
    }
  }
  // As a Partial(sum) reducer, open the scratch slots for this version (SLOTS_OPEN, sync_messages.h):
  // its addend sources write only after it, so none overwrites slots a push of an older version
  // still sums or sends (a source may run a version ahead: its push ends before this one's).
  // A source that cannot be told fails this push's ADDEND wait, naming it.
  for (const std::string& source : s.addend_source_names) {
    if (const Status st = agent.SendMessage(source, workflows::Encode({workflows::MessageKind::kSlotsOpen, version}));
        !st.ok()) {
      spdlog::debug("{}: SLOTS_OPEN to {} not sent: {}", who, source, st.ToString());
    }
  }
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
  // Partial(sum) sources, reduced before anything reaches an engine: this rank's addends go
  // into their reducers' scratch slots (ADDEND(v) follows the remote completion), and as a
  // reducer it waits for the others' addends and sums the slots into slot 0, which the plan's
  // moves then carry. A trainer peer that fails here fails the push (no engine gets v).
  if (!s.copies_to.empty() || !s.reductions.empty() || !s.local_copies.empty()) {
    for (const ReduceCopy& c : s.local_copies) {
      for (std::uint64_t row = 0; row < c.count; ++row) {
        std::memcpy(s.endpoint.scratch.data() + c.slot_offset + row * c.slot_stride,
                    s.endpoint.weights.data() + c.src_offset + row * c.src_stride, c.length);
      }
    }
    if (!s.copy_transfers.empty() && s.slots_opened_for != version) {
      // The reducers' slots are written only once they opened them for this version.
      std::set<std::string> reducers;
      for (const auto& [reducer, name] : s.reducer_names) reducers.insert(name);
      SW_RETURN_IF_ERROR(s.inbox
                             .AwaitFromAll(agent, workflows::MessageKind::kSlotsOpen, version, reducers,
                                           s.options.timeout_s, nullptr, std::nullopt, s.options.interrupt)
                             .WithContext(fmt::format("{}: waiting for the Partial(sum) reducers to start v{} "
                                                      "(SLOTS_OPEN) before writing its addends",
                                                      who, version)));
      s.slots_opened_for = version;
    }
    // The addend WRITEs: waited for in slices (the interrupt hook is asked between them, this
    // process's own pauses do not count); a failed or interrupted wait stops every one still
    // running (1 s to drain, else its reducer is abandoned), so none outlives the push and the
    // next push can post them again.
    auto stop_addends = [&] {
      for (const auto& [reducer, h] : s.copy_transfers) {
        auto done = agent.Test(h);
        if (!done.ok() || *done) continue;
        if (!agent.Cancel(h, 1.0).ok()) (void)agent.InvalidatePeer(s.reducer_names.at(reducer));
      }
    };
    for (const auto& [reducer, h] : s.copy_transfers) {
      if (const Status st = agent.Post(h); !st.ok()) {
        stop_addends();
        return st.WithContext(fmt::format("{}: Partial(sum) addends to trainer rank {}", who, reducer));
      }
    }
    for (const auto& [reducer, h] : s.copy_transfers) {
      const Status st =
          s.options.interrupt
              ? workflows::WaitTransferWithoutOwnPauses(agent, h, s.options.timeout_s, kInterruptPollSeconds,
                                                        s.options.interrupt)
              : workflows::WaitTransferWithoutOwnPauses(agent, h, s.options.timeout_s, 0.25);
      if (!st.ok()) {
        stop_addends();
        return st.WithContext(fmt::format("{}: Partial(sum) addends to trainer rank {}", who, reducer));
      }
      SW_RETURN_IF_ERROR(
          agent.SendMessage(s.reducer_names.at(reducer), workflows::Encode({workflows::MessageKind::kAddend, version}))
              .WithContext(who));
    }
    SW_RETURN_IF_ERROR(s.inbox
                           .AwaitFromAll(agent, workflows::MessageKind::kAddend, version, s.addend_source_names,
                                         s.options.timeout_s, nullptr, std::nullopt, s.options.interrupt)
                           .WithContext(fmt::format("{}: Partial(sum) addends", who)));
    for (const Reduction& r : s.reductions) {
      SW_RETURN_IF_ERROR(workflows::SumSlots(static_cast<DType>(r.dtype), s.endpoint.scratch.subspan(r.scratch_offset),
                                             r.bytes, r.addends)
                             .WithContext(who));
    }
  }
  const auto t0 = Clock::now();
  // The destinations this push writes: every one (static membership), or the members of
  // the job for this version, (re)connected when their incarnation changed (dynamic).
  std::map<int, std::string> included = s.destination_names;
  std::map<std::string, std::int64_t> admitted_request;  // dynamic: agent name -> its join request in this membership
  if (s.options.dynamic_membership) {
    included.clear();
    workflows::Membership members;
    if (s.leader) {
      workflows::HoldWait held;
      SW_ASSIGN_OR_RETURN(members, s.leader->Publish(*s.rendezvous, s.options.job, s.engine_ranks, version, &held,
                                                     s.options.interrupt));
      stats.hold_s = held.seconds;
      stats.held_for = held.ranks;
      stats.hold_expired = held.expired;
    } else {
      SW_ASSIGN_OR_RETURN(members,
                          workflows::ReadMembership(*s.rendezvous, s.options.job, version, s.options.timeout_s));
    }
    for (const auto& [dst, bytes] : s.bytes_to) {
      auto m = members.members.find(dst);
      if (m == members.members.end()) {
        stats.absent.push_back(dst);
        continue;
      }
      const workflows::Member& member = m->second;
      auto missed = s.missed_at.find(dst);
      // Connects to the member's incarnation (its own metadata: a later process of the rank may
      // have published its own); false when that failed (it misses this push).
      auto connect = [&](int engine_rank, const char* why) {  // = dst (clang 14 lambdas capture no bindings)
        const std::pair<std::uint64_t, std::int64_t> record{member.incarnation, member.request};
        if (auto failed = s.failed_connect.find(engine_rank);
            failed != s.failed_connect.end() && failed->second.record == record) {
          // The same record failed before: no second wait for it (a stalled joiner would otherwise
          // cost engine_timeout_s per push, and its peers' updates would time out meanwhile).
          stats.missed.push_back(
              {engine_rank,
               Status(failed->second.why.code(),
                      fmt::format("engine rank {} missed v{}: connecting to its incarnation {} failed "
                                  "before ({}); waiting for a new process or a new join of the rank",
                                  engine_rank, version, member.incarnation, failed->second.why.message()))});
          return false;
        }
        // Bounded by engine_timeout_s, as a READY is: a joiner that stalls costs that once.
        if (const Status st = s.ConnectDestination(engine_rank, member.incarnation, s.options.engine_timeout_s);
            !st.ok()) {
          stats.missed.push_back(
              {engine_rank, st.WithContext(fmt::format("engine rank {} missed v{}: connecting to "
                                                       "incarnation {} ({})",
                                                       engine_rank, version, member.incarnation, why))});
          s.incarnation_of.erase(engine_rank);
          // Gone or stalled: not tried again for this record. Other errors (an interrupt, a plan
          // mismatch) return at once and are tried again by the next push.
          if (st.code() == ErrorCode::kPeerDisconnected || st.code() == ErrorCode::kTimedOut) {
            s.failed_connect[engine_rank] = {record, st};
          }
          return false;
        }
        s.failed_connect.erase(engine_rank);
        s.incarnation_of[engine_rank] = member.incarnation;
        return true;
      };
      if (s.incarnation_of[dst] != member.incarnation) {
        if (!connect(dst, "a new process in the slot")) continue;
        if (missed != s.missed_at.end()) s.missed_at.erase(missed);
      } else if (missed != s.missed_at.end()) {
        if (missed->second >= member.since) {
          // It missed an earlier push and has not joined again since: no wait for it.
          stats.missed.push_back({dst, Unavailable(fmt::format("engine rank {} missed v{}: it missed v{} and has "
                                                               "not joined again since",
                                                               dst, version, missed->second))});
          continue;
        }
        s.missed_at.erase(missed);
        // Joined again after a miss: if this rank abandoned the connection (a transfer it could
        // not drain: InvalidatePeer) or the transport declared the peer failed, connect again.
        const std::string& name = s.destination_names.at(dst);  // set by its first connection
        const std::vector<std::string> failed = agent.FailedPeers();
        if ((!agent.DescribePeer(name).ok() || std::find(failed.begin(), failed.end(), name) != failed.end()) &&
            !connect(dst, "joined again after this rank's connection to it was lost")) {
          continue;
        }
      }
      included[dst] = s.destination_names.at(dst);
      admitted_request[included[dst]] = member.request;
    }
    if (included.empty() && stats.missed.empty()) {
      return FailedPrecondition(
          fmt::format("{}: no engine rank of job {} is a member (none joined, or all left)", who, s.options.job));
    }
  }
  {
    std::set<std::string> names;
    for (const auto& [dst, name] : included) names.insert(name);
    // A member that filed a new request (joining again after a version it did not commit, or
    // leaving) sends no READY until a push applies it: its WITHDRAWN ends the wait for it.
    auto withdrawn = [&](const std::string& peer, const workflows::Message& m) -> std::optional<Status> {
      auto it = admitted_request.find(peer);
      if (it == admitted_request.end() || m.request <= it->second) return std::nullopt;  // admitted already
      return Unavailable(fmt::format(
          "{} withdrew from the membership after v{} (request {} is after {}, the one that admitted it: it joins "
          "again, leaves or was replaced); it sends no READY until a later push applies a request of its rank",
          peer, m.version, m.request, it->second));
    };
    // Every process of an engine rank has the rank's agent name: a READY from a process this
    // push did not connect to (one killed after sending it, replaced since) would have the
    // bytes written into the new process's buffers before it asked for them, maybe into the
    // one it serves. Only the connected incarnation's READY counts (0: static membership).
    std::map<std::string, std::uint64_t> incarnation_of_name;
    for (const auto& [dst, name] : included) {
      auto it = s.incarnation_of.find(dst);
      incarnation_of_name[name] = it != s.incarnation_of.end() ? it->second : 0;
    }
    auto from_connected = [&](const std::string& peer, const workflows::Message& m) {
      auto it = incarnation_of_name.find(peer);
      return it == incarnation_of_name.end() || m.incarnation.value_or(0) == it->second;
    };
    SW_ASSIGN_OR_RETURN(const workflows::Collected ready,
                        s.inbox.Collect(agent, workflows::MessageKind::kReady, version, names, engine_timeout_s,
                                        s.options.interrupt, withdrawn, from_connected));
    active = included;
    for (const auto& [dst, name] : included) {
      if (ready.arrived.count(name)) s.awaiting_done[dst] = name;  // told MISSED(v) if the push fails
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
  // Relays: an engine rank whose relay parent is ready gets this version through it; the
  // trainers write only the others (a child of a parent that is not ready is written directly).
  std::set<int> relayed;
  if (s.relay) {
    for (const auto& [dst, name] : active) {
      const int parent = s.relay->parent[static_cast<std::size_t>(dst)];
      if (parent >= 0 && active.count(parent)) relayed.insert(dst);
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
          agent.SendMessage(name, workflows::Encode({workflows::MessageKind::kBlockAmax, version, std::move(mine)}))
              .WithContext(who));
      peers.insert(name);
    }
    std::map<std::string, workflows::Message> received;
    SW_RETURN_IF_ERROR(s.inbox
                           .AwaitFromAll(agent, workflows::MessageKind::kBlockAmax, version, peers, s.options.timeout_s,
                                         &received, std::nullopt, s.options.interrupt)
                           .WithContext(who));
    for (const BlockAmaxExchange& x : s.converter->plan().exchanges) {
      const std::string& name = s.amax_peer_names.at(x.peer);
      SW_RETURN_IF_ERROR(s.converter->AddPeerAmax(x.receive, received.at(name).amax, name).WithContext(who));
    }
  }
  const auto t2 = Clock::now();
  const AgentStats before = agent.Stats();
  // The transfers of one round (or staging round) are waited for together, against one deadline
  // of engine_timeout_s (WaitTransfersWithoutOwnPauses: k stalled engines cost one timeout, not
  // k) that this process's own pauses and its lanes' stalls move (own_pause.h): a trainer that
  // was stopped for longer than engine_timeout_s does not fail a healthy engine's transfer for
  // it. A transfer that did not complete is then stopped; if it cannot be drained, the peer is
  // abandoned (InvalidatePeer) so that nothing of it outlives the push, and its engine rank
  // misses v. With an interrupt hook the wait runs in slices of kInterruptPollSeconds (else
  // 0.25 s); an interrupt cancels every transfer of this push still in flight (no DONE goes out,
  // so no engine commits the version) and ends the push.
  Status interrupted;
  std::vector<std::pair<TransferHandle, int>> posted;  // (handle, destination engine rank)
  auto settle = [&](const std::map<int, State::Handles>& transfers) {
    if (!interrupted.ok()) return;
    std::vector<int> dsts;
    std::vector<TransferHandle> handles;
    for (const auto& [dst, hs] : transfers) {
      if (!active.count(dst) || relayed.count(dst)) continue;
      dsts.push_back(dst);
      handles.push_back(hs[static_cast<std::size_t>(buffer_of.at(dst))]);
    }
    if (handles.empty()) return;
    std::vector<std::pair<std::size_t, Status>> failed_transfers;
    std::function<Status()> poll_interrupt;
    if (s.options.interrupt) {
      poll_interrupt = [&] {
        interrupted = s.options.interrupt();
        return interrupted;
      };
    }
    const Status waited = workflows::WaitTransfersWithoutOwnPauses(
        agent, handles, engine_timeout_s, s.options.interrupt ? kInterruptPollSeconds : 0.25,
        [&](std::size_t i, const Status& end) {
          if (!end.ok()) failed_transfers.emplace_back(i, end);
        },
        poll_interrupt);
    if (!waited.ok() || !interrupted.ok()) return;  // the push fails; cancel_posted stops what it posted
    for (const auto& [i, why] : failed_transfers) {
      if (why.code() == ErrorCode::kTimedOut && !agent.Cancel(handles[i], 1.0).ok())
        (void)agent.InvalidatePeer(active.at(dsts[i]));
      miss(dsts[i], why);
    }
  };
  // A failed or interrupted push stops what it posted: each transfer still running gets 1 s to
  // drain what UCX already issued, then its peer is abandoned (as settle does), so k stalled
  // engines cost about k seconds, not k x timeout_s.
  auto cancel_posted = [&] {
    for (const auto& [h, dst] : posted) {
      auto done = agent.Test(h);
      if (!done.ok() || *done) continue;
      if (!agent.Cancel(h, 1.0).ok() && active.count(dst)) (void)agent.InvalidatePeer(active.at(dst));
    }
  };
  // When the current round first wrote each destination (PushStats::round_spans).
  auto now_s = [] { return std::chrono::duration<double>(Clock::now().time_since_epoch()).count(); };
  std::map<int, double> posted_at;
  auto post = [&](int dst, const State::Handles& hs, const std::vector<Move>& moves) {
    if (!active.count(dst) || relayed.count(dst) || !interrupted.ok()) return;
    const TransferHandle h = hs[static_cast<std::size_t>(buffer_of.at(dst))];
    posted_at.emplace(dst, now_s());
    if (const Status st = agent.Post(h); !st.ok()) return miss(dst, st);
    posted.emplace_back(h, dst);
    stats.descriptors += moves.size();
    for (const Move& m : moves) stats.rows += m.count;
  };
  // The direct moves of a round into mapped engine buffers (copy_into_mapped): per group of
  // destinations with identical moves (the replicas of one shard), each chunk is copied into
  // every one of them while it is in cache, by lanes threads (replica_fanout.h). In a converting
  // push the copy runs beside the round's conversion, on threads of its own (as the lanes' copies
  // would), and the round collects it before it completes (collect_copy); otherwise this thread
  // is one of them. A destination whose mapping was revoked (its process died, or it was
  // invalidated) misses the version. Nothing that holds an Access calls into the agent: the
  // copy acquires the mappings on the thread that copies, in ascending destination order (as
  // the conversion's threads do: one order, so no two threads take two of them in opposite
  // orders), and releases them when the copy ends, before this thread's next agent call
  // (run_copy).
  struct StageCopy {
    std::vector<std::pair<int, const MappedRegion*>> targets;  // ascending destinations
    std::vector<const std::vector<Move>*> moves_of;            // per target
    std::vector<workflows::FanoutGroup> groups;
    std::vector<std::pair<int, Status>> revoked;  // targets whose mapping was revoked (they miss v)
    workflows::FanoutStats done;
    std::thread worker;  // a converting push's copy
    ~StageCopy() {
      if (worker.joinable()) worker.join();
    }
  };
  const workflows::FanoutSource fanout_source{s.endpoint.weights.first(s.buffer_bytes), s.endpoint.scratch};
  const std::size_t copy_threads = agent.options().lanes;
  // Acquires the targets' mappings, groups the destinations with identical moves (the replicas
  // of one shard), copies, and releases the mappings. Runs on the copying thread.
  auto run_copy = [&fanout_source, copy_threads](StageCopy& c) {
    std::vector<MappedRegion::Access> held;
    for (std::size_t i = 0; i < c.targets.size(); ++i) {
      auto access = c.targets[i].second->Acquire();
      if (!access.ok()) {
        c.revoked.emplace_back(c.targets[i].first, access.status());
        continue;
      }
      std::byte* base = access->bytes().data();
      held.push_back(std::move(*access));
      const std::vector<Move>* moves = c.moves_of[i];
      auto group = std::find_if(c.groups.begin(), c.groups.end(),
                                [&](const workflows::FanoutGroup& g) { return *g.moves == *moves; });
      if (group == c.groups.end()) {
        c.groups.push_back({moves, {base}});
      } else {
        group->destinations.push_back(base);
      }
    }
    c.done = workflows::CopyToReplicas(c.groups, fanout_source, copy_threads);
  };
  std::unique_ptr<StageCopy> copying;  // after run_copy: its destructor joins a thread running run_copy
  auto collect_copy = [&] {
    if (!copying) return;
    if (copying->worker.joinable()) copying->worker.join();
    for (auto& [dst, why] : copying->revoked) miss(dst, why);
    stats.copied_bytes += copying->done.bytes_written;
    stats.copy_read_bytes += copying->done.bytes_read;
    stats.copy_cpu_s += copying->done.cpu_s;
    copying.reset();
  };
  auto copy_stage = [&](const State::Stage& stage) {
    if (!interrupted.ok()) return;
    auto c = std::make_unique<StageCopy>();
    for (const auto& entry : stage.moves) {  // not a structured binding: clang 14 lambdas cannot capture one
      const int dst = entry.first;
      const std::vector<Move>& moves = entry.second;
      auto into = s.mapped.find(dst);
      if (into == s.mapped.end() || !into->second.copied || !active.count(dst) || relayed.count(dst)) continue;
      c->targets.emplace_back(dst, &into->second.views[static_cast<std::size_t>(buffer_of.at(dst))]);
      c->moves_of.push_back(&moves);
      posted_at.emplace(dst, now_s());
      stats.descriptors += moves.size();
      for (const Move& m : moves) stats.rows += m.count;
    }
    if (c->targets.empty()) return;
    copying = std::move(c);
    StageCopy* pending = copying.get();
    if (s.converter) {
      try {
        pending->worker = std::thread([pending, &run_copy] { run_copy(*pending); });
        return;
      } catch (const std::system_error&) {
        // No thread: copy here, before the conversion.
      }
    }
    run_copy(*pending);
  };
  // The push, round by round (the schedule of both plans, PushStages): a round first waits for
  // the ROUND_DONE of the trainer ranks that wrote its engine ranks in their previous round,
  // then posts every destination's prepared direct transfer so they progress together, copies
  // the direct moves into mapped destinations itself (copy_stage), converts
  // and sends the round's converted bytes meanwhile, and completes by waiting for each (Wait
  // returns after remote completion: the bytes are visible at the destination, so DONE(v), sent
  // only after the last round, can never overtake the data); then it tells the next round's
  // writers. A round's span per destination (PushStats::round_spans) runs from its first write
  // there (a post, or a copy into its mapping) to the round's completion.
  auto begin_stage = [&](const State::Stage& stage) -> Status {
    for (const auto& [round, ranks] : stage.wait_for) {
      std::set<std::string> names;
      for (int t : ranks) names.insert(s.round_peer_names.at(t));
      const auto w0 = Clock::now();
      SW_RETURN_IF_ERROR(s.inbox
                             .AwaitFromAll(agent, workflows::MessageKind::kRoundDone, version, names,
                                           s.options.timeout_s, nullptr, std::nullopt, s.options.interrupt, round)
                             .WithContext(fmt::format("round {} waits for the trainer ranks that wrote its engine "
                                                      "ranks in round {}",
                                                      stage.round, round)));
      stats.round_wait_s += Seconds(w0, Clock::now());
    }
    posted_at.clear();
    for (const auto& [dst, hs] : stage.transfers) post(dst, hs, stage.moves.at(dst));
    copy_stage(stage);
    ++stats.rounds;
    return Status::Ok();
  };
  auto finish_stage = [&](const State::Stage& stage) -> Status {
    collect_copy();
    settle(stage.transfers);
    for (const auto& [dst, at] : posted_at) {
      if (active.count(dst)) stats.round_spans.push_back({stage.round, dst, at, now_s()});
    }
    if (!interrupted.ok()) return interrupted;
    const auto done =
        workflows::Encode({.kind = workflows::MessageKind::kRoundDone, .version = version, .round = stage.round});
    for (int t : stage.notify) {
      SW_RETURN_IF_ERROR(
          agent.SendMessage(s.round_peer_names.at(t), done)
              .WithContext(fmt::format("{}: ROUND_DONE of round {} to trainer rank {}", who, stage.round, t)));
    }
    return Status::Ok();
  };
  auto fail_push = [&](Status st) {
    cancel_posted();
    return st.WithContext(who);
  };
  // Integrity check: per destination, the digest of every byte sent, in the order the engine
  // hashes what landed (push_digest.h): the direct moves, then the converted ones in staging
  // round order.
  std::map<int, workflows::PushDigest> digests;
  if (s.options.verify_digests) {
    for (const auto& [dst, name] : active) {
      workflows::PushDigest& digest = digests[dst];
      if (auto it = s.moves_by_destination.find(dst); it != s.moves_by_destination.end()) {
        digest.AddSource(s.endpoint.weights.first(s.buffer_bytes), s.endpoint.scratch, it->second);
      }
    }
  }
  // Conversion: within a round, staging round k is converted into slot k % slots while the
  // staging rounds before it are on the wire; before slot k % slots is overwritten, staging
  // round k - slots' WRITEs must have completed. A round's staging rounds all complete before
  // the round does.
  std::function<Status(std::uint32_t)> convert_round;  // converts and sends one schedule round
  std::function<void()> finish_conversion;
  std::deque<std::size_t> staged_rounds;       // staged rounds whose WRITEs may still read their slot
  std::vector<std::pair<int, Status>> failed;  // mapped destinations whose mapping was revoked
  std::map<int, const MappedRegion*> views;
  std::function<int(int)> root_of = [](int dst) { return dst; };
  double convert_s = 0, convert_cpu_s = 0;
  std::uint64_t in_flight = 0;  // bytes of the staged rounds after the last settled one
  auto settle_round = [&](std::size_t k) {
    if (k >= s.round_transfers.size()) return;
    settle(s.round_transfers[k]);
  };
  if (s.converter) {
    // Destinations written through their mapping (State::mapped) in this push, with the mapping
    // of the buffer READY named; held (MappedRegion::Access) one staging round at a time.
    // A relayed destination is not written here (its relay parent forwards the bytes); its
    // digest is computed where its tree's root got the same bytes (same offsets).
    for (const auto& [dst, into] : s.mapped) {
      if (into.converted && active.count(dst) && !relayed.count(dst))
        views[dst] = &into.views[static_cast<std::size_t>(buffer_of.at(dst))];
    }
    root_of = [&](int dst) {
      while (relayed.count(dst)) dst = s.relay->parent[static_cast<std::size_t>(dst)];
      return dst;
    };
    convert_round = [&](std::uint32_t schedule_round) -> Status {
      const TrainerConversion& tc = s.converter->plan();
      const std::size_t slots = tc.slots;
      struct Held {
        int dst;
        MappedRegion::Access access;
        const std::vector<State::Segment>* segments;
      };
      // Copies bytes of the staging round's slot at `slot_offset` to every held destination's segments.
      auto scatter = [](std::vector<Held>& held, std::uint64_t slot_offset, std::span<const std::byte> bytes) {
        const std::uint64_t end = slot_offset + bytes.size();
        for (Held& h : held) {
          const auto& segs = *h.segments;
          auto it = std::partition_point(segs.begin(), segs.end(),
                                         [&](const State::Segment& g) { return g.src + g.length <= slot_offset; });
          std::byte* base = h.access.bytes().data();
          for (; it != segs.end() && it->src < end; ++it) {
            const std::uint64_t a = std::max(it->src, slot_offset), b = std::min(it->src + it->length, end);
            std::byte* to = base + it->dst + (a - it->src);
            const std::byte* from = bytes.data() + (a - slot_offset);
            if (b - a >= kMinStreamCopyBytes) {
              StreamCopy(to, from, b - a);  // the engine reads it, not this core: no read-for-ownership
            } else {
              std::memcpy(to, from, b - a);
            }
          }
        }
        StreamFence();  // visible before the push reports the version written
      };
      // Holds the mappings of staging round k's mapped destinations; one whose mapping was
      // revoked (its process died, or it was invalidated) is reported in `out` and skipped.
      auto hold = [&](std::size_t k, std::vector<std::pair<int, Status>>& out) {
        std::vector<Held> held;
        for (const auto& [dst, view] : views) {
          if (!active.count(dst) || k >= s.round_segments.size()) continue;
          auto segs = s.round_segments[k].find(dst);
          if (segs == s.round_segments[k].end()) continue;
          auto access = view->Acquire();
          if (!access.ok()) {
            out.emplace_back(dst, access.status());
            continue;
          }
          held.push_back({dst, std::move(*access), &segs->second});
        }
        return held;
      };
      std::vector<std::size_t> mapped_rounds;  // staging rounds no active destination takes from a slot
      for (std::size_t k = 0; k < tc.rounds.size(); ++k) {
        if (tc.rounds[k].schedule_round != schedule_round) continue;
        bool staged = false;  // some destination of this round takes it from the staging slot
        if (k < s.round_transfers.size()) {
          for (const auto& [dst, hs] : s.round_transfers[k]) staged = staged || active.count(dst) > 0;
        }
        if (!staged) {
          mapped_rounds.push_back(k);
          continue;
        }
        while (!staged_rounds.empty() && staged_rounds.front() + slots <= k) {
          settle_round(staged_rounds.front());
          in_flight -= tc.rounds[staged_rounds.front()].bytes;
          staged_rounds.pop_front();
        }
        if (!interrupted.ok()) break;
        staged_rounds.push_back(k);
        in_flight += tc.rounds[k].bytes;
        stats.staging_peak_bytes = std::max(stats.staging_peak_bytes, in_flight);
        const auto c0 = Clock::now();
        const double cpu0 = ThreadCpuSeconds();
        const auto slot = s.staging.subspan((k % slots) * tc.slot_bytes, tc.slot_bytes);
        SW_RETURN_IF_ERROR(s.converter->ConvertRound(k, slot));
        if (s.options.verify_digests) {  // before the slot is reused
          for (auto& [dst, digest] : digests) {
            if (views.count(root_of(dst))) continue;  // hashed from the mapped buffer at the end
            if (auto it = s.round_moves[k].find(dst); it != s.round_moves[k].end()) {
              digest.Add(s.staging.data() + (k % slots) * tc.slot_bytes, it->second, workflows::MoveSide::kSource);
            }
          }
        }
        for (const auto& [dst, hs] : s.round_transfers[k]) post(dst, hs, s.round_moves[k].at(dst));
        // Mapped destinations of a staging round that is staged anyway copy from the slot.
        std::vector<Held> held = hold(k, failed);
        for (const Held& h : held) posted_at.emplace(h.dst, now_s());
        for (std::uint64_t b = 0; !held.empty() && b < tc.rounds[k].bytes; b += std::uint64_t{1} << 20) {
          const std::uint64_t n = std::min<std::uint64_t>(std::uint64_t{1} << 20, tc.rounds[k].bytes - b);
          scatter(held, b, std::span<const std::byte>(slot.data() + b, n));
        }
        convert_s += Seconds(c0, Clock::now());
        convert_cpu_s += ThreadCpuSeconds() - cpu0;
      }
      // The staging rounds every active destination of which is mapped: converted a few rows at
      // a time into a cache-resident scratch and copied straight into the engine buffers (no slot,
      // no transfer; the bytes are there when the copy returns), by the pushing thread and
      // convert_threads - 1 helpers taking staging rounds in turn (the lanes are busy with the
      // round's direct bytes meanwhile).
      if (!mapped_rounds.empty() && interrupted.ok()) {
        const std::size_t workers =
            std::clamp<std::size_t>(s.options.convert_threads, 1, std::min(mapped_rounds.size(), s.scratches.size()));
        std::atomic<std::size_t> next{0};
        std::vector<Status> errors(workers);
        std::vector<std::vector<std::pair<int, Status>>> worker_failed(workers);
        std::vector<double> cpu(workers, 0.0);
        auto work = [&](std::size_t w) {
          const double cpu0 = ThreadCpuSeconds();
          for (std::size_t i = next++; i < mapped_rounds.size() && errors[w].ok(); i = next++) {
            const std::size_t k = mapped_rounds[i];
            std::vector<Held> held = hold(k, worker_failed[w]);
            if (held.empty()) continue;
            errors[w] =
                s.converter->ConvertRoundTo(k, s.scratches[w], [&](std::uint64_t at, std::span<const std::byte> bytes) {
                  scatter(held, at, bytes);
                  return Status::Ok();
                });
          }
          cpu[w] = ThreadCpuSeconds() - cpu0;
        };
        for (std::size_t k : mapped_rounds) {
          for (const auto& [dst, view] : views) {
            if (active.count(dst) && k < s.round_segments.size() && s.round_segments[k].count(dst))
              posted_at.emplace(dst, now_s());
          }
        }
        const auto c0 = Clock::now();
        workflows::RunOnWorkers(workers, work);
        convert_s += Seconds(c0, Clock::now());
        for (std::size_t w = 0; w < workers; ++w) {
          convert_cpu_s += cpu[w];
          SW_RETURN_IF_ERROR(errors[w]);
          failed.insert(failed.end(), worker_failed[w].begin(), worker_failed[w].end());
        }
      }
      // Mapped destinations whose mapping was revoked miss the version (later rounds skip them).
      for (auto& [dst, why] : failed) miss(dst, why);
      failed.clear();
      // The round completes with its staged bytes.
      for (std::size_t k : staged_rounds) {
        settle_round(k);
        in_flight -= tc.rounds[k].bytes;
      }
      staged_rounds.clear();
      return Status::Ok();
    };
    finish_conversion = [&] {
      const TrainerConversion& tc = s.converter->plan();
      // Per mapped destination still in the push: its bytes and the digest of what was written,
      // read back from its buffer staging round by staging round in move order (the order the
      // engine hashes).
      for (const auto& [dst, view] : views) {
        if (!active.count(dst)) continue;
        auto access = view->Acquire();
        if (!access.ok()) {
          miss(dst, access.status());
          continue;
        }
        for (std::size_t k = 0; k < tc.rounds.size(); ++k) {
          auto it = s.round_moves[k].find(dst);
          if (it == s.round_moves[k].end()) continue;
          for (const Move& m : it->second) stats.mapped_bytes += m.bytes();
        }
        // Its digest, and those of the destinations relayed from it, from what was written here.
        for (auto& [target, digest] : digests) {
          if (root_of(target) != dst || !active.count(target)) continue;
          for (std::size_t k = 0; k < tc.rounds.size(); ++k) {
            auto it = s.round_moves[k].find(target);
            if (it != s.round_moves[k].end())
              digest.Add(access->bytes().data(), it->second, workflows::MoveSide::kDestination);
          }
        }
      }
      stats.convert_s = convert_s;
      stats.convert_cpu_s = convert_cpu_s;
      stats.converted_bytes = s.converted_bytes_per_push;
      stats.staging_bytes = s.staging.size();
    };
  }
  for (const State::Stage& stage : s.stages) {
    Status st = begin_stage(stage);
    if (st.ok() && convert_round) st = convert_round(stage.round);
    if (st.ok()) st = finish_stage(stage);
    if (!st.ok()) return fail_push(st);
  }
  if (finish_conversion) finish_conversion();
  if (!interrupted.ok()) return fail_push(interrupted);
  s.awaiting_done.clear();  // from here each is sent DONE(v), or MISSED(v) as one that missed it
  // Ascending ranks: a relay parent (always a lower rank than its children) is settled first.
  for (const auto& [dst, name] : std::map<int, std::string>(active)) {
    if (relayed.count(dst)) {
      const int parent = s.relay->parent[static_cast<std::size_t>(dst)];
      if (!active.count(parent)) {
        miss(dst, Unavailable(fmt::format("its relay parent, engine rank {}, missed v{}", parent, version)));
        continue;
      }
    }
    if (s.relay && s.relay->Relays(dst)) {
      // Before DONE: where this rank's bytes come from and whom it forwards them to.
      workflows::Message plan{workflows::MessageKind::kRelayPlan, version};
      if (relayed.count(dst))
        plan.relay_from = static_cast<std::uint32_t>(s.relay->parent[static_cast<std::size_t>(dst)]);
      for (int child : s.relay->children[static_cast<std::size_t>(dst)]) {
        if (!relayed.count(child) || !active.count(child)) continue;
        plan.relay_to.push_back({static_cast<std::uint32_t>(child), static_cast<std::uint8_t>(buffer_of.at(child)),
                                 s.incarnation_of.count(child) ? s.incarnation_of.at(child) : 0});
      }
      if (const Status st = agent.SendMessage(name, workflows::Encode(plan)); !st.ok()) {
        miss(dst, st);
        continue;
      }
    }
    workflows::Message done{workflows::MessageKind::kDone, version};
    if (auto it = digests.find(dst); it != digests.end()) done.digest = it->second.value();
    if (const Status st = agent.SendMessage(name, workflows::Encode(done)); !st.ok()) miss(dst, st);
  }
  // Tell each engine rank that missed v, so that its WaitForUpdate(v) ends now instead of at
  // its timeout (a stalled one sees it when it resumes; a dead one does not care).
  const auto missed_msg = workflows::Encode({workflows::MessageKind::kMissed, version});
  for (const MissedEngine& m : stats.missed) {
    s.missed_at[m.engine_rank] = version;
    if (!included.count(m.engine_rank)) continue;  // skipped before READY: it was told before
    if (auto it = s.destination_names.find(m.engine_rank); it != s.destination_names.end()) {
      (void)agent.SendMessage(it->second, missed_msg);
    }
  }
  const auto t3 = Clock::now();
  const AgentStats after = agent.Stats();
  stats.direct_copy_bytes = after.direct_copy_bytes - before.direct_copy_bytes;
  stats.ucx_requests = after.ucx_requests - before.ucx_requests;
  stats.kernel_copy_bytes = after.kernel_copy_bytes - before.kernel_copy_bytes;
  for (const auto& [dst, name] : active) {
    if (relayed.count(dst)) {
      stats.relayed.push_back(dst);
    } else {
      stats.bytes += s.bytes_to[dst];
    }
  }
  stats.ready_wait_s = std::max(0.0, Seconds(t0, t1) - stats.hold_s);  // a catch-up hold is not a READY wait
  stats.amax_exchange_s = Seconds(t1, t2);
  stats.transfer_s = Seconds(t2, t3);
  if (!active.empty()) s.last_pushed = version;
  for (const MissedEngine& m : stats.missed) s.metrics.Missed(m.engine_rank, m.reason);
  if (active.empty() && !stats.missed.empty() && !s.options.dynamic_membership) {
    std::string why;
    for (const MissedEngine& m : stats.missed) why += (why.empty() ? "" : "; ") + m.reason.ToString();
    return PeerDisconnected(fmt::format("{}: no engine rank received it: {}", who, why));
  }
  return stats;
}
}  // namespace

}  // namespace shardwire
