#include <algorithm>
#include <array>
#include <chrono>
#include <map>
#include <set>
#include <utility>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "shardwire/planner.h"
#include "shardwire/weight_sync.h"
#include "workflows/first_touch_probe.h"
#include "workflows/membership.h"
#include "workflows/own_pause.h"
#include "workflows/push_digest.h"
#include "workflows/rank_endpoint.h"
#include "workflows/relay_tree.h"
#include "workflows/sync_messages.h"
#include "workflows/workflow_metrics.h"

namespace shardwire {

namespace {
constexpr const char* kTrainerRole = "trainer";
constexpr const char* kEngineRole = "engine";
// The longest wait a timeout stands for (+inf): 1e9 s (31 years); a longer one overflows the clock.
constexpr double kLongestWaitSeconds = 1e9;
}  // namespace

struct WeightSubscriber::State {
  Rendezvous* rendezvous = nullptr;
  WeightSyncOptions options;
  workflows::SubscriberMetrics metrics;  // WeightSyncOptions::metrics (no-op without)
  int rank = 0;
  workflows::RankEndpoint endpoint;
  std::vector<int> sources;
  std::uint64_t bytes_per_update = 0;
  std::set<std::string> source_names;
  std::uint64_t begun_version = 0;
  std::chrono::steady_clock::time_point begun_at;
  Status begin_failure;  // the first READY of begun_version that could not be sent (WaitForUpdate reports it)
  std::uint64_t committed_version = 0;
  bool torn = false;              // single-buffered: from BeginUpdate until a commit, weights() may mix versions
  int serving = 0;                // double-buffered: which buffer holds committed_version (0 = endpoint.weights)
  bool updating = false;          // between BeginUpdate and the end of WaitForUpdate
  std::uint64_t incarnation = 0;  // dynamic membership
  bool joined = false;
  bool closed = false;            // Close ran: every call but the accessors fails
  bool admitted = false;          // a push admitted one of this process's join requests
  std::int64_t admitted_request = 0;  // the request of its latest admission
  std::int64_t join_request = 0;  // filed and not yet answered
  std::int64_t hold_request = 0;  // the latest catch-up hold filed (HoldPushes)
  std::string plan_signature;     // trainers must have the same (SyncPlanSignature)
  // verify_digests: per source rank, the moves it writes here, in the order it hashes them.
  std::map<int, std::vector<Move>> digest_moves;
  std::map<std::string, int> source_rank_of;  // agent name -> trainer rank
  workflows::Inbox inbox;
  // relay_broadcasts: the tree, the ranges a push writes here (what a forward copies), and per
  // child the process it was connected to and the prepared forwards by (own buffer, its buffer).
  std::optional<workflows::RelayTree> relay;
  std::vector<workflows::ByteRange> relay_ranges;
  struct RelayChild {
    std::uint64_t incarnation = 0;
    std::string name;
    std::array<RegionId, 2> regions{};
    std::map<std::pair<int, int>, TransferHandle> forwards;
  };
  std::map<int, RelayChild> relay_children;
  int relay_parent = -1;  // the relay parent whose metadata was imported (its liveness is watched)
  // The last version whose wait failed after this rank told its relay children it will not
  // forward it: beginning or waiting for it again is refused (they have given it up).
  std::uint64_t abandoned_version = 0;
  // A version this rank failed while its relay parent (imported) may still forward it: the
  // parent is told (MISSED, child -> parent) when this rank moves on (BeginUpdate of a later
  // version, AdoptVersion, Join, HoldPushes, Leave, the destructor), since from then on a late
  // forward would land over other bytes. Not at the failure itself: an interrupted wait may be
  // called again and take the forward.
  std::uint64_t unforwarded_version = 0;
  // Tells the relay parent that this rank gave up unforwarded_version (best effort), once.
  void DeclineForward();

  std::span<std::byte> Buffer(int b) const { return b == 0 ? endpoint.weights : endpoint.second_weights; }
  RegionId Region(int b) const { return b == 0 ? endpoint.region : endpoint.second_region; }
  // Tells every source that this member filed membership request `request` and sends no READY
  // until a push applies it (WITHDRAWN): trainers waiting for its READY stop at once instead of
  // at engine_timeout_s. Best effort (a source it cannot reach is not waiting for it either).
  void Withdraw(std::int64_t request);
  // The prepared WRITE of this rank's pushed ranges from its buffer `own` into `target`'s buffer
  // (connecting to the target's process first when it is new, each step of the connect bounded
  // by `timeout_s` seconds).
  Result<TransferHandle> Forward(const workflows::RelayTarget& target, int own, double timeout_s);
  // Connects to `target`'s process (imports its metadata, checks its plan signature, wires the
  // lanes up; each step bounded by `timeout_s` seconds) unless connected to it already.
  Result<RelayChild*> ConnectChild(const workflows::RelayTarget& target, double timeout_s);
  // Tells `targets` that this rank will not forward `version` (best effort); returns how many
  // children it sent that to. `plans_known` false (its wait failed before every source's
  // RELAY_PLAN of `version` arrived, so a child may be waiting for a forward this rank never
  // heard of): also every child of the tree it is connected to, so that none waits out its
  // RELAYED bound.
  int AbandonForwards(std::uint64_t version, const std::map<int, workflows::RelayTarget>& targets, bool plans_known);
  void ReleaseForwards(RelayChild& child);
  // Forwards committed version `version` (in buffer `own`) to `targets`; fills the stats.
  void ForwardVersion(std::uint64_t version, int own, const std::map<int, workflows::RelayTarget>& targets,
                      UpdateStats& stats);
};

void WeightSubscriber::State::Withdraw(std::int64_t request) {
  workflows::Message m{workflows::MessageKind::kWithdrawn, begun_version};
  m.request = request;
  const auto payload = workflows::Encode(m);
  for (const std::string& name : source_names) (void)endpoint.agent->SendMessage(name, payload);
}

void WeightSubscriber::State::DeclineForward() {
  if (unforwarded_version == 0) return;
  const std::uint64_t version = std::exchange(unforwarded_version, 0);
  const int tree_parent = relay ? relay->parent[static_cast<std::size_t>(rank)] : -1;
  if (tree_parent < 0) return;
  if (relay_parent != tree_parent) {
    // Never imported (this rank failed before its first relayed version's plans, or the
    // import after a failure did not succeed): the parent may still forward v, so it is
    // imported now if its metadata is published (no waiting: this runs in BeginUpdate and
    // Join, before READY; a parent not published yet has not begun and forwards nothing).
    if (!workflows::ImportPeerRank(*rendezvous, *endpoint.agent, options.job, kEngineRole, tree_parent,
                                   /*timeout_s=*/0, nullptr, kInterruptPollSeconds)
             .ok())
      return;
    relay_parent = tree_parent;
  }
  (void)endpoint.agent->SendMessage(workflows::MetadataKey(options.job, kEngineRole, tree_parent),
                                    workflows::Encode({workflows::MessageKind::kMissed, version}));
}

void WeightSubscriber::State::ReleaseForwards(RelayChild& child) {
  for (const auto& [buffers, h] : child.forwards) (void)endpoint.agent->Release(h);
  child.forwards.clear();
}

Result<WeightSubscriber::State::RelayChild*> WeightSubscriber::State::ConnectChild(const workflows::RelayTarget& target,
                                                                                   double timeout_s) {
  const int child_rank = static_cast<int>(target.rank);
  RelayChild& child = relay_children[child_rank];
  if (child.name.empty() || child.incarnation != target.incarnation) {
    ReleaseForwards(child);
    child.name.clear();
    SW_ASSIGN_OR_RETURN(
        const workflows::PeerRank peer,
        workflows::ImportPeerRank(*rendezvous, *endpoint.agent, options.job, kEngineRole, child_rank, timeout_s,
                                  options.interrupt, kInterruptPollSeconds, target.incarnation));
    SW_RETURN_IF_ERROR(workflows::CheckPeerPlanSignature(*rendezvous, options.job, kEngineRole, child_rank,
                                                         plan_signature, timeout_s));
    SW_RETURN_IF_ERROR(endpoint.agent->WireUp(peer.name, timeout_s));
    child = RelayChild{target.incarnation, peer.name, {peer.region, peer.second_region}, {}};
  }
  return &child;
}

int WeightSubscriber::State::AbandonForwards(std::uint64_t version,
                                             const std::map<int, workflows::RelayTarget>& targets, bool plans_known) {
  const auto missed = workflows::Encode({workflows::MessageKind::kMissed, version});
  // Each bounded as a forward is: a child that stalls costs engine_timeout_s, not timeout_s.
  const double bound_s = std::min(options.engine_timeout_s, options.timeout_s);
  int told = 0;
  for (const auto& [child_rank, target] : targets) {
    auto child = ConnectChild(target, bound_s);
    if (!child.ok()) continue;
    (void)endpoint.agent->SendMessage((*child)->name, missed);
    ++told;
  }
  if (plans_known || !relay) return told;
  // Only the children connected already (with a fixed membership, Connect connected them all;
  // with a dynamic one, those a past plan named): no connect in a failure path. Not told, and so
  // waiting out their RELAYED bound ((d + 1) x engine_timeout_s at depth d): a dynamic member this rank never
  // forwarded to, a new process of a child, a child whose last forward failed (its connection is
  // dropped until the next forward). A child that got v directly and awaits no forward drops this
  // MISSED(v) in its next wait (Inbox).
  for (int child_rank : relay->children[static_cast<std::size_t>(rank)]) {
    auto it = relay_children.find(child_rank);
    if (targets.contains(child_rank) || it == relay_children.end() || it->second.name.empty()) continue;
    (void)endpoint.agent->SendMessage(it->second.name, missed);
    ++told;
  }
  return told;
}

Result<TransferHandle> WeightSubscriber::State::Forward(const workflows::RelayTarget& target, int own,
                                                        double timeout_s) {
  const int child_rank = static_cast<int>(target.rank);
  SW_ASSIGN_OR_RETURN(RelayChild* const connected, ConnectChild(target, timeout_s));
  RelayChild& child = *connected;
  const std::pair<int, int> key{own, target.buffer};
  if (auto it = child.forwards.find(key); it != child.forwards.end()) return it->second;
  const RegionId remote = child.regions[target.buffer];
  if (remote == 0) {
    return CorruptData(fmt::format("engine rank {} asked for buffer {} it never published", child_rank, target.buffer));
  }
  std::vector<TransferDescriptor> descriptors;
  for (const workflows::ByteRange& r : relay_ranges) {
    descriptors.push_back(TransferDescriptor{.local_region = Region(own),
                                             .local_offset = r.offset,
                                             .remote_region = remote,
                                             .remote_offset = r.offset,
                                             .length = r.length});
  }
  SW_ASSIGN_OR_RETURN(const TransferHandle h, endpoint.agent->PrepareTransfer(TransferOp::kWrite, child.name,
                                                                              std::move(descriptors), std::nullopt));
  child.forwards[key] = h;
  return h;
}

void WeightSubscriber::State::ForwardVersion(std::uint64_t version, int own,
                                             const std::map<int, workflows::RelayTarget>& targets, UpdateStats& stats) {
  const auto t0 = std::chrono::steady_clock::now();
  Agent& agent = *endpoint.agent;
  const double bound_s = std::min(options.engine_timeout_s, options.timeout_s);
  std::map<int, TransferHandle> posted;
  auto fail = [&](int child, Status st) {
    stats.relay_failed.push_back(
        {child, st.WithContext(fmt::format("engine rank {} forwarding v{} to engine rank {}", rank, version, child))});
    // Best effort: the child stops waiting for this forward now rather than at its timeout.
    if (auto it = relay_children.find(child); it != relay_children.end() && !it->second.name.empty()) {
      (void)agent.SendMessage(it->second.name, workflows::Encode({workflows::MessageKind::kMissed, version}));
    }
  };
  for (const auto& [child, target] : targets) {
    auto h = Forward(target, own, bound_s);  // a stalled child's connect costs bound_s, not timeout_s
    if (!h.ok()) {
      fail(child, h.status());
      continue;
    }
    // A child that gave v up (its RELAYED wait ended: this rank is late) may be taking v+1 into
    // the buffer this forward would write: asked right before the post, nothing is written.
    const std::string child_name = workflows::MetadataKey(options.job, kEngineRole, child);
    if (!inbox.TakeArrived(agent, workflows::MessageKind::kMissed, version, {child_name}).empty()) {
      stats.relay_failed.push_back(
          {child, FailedPrecondition(fmt::format("engine rank {} gave v{} up before engine rank {} forwarded it "
                                                 "(the forward came after its RELAYED wait); not written",
                                                 child, version, rank))});
      continue;
    }
    if (Status st = agent.Post(*h); !st.ok()) {
      fail(child, st);
      continue;
    }
    posted[child] = *h;
  }
  // One deadline for every forward (k stalled children cost one bound_s, not k), which this
  // process's own pauses do not count; each child hears RELAYED as soon as its forward is seen
  // complete, whatever the others do.
  std::vector<int> children;
  std::vector<TransferHandle> handles;
  for (const auto& [child, h] : posted) {
    children.push_back(child);
    handles.push_back(h);
  }
  (void)workflows::WaitTransfersWithoutOwnPauses(agent, handles, bound_s, 0.25, [&](std::size_t i, Status st) {
    const int child = children[i];
    if (st.code() == ErrorCode::kTimedOut && !agent.Cancel(handles[i], 1.0).ok()) {
      (void)agent.InvalidatePeer(relay_children.at(child).name);
    }
    if (st.ok()) {
      st = agent.SendMessage(relay_children.at(child).name,
                             workflows::Encode({workflows::MessageKind::kRelayed, version}));
    }
    if (!st.ok()) {
      fail(child, st);
      ReleaseForwards(relay_children.at(child));
      relay_children.at(child).name.clear();  // reconnect next time
      return;
    }
    stats.relayed_to.push_back(child);
  });  // no interrupt hook: it returns OK
  stats.relay_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

WeightSubscriber::WeightSubscriber(std::unique_ptr<State> state) : state_(std::move(state)) {}
WeightSubscriber::~WeightSubscriber() {
  if (state_) Close();
}

void WeightSubscriber::Close() {
  State& s = *state_;
  if (s.closed) return;
  // A relay parent in the middle of an update will not forward it: its children stop waiting
  // now (every connected child: the plans may not all have arrived).
  if (s.updating && s.relay && s.relay->Relays(s.rank)) (void)s.AbandonForwards(s.begun_version, {}, false);
  if (s.joined) (void)Leave();  // best effort: the trainers skip the slot from their next push
  s.DeclineForward();
  for (auto& [rank, child] : s.relay_children) s.ReleaseForwards(child);
  s.relay_children.clear();
  s.updating = false;
  s.closed = true;
}

namespace {
// kFailedPrecondition naming `call` once the subscriber was closed (WeightSubscriber::Close).
Status CheckOpen(const WeightSubscriber::State& s, std::string_view call) {
  if (!s.closed) return Status::Ok();
  return FailedPrecondition(fmt::format("WeightSubscriber::{} on engine rank {} after Close", call, s.rank));
}
}  // namespace

Result<std::unique_ptr<WeightSubscriber>> WeightSubscriber::Create(Rendezvous& rendezvous, const Layout& trainer_layout,
                                                                   const Layout& engine_layout, int rank,
                                                                   WeightSyncOptions options) {
  SW_RETURN_IF_ERROR(ValidateWeightSyncTimes(options));
  if (rank < 0 || rank >= engine_layout.world_size()) {
    // Replica slots: ranks holding identical shards form a class; with dp replicas every class
    // has dp ranks. Dynamic membership fills these slots and cannot grow past them (the plan is
    // the one of the two layouts every process computed: docs/reliability.md).
    const std::size_t classes = engine_layout.num_rank_classes();
    std::string slots;
    if (classes > 0 && static_cast<std::size_t>(engine_layout.world_size()) % classes == 0) {
      slots = fmt::format(" ({} replica slot(s) of {} rank(s))", engine_layout.world_size() / static_cast<int>(classes),
                          classes);
    }
    return InvalidArgument(fmt::format(
        "engine rank {} is outside engine layout {} of {} ranks{}{}", rank, engine_layout.description(),
        engine_layout.world_size(), slots,
        options.dynamic_membership && rank >= engine_layout.world_size()
            ? ": dynamic membership fills only the replica slots the engine layout names; start the trainers and "
              "engines with a layout naming more replicas (dp=) to run more"
            : ""));
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
  if (state->options.relay_broadcasts) {
    state->relay = workflows::MakeRelayTree(engine_layout, state->options.max_concurrency);
    if (!state->relay->children[static_cast<std::size_t>(rank)].empty()) {
      state->relay_ranges = workflows::WrittenRanges(conversion, rank);
    }
    const int depth = workflows::RelayDepth(*state->relay, rank);
    if (depth > 0 && (depth + 1) * state->options.engine_timeout_s > state->options.timeout_s) {
      spdlog::warn(
          "engine rank {} is {} levels below its relay tree's root: a chain of slow forwards may take up to "
          "{} x engine_timeout_s = {} s to reach it, but it waits at most timeout_s = {} s (raise timeout_s, or "
          "max_concurrency for a shallower tree)",
          rank, depth, depth + 1, (depth + 1) * state->options.engine_timeout_s, state->options.timeout_s);
    }
  }
  if (state->options.dynamic_membership) {
    // Taken before the metadata is published, so a trainer that sees this incarnation's
    // join request finds this process's metadata (or a later one's) under the rank's key.
    SW_ASSIGN_OR_RETURN(const std::int64_t incarnation,
                        rendezvous.Add(workflows::IncarnationKey(state->options.job, rank), 1));
    state->incarnation = static_cast<std::uint64_t>(incarnation);
  }
  state->plan_signature = workflows::SyncPlanSignature(trainer_layout, engine_layout, state->options);
  SW_RETURN_IF_ERROR(
      workflows::PublishPlanSignature(rendezvous, state->options.job, kEngineRole, rank, state->plan_signature));
  // Engine buffers Shardwire allocates: shared memory where the publishers convert into a
  // mapping of them or where pre-faulting a mapping is cheap (trainers then write them with
  // streaming stores), else private huge pages (kernel copies; BufferMemory).
  ArenaMemory engine_memory = ArenaMemory::kShared;
  switch (state->options.buffer_memory) {
    case BufferMemory::kAuto:
      engine_memory = conversion.converts() ||
                              (state->options.buffer.empty() &&
                               workflows::FirstWriteMicrosecondsPerPage() < workflows::kCheapFirstWriteMicroseconds)
                          ? ArenaMemory::kShared
                          : ArenaMemory::kPrivateHugePages;
      break;
    case BufferMemory::kShared:
      engine_memory = ArenaMemory::kShared;
      break;
    case BufferMemory::kPrivateHugePages:
      engine_memory = ArenaMemory::kPrivateHugePages;
      break;
  }
  SW_ASSIGN_OR_RETURN(state->endpoint,
                      workflows::OpenRankEndpoint(rendezvous, state->options.job, kEngineRole, rank,
                                                  engine_layout.rank(rank).buffer_bytes, state->options.buffer,
                                                  state->options.double_buffered, state->options.second_buffer,
                                                  /*scratch_bytes=*/0, engine_memory, state->options.metrics,
                                                  state->incarnation, state->options.lanes));
  SW_ASSIGN_OR_RETURN(state->metrics,
                      workflows::SubscriberMetrics::Make(state->options.metrics, state->options.job, rank));
  return std::unique_ptr<WeightSubscriber>(new WeightSubscriber(std::move(state)));
}

std::span<std::byte> WeightSubscriber::weights() { return state_->Buffer(state_->serving); }
std::span<std::byte> WeightSubscriber::back_buffer() {
  return state_->options.double_buffered ? state_->Buffer(1 - state_->serving) : state_->Buffer(0);
}
std::uint64_t WeightSubscriber::committed_version() const { return state_->committed_version; }

bool WeightSubscriber::holds_committed_version() const { return !state_->torn; }
std::uint64_t WeightSubscriber::incarnation() const { return state_->incarnation; }

Result<std::uint64_t> WeightSubscriber::Join(double timeout_s) {
  State& s = *state_;
  SW_RETURN_IF_ERROR(CheckOpen(s, "Join"));
  if (!s.options.dynamic_membership) return InvalidArgument("WeightSubscriber::Join without dynamic membership");
  if (s.source_names.size() != s.sources.size()) return InvalidArgument("WeightSubscriber::Join before Connect");
  if (std::isnan(timeout_s)) return InvalidArgument("WeightSubscriber::Join: timeout_s is NaN");
  const std::string who =
      fmt::format("engine rank {} (incarnation {}) joining job {}", s.rank, s.incarnation, s.options.job);
  if (!s.joined || s.join_request == 0) {
    SW_ASSIGN_OR_RETURN(s.join_request,
                        workflows::FileMembershipRequest(*s.rendezvous, s.options.job, s.rank, s.incarnation));
    // A member joining again (after a version it did not commit): trainers may be waiting for
    // its READY under its previous admission.
    if (s.admitted) s.Withdraw(s.join_request);
    s.joined = true;
  }
  auto version = workflows::AwaitAdmission(*s.rendezvous, s.options.job, s.rank, s.incarnation, s.join_request,
                                           timeout_s < 0 ? s.options.timeout_s : timeout_s, s.options.interrupt,
                                           kInterruptPollSeconds);
  if (!version.ok()) return version.status().WithContext(who);  // the request stands: Join may wait again
  s.admitted_request = s.join_request;
  s.join_request = 0;  // answered: the next Join (after a missed version) files a new one
  s.admitted = true;
  s.DeclineForward();  // it begins anew: no forward of the version it failed
  if (*version <= s.committed_version) {
    return FailedPrecondition(fmt::format("{}: admitted at version {}, not above its committed version {}", who,
                                          *version, s.committed_version));
  }
  return *version;
}

Status WeightSubscriber::HoldPushes() {
  State& s = *state_;
  SW_RETURN_IF_ERROR(CheckOpen(s, "HoldPushes"));
  if (!s.options.dynamic_membership) return InvalidArgument("WeightSubscriber::HoldPushes without dynamic membership");
  auto request = workflows::FileMembershipRequest(*s.rendezvous, s.options.job, s.rank, s.incarnation, /*hold=*/true);
  if (!request.ok()) {
    return request.status().WithContext(
        fmt::format("engine rank {} (incarnation {}) holding job {}'s pushes for its "
                    "catch-up",
                    s.rank, s.incarnation, s.options.job));
  }
  s.hold_request = *request;
  s.DeclineForward();  // a catch-up writes the buffer next: no late forward over it
  return Status::Ok();
}

Result<std::uint64_t> WeightSubscriber::AwaitHold(double timeout_s) {
  State& s = *state_;
  SW_RETURN_IF_ERROR(CheckOpen(s, "AwaitHold"));
  if (s.hold_request == 0) {
    return FailedPrecondition(fmt::format("engine rank {}: AwaitHold without HoldPushes", s.rank));
  }
  auto version = workflows::AwaitHold(*s.rendezvous, s.options.job, s.rank, s.hold_request, timeout_s);
  if (!version.ok()) {
    return version.status().WithContext(
        fmt::format("engine rank {} (incarnation {}) awaiting job {}'s trainers to hold for its catch-up", s.rank,
                    s.incarnation, s.options.job));
  }
  return *version;
}

Status WeightSubscriber::Leave() {
  State& s = *state_;
  SW_RETURN_IF_ERROR(CheckOpen(s, "Leave"));
  if (!s.options.dynamic_membership) return InvalidArgument("WeightSubscriber::Leave without dynamic membership");
  s.joined = false;
  // A later process of this rank (a replacement started while this one shuts down) owns the
  // rank's request now: a leave filed here would overwrite its join and evict it.
  SW_ASSIGN_OR_RETURN(const std::int64_t latest,
                      s.rendezvous->Add(workflows::IncarnationKey(s.options.job, s.rank), 0));
  if (latest > 0 && static_cast<std::uint64_t>(latest) > s.incarnation) {
    // This process still sends no READY any more: WITHDRAWN ends the wait of a push for its
    // READY now instead of at engine_timeout_s. Its id is the one above this process's
    // admission: a trainer holding this process's record stops waiting for it, one holding a
    // later process's record (admitted under a later request, the rank's agent name being the
    // same) ignores it. Not the rank's latest request: a third process's may be newer than the
    // replacement's admission.
    s.DeclineForward();
    if (s.admitted) s.Withdraw(s.admitted_request + 1);
    return Status::Ok();
  }
  SW_ASSIGN_OR_RETURN(const std::int64_t request,
                      workflows::FileMembershipRequest(*s.rendezvous, s.options.job, s.rank, 0));
  s.DeclineForward();
  if (s.admitted) s.Withdraw(request);
  return Status::Ok();
}

Status WeightSubscriber::AdoptVersion(std::uint64_t version) {
  State& s = *state_;
  SW_RETURN_IF_ERROR(CheckOpen(s, "AdoptVersion"));
  if (s.updating)
    return FailedPrecondition(fmt::format("AdoptVersion({}) during the update of v{}", version, s.begun_version));
  if (version <= s.committed_version) {
    return FailedPrecondition(
        fmt::format("AdoptVersion({}): not above the committed version {}", version, s.committed_version));
  }
  s.DeclineForward();  // the buffer now holds `version`: no late forward of a failed one
  s.committed_version = version;
  s.torn = false;
  s.metrics.Committed(version, /*seconds=*/-1);
  return Status::Ok();
}

Status WeightSubscriber::Connect() {
  State& s = *state_;
  SW_RETURN_IF_ERROR(CheckOpen(s, "Connect"));
  for (int src : s.sources) {
    SW_ASSIGN_OR_RETURN(const workflows::PeerRank peer,
                        workflows::ImportPeerRank(*s.rendezvous, *s.endpoint.agent, s.options.job, kTrainerRole, src,
                                                  s.options.timeout_s, s.options.interrupt, kInterruptPollSeconds));
    SW_RETURN_IF_ERROR(workflows::CheckPeerPlanSignature(*s.rendezvous, s.options.job, kTrainerRole, src,
                                                         s.plan_signature, s.options.timeout_s));
    s.source_names.insert(peer.name);
    s.source_rank_of[peer.name] = src;
  }
  // Relays with a fixed membership: connect to the children and prepare every forward now (own
  // buffer x their buffer), so that mapping and pre-faulting their arenas does not land in the
  // first push (as the trainers' Connect does for their destinations).
  if (s.relay && !s.options.dynamic_membership) {
    const int buffers = s.options.double_buffered ? 2 : 1;
    for (int child : s.relay->children[static_cast<std::size_t>(s.rank)]) {
      const auto context = fmt::format("engine rank {} connecting to its relay child {}", s.rank, child);
      const workflows::RelayTarget first{static_cast<std::uint32_t>(child), 0, 0};
      auto child_connected = s.ConnectChild(first, s.options.timeout_s);
      if (!child_connected.ok()) return child_connected.status().WithContext(context);
      const State::RelayChild* const connected = *child_connected;
      for (int own = 0; own < buffers; ++own) {
        // Into each buffer the child published (a child may be single-buffered under a
        // double-buffered parent, or the reverse).
        for (int theirs = 0; theirs < 2; ++theirs) {
          if (connected->regions[static_cast<std::size_t>(theirs)] == 0) continue;
          const workflows::RelayTarget target{static_cast<std::uint32_t>(child), static_cast<std::uint8_t>(theirs), 0};
          SW_RETURN_IF_ERROR(s.Forward(target, own, s.options.timeout_s).status().WithContext(context));
        }
      }
    }
  }
  // Its relay parent too (fixed membership): imported now, its liveness is watched from the
  // first version, and a version this rank gives up can be declined to it (DeclineForward).
  if (s.relay && !s.options.dynamic_membership) {
    if (const int parent = s.relay->parent[static_cast<std::size_t>(s.rank)]; parent >= 0) {
      SW_RETURN_IF_ERROR(workflows::ImportPeerRank(*s.rendezvous, *s.endpoint.agent, s.options.job, kEngineRole, parent,
                                                   s.options.timeout_s, s.options.interrupt, kInterruptPollSeconds)
                             .status()
                             .WithContext(fmt::format("engine rank {} connecting to its relay parent", s.rank)));
      s.relay_parent = parent;
    }
  }
  return Status::Ok();
}

Status WeightSubscriber::BeginUpdate(std::uint64_t version) {
  State& s = *state_;
  SW_RETURN_IF_ERROR(CheckOpen(s, "BeginUpdate"));
  if (s.source_names.size() != s.sources.size()) return InvalidArgument("WeightSubscriber::BeginUpdate before Connect");
  if (version <= s.committed_version) {
    return InvalidArgument(
        fmt::format("version {} is not newer than the committed version {}", version, s.committed_version));
  }
  if (version == s.abandoned_version) {
    return FailedPrecondition(fmt::format(
        "BeginUpdate({}) again after its update failed on engine rank {}, a relay parent that told its children it "
        "will not forward v{}; begin a later version",
        version, s.rank, version));
  }
  // Moving on from a version this rank failed: its relay parent must not forward that one now.
  if (version != s.unforwarded_version) s.DeclineForward();
  if (version == s.begun_version) {
    // Beginning the same version again (its push failed or was interrupted): the MISSED(v) the
    // trainers sent when that attempt failed are about it, not about the one this READY starts
    // (best effort: one still on its way arrives after this and fails the new wait).
    (void)s.inbox.TakeArrived(*s.endpoint.agent, workflows::MessageKind::kMissed, version, s.source_names);
    // So are the relay messages of that attempt a failed wait kept (its RELAY_PLANs, and its
    // relay parent's RELAYED or MISSED): a retried push sends new plans, and the parent
    // forwards (or gives up) anew. The trainers' DONE(v) stay: a trainer whose push of v
    // succeeded does not push v again, and its bytes are still in the buffer.
    (void)s.inbox.TakeArrived(*s.endpoint.agent, workflows::MessageKind::kRelayPlan, version, s.source_names);
    const int tree_parent = s.relay ? s.relay->parent[static_cast<std::size_t>(s.rank)] : -1;
    if (tree_parent >= 0) {
      const std::set<std::string> parent{workflows::MetadataKey(s.options.job, kEngineRole, tree_parent)};
      (void)s.inbox.TakeArrived(*s.endpoint.agent, workflows::MessageKind::kRelayed, version, parent);
      (void)s.inbox.TakeArrived(*s.endpoint.agent, workflows::MessageKind::kMissed, version, parent);
    }
  }
  workflows::Message ready_message{workflows::MessageKind::kReady, version};
  if (s.options.double_buffered) ready_message.buffer = static_cast<std::uint8_t>(1 - s.serving);
  if (s.options.dynamic_membership) ready_message.incarnation = s.incarnation;
  const auto ready = workflows::Encode(ready_message);
  // Every reachable source gets READY even when one cannot be reached: the sources that got it
  // write now, so failing here would leave the caller believing nothing is being written. The
  // first unreachable source fails WaitForUpdate instead.
  s.begin_failure = Status::Ok();
  for (const std::string& name : s.source_names) {
    Status sent = s.endpoint.agent->SendMessage(name, ready);
    if (!sent.ok() && s.begin_failure.ok()) {
      s.begin_failure = sent.WithContext(fmt::format("engine rank {} READY v{} to {}", s.rank, version, name));
    }
  }
  s.begun_version = version;
  s.begun_at = std::chrono::steady_clock::now();
  s.updating = true;
  if (!s.options.double_buffered) s.torn = true;  // the sources write the buffer it serves
  return Status::Ok();
}

namespace {
Result<UpdateStats> AwaitVersion(WeightSubscriber::State& s, std::uint64_t version, double timeout_s);
}  // namespace

Result<UpdateStats> WeightSubscriber::WaitForUpdate(std::uint64_t version, double timeout_s) {
  SW_RETURN_IF_ERROR(CheckOpen(*state_, "WaitForUpdate"));
  if (std::isnan(timeout_s)) return InvalidArgument(fmt::format("WaitForUpdate({}): timeout_s is NaN", version));
  // < 0: the options' bound; +inf and anything past it: 1e9 s (a deadline that cannot overflow).
  const double bound_s = timeout_s < 0 ? state_->options.timeout_s : std::min(timeout_s, kLongestWaitSeconds);
  auto stats = AwaitVersion(*state_, version, bound_s);
  if (!stats.ok()) state_->metrics.Failed(stats.status());  // a short own bound that ran out too
  return stats;
}

namespace {
// `timeout_s`: the bound of each of its waits (WaitForUpdate's timeout_s, or the options').
Result<UpdateStats> AwaitVersion(WeightSubscriber::State& s, std::uint64_t version, double timeout_s) {
  if (version != s.begun_version) {
    return InvalidArgument(fmt::format("WaitForUpdate({}) without BeginUpdate({}) (the update begun is v{})", version,
                                       version, s.begun_version));
  }
  if (version <= s.committed_version) {
    return FailedPrecondition(fmt::format("WaitForUpdate({}): v{} is committed already", version, version));
  }
  if (version == s.abandoned_version) {
    return FailedPrecondition(fmt::format(
        "WaitForUpdate({}) again after it failed on engine rank {}, a relay parent: its relay children were told it "
        "will not forward v{} and gave it up; begin the next version",
        version, s.rank, version));
  }
  std::map<std::string, workflows::Message> done;
  const Status arrived =
      !s.begin_failure.ok()
          ? s.begin_failure
          : s.inbox.AwaitFromAll(*s.endpoint.agent, workflows::MessageKind::kDone, version, s.source_names, timeout_s,
                                 &done, workflows::MessageKind::kMissed, s.options.interrupt);
  // relay_broadcasts: whether the bytes come through the relay parent, and whom to forward to
  // (the children every source named, with the same buffer and incarnation).
  std::map<std::string, workflows::Message> plans;
  std::map<int, workflows::RelayTarget> forward;
  std::map<int, workflows::RelayTarget> not_forwarded;  // named, but not alike by every source
  bool plans_valid = true;                              // every plan named only this rank's tree
  bool plans_arrived = false;                           // the RELAY_PLAN wait succeeded
  int relayed_from = -1;
  Status relay_status = Status::Ok();
  if (arrived.ok() && s.relay && s.relay->Relays(s.rank)) {
    relay_status = s.inbox.AwaitFromAll(*s.endpoint.agent, workflows::MessageKind::kRelayPlan, version, s.source_names,
                                        timeout_s, &plans, workflows::MessageKind::kMissed, s.options.interrupt);
    plans_arrived = relay_status.ok();  // (a failed wait put back what it took itself)
    std::map<int, int> named;  // child -> sources that named it alike
    for (const auto& [name, plan] : plans) {
      // Only this rank's parent and children in the tree every rank computes.
      if (Status valid = workflows::CheckRelayPlan(*s.relay, s.rank, plan.relay_from, plan.relay_to); !valid.ok()) {
        relay_status = valid.WithContext(fmt::format("RELAY_PLAN(v{}) from {}", version, name));
        plans_valid = false;
        continue;
      }
      if (plan.relay_from) relayed_from = static_cast<int>(*plan.relay_from);
      for (const workflows::RelayTarget& t : plan.relay_to) {
        auto [it, added] = forward.emplace(static_cast<int>(t.rank), t);
        if (added || it->second == t) ++named[static_cast<int>(t.rank)];
      }
    }
    // A child the sources did not all name alike gets no forward, and is told so (below).
    for (auto it = forward.begin(); it != forward.end();) {
      if (named[it->first] == static_cast<int>(s.source_names.size())) {
        ++it;
      } else {
        not_forwarded.insert(*it);
        it = forward.erase(it);
      }
    }
    if (relay_status.ok() && relayed_from >= 0) {
      // Import the parent (once, and again after it failed: a replacement) so that the
      // transport watches its liveness: a parent that dies ends this wait at once.
      const std::string parent = workflows::MetadataKey(s.options.job, kEngineRole, relayed_from);
      const std::vector<std::string> failed = s.endpoint.agent->FailedPeers();
      if (s.relay_parent != relayed_from || std::find(failed.begin(), failed.end(), parent) != failed.end()) {
        s.relay_parent = -1;
        relay_status = workflows::ImportPeerRank(*s.rendezvous, *s.endpoint.agent, s.options.job, kEngineRole,
                                                 relayed_from, timeout_s, s.options.interrupt, kInterruptPollSeconds)
                           .status();
        if (relay_status.ok()) s.relay_parent = relayed_from;
      }
      // The parent forwards right after its own commit, each forward bounded by engine_timeout_s;
      // its commit may wait for its own parent's forward, and so on up the tree: a rank at depth
      // d (d ancestors) waits up to (d + 1) x engine_timeout_s (at most timeout_s).
      if (relay_status.ok()) {
        const int depth = workflows::RelayDepth(*s.relay, s.rank);  // >= 1: relayed_from is its parent
        const double relayed_bound_s = std::min(timeout_s, (depth + 1) * s.options.engine_timeout_s);
        relay_status =
            s.inbox.AwaitFromAll(*s.endpoint.agent, workflows::MessageKind::kRelayed, version, {parent},
                                 relayed_bound_s, nullptr, workflows::MessageKind::kMissed, s.options.interrupt);
      }
      if (!relay_status.ok()) {
        relay_status =
            relay_status.WithContext(fmt::format("the forward from relay parent engine rank {}", relayed_from));
      }
    }
  }
  s.updating = false;
  // A version this rank does not commit is not forwarded: its children stop waiting now.
  // With a plan it refused, every connected child of its tree is told too (it cannot know
  // whom the refused plan's sender routed through it).
  const bool plans_known = plans.size() == s.source_names.size() && plans_valid;
  if (!not_forwarded.empty()) {
    // Named by some sources only, or differently: waiting for a forward that will not come.
    (void)s.AbandonForwards(version, not_forwarded, /*plans_known=*/true);
  }
  auto abandon = [&](Status st) {
    // What arrived stays for a repeated wait (a per-call timeout, an interrupt or a relay
    // parent that was late): the trainers do not send their DONE and RELAY_PLAN again.
    // (A failed wait put back what it took itself. Not after a digest mismatch: the bytes
    // those DONEs describe are not what landed; the version is begun and pushed again.)
    if (arrived.ok() && st.code() != ErrorCode::kVerificationFailed) s.inbox.PutBack(done);
    if (plans_arrived) s.inbox.PutBack(plans);
    if (s.AbandonForwards(version, forward, plans_known) > 0) s.abandoned_version = version;
    // Its relay parent may still forward v: told when this rank moves on (DeclineForward).
    if (s.relay && s.relay->parent[static_cast<std::size_t>(s.rank)] >= 0) s.unforwarded_version = version;
    return st.WithContext(fmt::format("engine rank {} update v{}", s.rank, version));
  };
  if (!arrived.ok()) return abandon(arrived);
  if (!relay_status.ok()) return abandon(relay_status);
  if (s.options.verify_digests) {
    // What landed, hashed as each source hashed what it sent; v is committed only if all agree.
    const std::span<std::byte> written = s.options.double_buffered ? s.Buffer(1 - s.serving) : s.Buffer(0);
    for (const auto& [name, message] : done) {
      workflows::PushDigest landed;
      landed.Add(written.data(), s.digest_moves.at(s.source_rank_of.at(name)), workflows::MoveSide::kDestination);
      if (!message.digest) {
        return abandon(VerificationFailed(fmt::format("{} sent DONE without a digest", name)));
      }
      if (*message.digest != landed.value()) {
        return abandon(VerificationFailed(
            fmt::format("the bytes from {} differ from what it sent (digest {:016x} sent, {:016x} landed); v{} is not "
                        "committed, the engine keeps v{}",
                        name, *message.digest, landed.value(), version, s.committed_version)));
      }
    }
  }
  s.committed_version = version;
  s.torn = false;
  if (s.unforwarded_version == version) s.unforwarded_version = 0;  // a repeated wait took it after all
  s.metrics.Committed(version, std::chrono::duration<double>(std::chrono::steady_clock::now() - s.begun_at).count());
  if (s.options.double_buffered) s.serving = 1 - s.serving;  // the new version is served from now on
  UpdateStats stats;
  stats.version = version;
  stats.bytes = s.bytes_per_update;
  stats.sources = static_cast<int>(s.sources.size());
  stats.wait_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - s.begun_at).count();
  stats.relayed_from = relayed_from;
  if (!forward.empty()) s.ForwardVersion(version, s.options.double_buffered ? s.serving : 0, forward, stats);
  return stats;
}
}  // namespace

}  // namespace shardwire
