// ModelLoader: one rank of a new instance loads its shards from serving instances
// (model_loading.h; design in docs/p2p_loading.md).
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <future>
#include <map>
#include <optional>
#include <set>
#include <tuple>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "shardwire/checkpoint.h"
#include "shardwire/model_layouts.h"
#include "shardwire/model_loading.h"
#include "shardwire/shard_io.h"
#include "shardwire/weight_sync.h"
#include "workflows/load_assignment.h"
#include "workflows/own_pause.h"
#include "workflows/p2p_messages.h"
#include "workflows/workflow_metrics.h"
#include "workflows/xxh3_dispatch.h"

namespace shardwire {
namespace {

using Clock = std::chrono::steady_clock;
using workflows::DecodeP2p;
using workflows::DigestStatus;
using workflows::EncodeP2p;
using workflows::Interval;
using workflows::P2pKind;
using workflows::P2pMessage;
using workflows::SourceRun;

std::atomic<std::uint64_t> g_loader_counter{0};

P2pMessage LeaseRequest(std::uint64_t id, std::uint64_t bytes, const std::string& instance, std::uint64_t priority) {
  P2pMessage m;
  m.kind = P2pKind::kLease;
  m.id = id;
  m.value = bytes;
  m.text = instance;
  m.priority = priority;
  return m;
}

P2pMessage Msg(P2pKind kind, std::uint64_t id = 0, std::uint64_t value = 0) {
  P2pMessage m;
  m.kind = kind;
  m.id = id;
  m.value = value;
  return m;
}

// `s` seconds as a clock duration, saturated to [0, 1e9 s] (31 years): a timeout of +inf (or any
// value past int64 nanoseconds) means never, not a deadline that wrapped into the past.
Clock::duration Seconds(double s) {
  constexpr double kNeverS = 1e9;
  return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(std::clamp(s, 0.0, kNeverS)));
}
double Since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Bytes of `rank`'s shards in its buffer (what a load must fill; reserved padding excluded).
std::vector<Interval> NeededIntervals(const Layout& layout, int rank) {
  std::vector<Interval> out;
  for (const ShardRef& s : layout.rank(rank).shards) {
    const std::uint64_t bytes = static_cast<std::uint64_t>(s.box.numel()) * DTypeSize(layout.tensors()[s.tensor].dtype);
    out.push_back({s.byte_offset, s.byte_offset + bytes});
  }
  return workflows::Normalize(std::move(out));
}

// Populates the page tables of `buf` for writing in one call (MADV_POPULATE_WRITE,
// Linux 5.14+) instead of one page fault per 4 KiB page during the READs: in a VM each
// fault exit cost about a quarter of a load's CPU time (perf, 350 MB into 4 ranks).
// Best effort: where the kernel refuses, the READs take the faults.
void PopulateForWrite(std::span<std::byte> buf) {
#ifdef MADV_POPULATE_WRITE
  const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
  const auto begin = (reinterpret_cast<std::uintptr_t>(buf.data()) + page - 1) / page * page;
  const auto end = (reinterpret_cast<std::uintptr_t>(buf.data()) + buf.size()) / page * page;
  if (end > begin) (void)::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_POPULATE_WRITE);
#else
  (void)buf;
#endif
}

// One serving instance the loader reads from.
struct Instance {
  std::string id;
  std::string layout_string;
  std::vector<SourceRecord> ranks;             // by rank
  std::vector<SourceRun> coverage;             // where this loader's bytes live in it
  double bandwidth = 0;                        // bytes/s cap, 0 = none
  std::map<std::uint32_t, std::string> peers;  // src rank -> imported agent name
  std::map<std::uint32_t, RegionId> regions;   // src rank -> region id
  std::set<std::uint32_t> hello_acked;
  std::map<std::uint32_t, std::chrono::steady_clock::time_point> hello_deadline;  // src rank -> answer by
  bool failed = false;
  std::string failure;
  bool hold_mark = false;  // its STALE mark is held (bytes that failed their digest)
};

struct LoadMove {
  // kHashed: landed and hashed, the digest request waits for the source's HELLO ack
  // (READs start once HELLO is sent: a kernel copy or UCX READ needs nothing from the
  // source's server thread, and the HELLO round trip overlaps the first READs).
  enum class State { kQueued, kLeaseWait, kLeaseQueued, kReading, kHashed, kDigestWait, kPacing, kDone, kAbandoned };
  std::size_t instance = 0;
  std::uint32_t src_rank = 0;
  std::vector<SourceRun> runs;
  std::uint64_t bytes = 0;
  State state = State::kQueued;
  std::uint64_t request_id = 0;
  std::optional<TransferHandle> handle;
  Clock::time_point deadline;
  Clock::time_point pace_until;
  std::uint64_t local_digest = 0;
  bool verifying = false;  // the digest request asked the source to verify (after a mismatch)
};

}  // namespace

struct ModelLoader::Impl {
  SourceRegistry* registry = nullptr;
  ModelDescription model;
  ModelLoaderOptions options;
  std::optional<Layout> layout;
  std::unique_ptr<Agent> agent;
  RegionId region = 0;
  std::span<std::byte> buffer;
  ModelIdentity identity;
  bool loaded = false;
  std::uint64_t next_id = 1;
  workflows::LoaderMetrics metrics;  // ModelLoaderOptions::metrics (no-op without)
  // CheckpointRevision of the bytes being loaded, when known: the identity's revision
  // when it is one, else what the sources advertise (kSourceAttrContent).
  std::string content;
  // The content revision the fallback checkpoint was found to have (computed once).
  std::string checked_checkpoint;
  // Every content revision a listed record of the identity advertised, usable instance or
  // not (an incomplete instance still says which bytes the revision is): the fallback
  // checkpoint is checked against it when `content` is unknown.
  std::set<std::string> advertised_contents;
  // Non-empty when the instances of a user revision advertise different contents with no
  // majority (one each, two each, ...): which bytes the revision is cannot be told, so no
  // instance that advertises a content is used (ChooseContent). Says why.
  std::string content_disputed;
  // Run ended by the interrupt hook or load_timeout_s: Load then returns without waiting
  // for the STALE marks in flight.
  bool cut_short = false;
  // When this Load fails with kTimedOut (its start + load_timeout_s), and when it last asked
  // options.interrupt.
  Clock::time_point give_up;
  Clock::time_point last_interrupt_check;

  // State of one Load call.
  std::vector<Instance> instances;
  std::vector<LoadMove> moves;
  std::map<std::uint64_t, std::size_t> move_of_request;
  std::map<std::uint64_t, std::pair<std::size_t, std::uint32_t>> hello_of_request;
  std::vector<Interval> unassigned;  // bytes no move is responsible for
  LoadReport report;
  std::vector<std::size_t> to_mark_stale;
  std::set<std::string> seen_instances;                      // listed whole once (used, skipped or failed)
  bool own_instance_listed = false;                          // a listing held sources of options.instance_id
  std::set<std::string> partial_instances;                   // listed with ranks missing, not whole yet
  std::set<std::string> reported_duplicates;                 // source ids KeepNewestPerRank passed over
  std::future<Result<std::vector<SourceRecord>>> relisting;  // a re-listing in flight
  bool relist_failed = false;
  Clock::time_point first_read;  // when this Load posted its first READ (profiling)
  // This process's own pauses and its agent's lane stalls, measured from the start of Load's
  // loop: a stop after the first HELLO or lease deadline is set and before Poll first looks at
  // it is a gap too (a loader stopped in its first turns used to fail its healthy seeds at that
  // first look).
  workflows::OwnPauseForgiveness own_pause{0.0, Clock::now()};
  bool lanes_held = false;  // the last look forgave a stall of the agent's lanes

  Status ResolveIdentity() {
    if (!options.revision.empty()) {
      SW_ASSIGN_OR_RETURN(identity, MakeModelIdentity(model, options.revision));
      return Status::Ok();
    }
    SW_ASSIGN_OR_RETURN(ModelIdentity structure, MakeModelIdentity(model, "?"));
    const std::string wanted = structure.StructureDigest();
    SW_ASSIGN_OR_RETURN(const std::vector<SourceRecord> all, registry->ListSources("", SourceState::kReady));
    const std::set<std::string> revisions = RevisionsServed(all, wanted);
    if (revisions.size() > 1) {
      return FailedPrecondition(fmt::format("model {} is served in {} revisions ({}); name one", wanted,
                                            revisions.size(), fmt::join(revisions, ", ")));
    }
    if (revisions.size() == 1) {
      SW_ASSIGN_OR_RETURN(identity, MakeModelIdentity(model, *revisions.begin()));
      return Status::Ok();
    }
    if (options.checkpoint_path.empty()) {
      return NotFound(fmt::format("no READY source serves model {} and no checkpoint was given{}{}", wanted,
                                  DTypeHint(all), StaleSourcesHint(wanted)));
    }
    SW_ASSIGN_OR_RETURN(const Checkpoint checkpoint, Checkpoint::Open(options.checkpoint_path));
    SW_ASSIGN_OR_RETURN(const std::string revision, HashCheckpoint(checkpoint));
    SW_ASSIGN_OR_RETURN(identity, MakeModelIdentity(model, revision));
    checked_checkpoint = revision;  // the fallback reads this very checkpoint
    return Status::Ok();
  }

  // The revisions READY records of `records` serve of the model whose structure digest is
  // `structure` (every source advertises both: kSourceAttrStructure, kSourceAttrRevision).
  static std::set<std::string> RevisionsServed(const std::vector<SourceRecord>& records, const std::string& structure) {
    std::set<std::string> revisions;
    for (const SourceRecord& r : records) {
      auto s = r.attributes.find(kSourceAttrStructure);
      auto v = r.attributes.find(kSourceAttrRevision);
      if (s != r.attributes.end() && s->second == structure && v != r.attributes.end()) revisions.insert(v->second);
    }
    return revisions;
  }

  // For a NotFound of a named revision: "; the revisions served of this model: a, b" (or that none
  // is), so a typo or a stale revision is seen at once. One listing; "" when it fails.
  std::string RevisionsServedHint() {
    if (options.revision.empty()) return "";
    auto all = registry->ListSources("", SourceState::kReady);
    if (!all.ok()) return "";
    const std::set<std::string> revisions = RevisionsServed(*all, identity.StructureDigest());
    if (revisions.contains(options.revision)) return "";  // served, but unusable: `skipped` says why
    if (revisions.empty()) return "; no revision of this model is served";
    return fmt::format("; revision {} is not served; the revisions served of this model: {}", options.revision,
                       fmt::join(revisions, ", "));
  }

  // For a NotFound: "; STALE now: <instance> rank <r> (revision, why), ..." for the STALE
  // sources of the model whose structure digest is `structure` (lease expired, marked by a
  // loader), so "nobody serves it" is told apart from "its sources are marked or silent". One
  // listing; "" when it fails or finds none.
  std::string StaleSourcesHint(const std::string& structure) {
    auto stale = registry->ListSources("", SourceState::kStale);
    if (!stale.ok()) return "";
    std::vector<std::string> listed;
    std::size_t more = 0;
    for (const SourceRecord& r : *stale) {
      auto a = r.attributes.find(kSourceAttrStructure);
      if (a == r.attributes.end() || a->second != structure) continue;
      if (listed.size() == 4) {
        ++more;
        continue;
      }
      auto v = r.attributes.find(kSourceAttrRevision);
      listed.push_back(fmt::format("{} rank {} (revision {}: {})", r.instance_id, r.rank,
                                   v != r.attributes.end() ? v->second : "?",
                                   r.stale_reason.empty() ? "no reason given" : r.stale_reason));
    }
    if (listed.empty()) return "";
    return fmt::format("; STALE now: {}{}", fmt::join(listed, ", "),
                       more > 0 ? fmt::format(" and {} more", more) : std::string());
  }

  // A config without torch_dtype describes the model in BF16 (ModelConfig::dtype); a seed that
  // described it from its checkpoint serves it in that checkpoint's dtype, so the structures
  // differ. Names the dtypes READY sources serve this model in, or "" when none does (or the
  // config named its dtype).
  std::string DTypeHint(const std::vector<SourceRecord>& ready) const {
    if (model.config.torch_dtype.has_value()) return "";
    std::vector<std::string> served;
    for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
      if (dtype == model.config.dtype()) continue;
      ModelConfig config = model.config;
      config.torch_dtype = dtype;
      auto other = DescribeModel(config);
      if (!other.ok()) continue;
      auto id = MakeModelIdentity(*other, "?");
      if (!id.ok()) continue;
      const std::string digest = id->StructureDigest();
      const bool any = std::any_of(ready.begin(), ready.end(), [&](const SourceRecord& r) {
        auto a = r.attributes.find(kSourceAttrStructure);
        return a != r.attributes.end() && a->second == digest;
      });
      if (any) served.emplace_back(DTypeName(dtype));
    }
    if (served.empty()) return "";
    return fmt::format(
        " (the config names no torch_dtype, so {} was assumed; READY sources serve this model in {}: "
        "set torch_dtype in the config)",
        DTypeName(model.config.dtype()), fmt::join(served, ", "));
  }

  std::vector<std::byte> Encode(const P2pMessage& m) { return EncodeP2p(m); }

  Status Send(const std::string& peer, const P2pMessage& m) { return agent->SendMessage(peer, EncodeP2p(m)); }

  // Imports a source rank's metadata and sends HELLO (want_inputs: ask for its
  // fingerprint inputs). Returns the request id.
  Result<std::uint64_t> Hello(Instance& inst, std::uint32_t rank, bool want_inputs) {
    const SourceRecord& rec = inst.ranks[rank];
    auto region_it = rec.attributes.find(kSourceAttrRegion);
    if (region_it == rec.attributes.end()) return CorruptData("source record has no region attribute");
    RegionId region_id = 0;
    try {
      region_id = static_cast<RegionId>(std::stoul(region_it->second));
    } catch (...) {
      return CorruptData(fmt::format("source record region attribute \"{}\"", region_it->second));
    }
    SW_ASSIGN_OR_RETURN(const std::string peer, agent->ImportMetadata(rec.metadata));
    inst.peers[rank] = peer;
    inst.regions[rank] = region_id;
    P2pMessage hello;
    hello.kind = P2pKind::kHello;
    hello.id = next_id++;
    SW_ASSIGN_OR_RETURN(hello.blob, agent->ExportMetadata());
    hello.flag = want_inputs;
    SW_RETURN_IF_ERROR(Send(peer, hello));
    return hello.id;
  }

  // Waits for one reply of kind `kind` with id `id` (other messages are dispatched).
  Result<P2pMessage> AwaitReply(std::uint64_t id, P2pKind kind, double timeout_s) {
    const Clock::time_point deadline = Clock::now() + Seconds(timeout_s);
    while (Clock::now() < deadline) {
      auto n = agent->WaitNotification(std::max(0.001, std::chrono::duration<double>(deadline - Clock::now()).count()));
      if (!n.ok()) {
        if (n.status().code() == ErrorCode::kTimedOut) break;
        continue;  // a peer disconnected; the caller's deadline decides
      }
      auto m = DecodeP2p(n->payload);
      if (m && m->id == id && m->kind == kind) return *m;
      if (m) Dispatch(n->peer, *m);
    }
    return TimedOut(fmt::format("no answer to request {} within {} s", id, timeout_s));
  }

  // Explains a fingerprint mismatch: the first differences between what the source
  // says it holds and what its layout string means here.
  std::string MismatchReason(Instance& inst, const std::vector<std::string>& expected) {
    std::string detail;
    auto id = Hello(inst, 0, true);
    if (id.ok()) {
      auto ack = AwaitReply(*id, P2pKind::kHelloAck, options.stall_timeout_s);
      if (ack.ok()) {
        const auto diffs = FingerprintDifferences(expected, ack->lines);
        detail = diffs.empty() ? "fingerprint inputs equal, digest differs" : fmt::format("{}", fmt::join(diffs, "; "));
      } else {
        detail = "source did not send its fingerprint inputs: " + ack.status().message();
      }
    } else {
      detail = "could not ask the source: " + id.status().message();
    }
    return detail;
  }

  // Lists and vets the instances serving the identity.
  Status FindInstances(const std::vector<Interval>& needed) {
    SW_ASSIGN_OR_RETURN(const std::vector<SourceRecord> records,
                        registry->ListSources(identity.Digest(), SourceState::kReady));
    SW_RETURN_IF_ERROR(AddInstances(records, needed));
    metrics.SourceInstances(Alive().size());
    return Status::Ok();
  }

  // One record per rank of an instance whose ranks registered more than once under one
  // instance_id (a restarted process whose old lease has not expired yet, or two instances
  // given the same instance_id): the newest registration (registered_unix_ms, then
  // last_heartbeat_unix_ms, then source_id) decides which instance is meant; only records
  // alike it (world size, layout, layout fingerprint, advertised content) are kept, the newest
  // per rank, so no two registrations' shards are mixed and the instance is still usable
  // (before, the extra records made it "3 of 2 ranks READY" and it was never used). Each
  // record passed over is reported once in report.skipped. Without a repeated rank `recs` is
  // left as it is (ranks that disagree are reported by the caller). (A newest record whose
  // process died fails at its HELLO and the bytes are read elsewhere; a later Load, which no
  // longer lists it once marked STALE, takes the older one.)
  void KeepNewestPerRank(const std::string& id, std::vector<SourceRecord>& recs) {
    std::set<int> ranks;
    for (const SourceRecord& r : recs) ranks.insert(r.rank);
    if (ranks.size() == recs.size()) return;
    std::sort(recs.begin(), recs.end(), [](const SourceRecord& a, const SourceRecord& b) {
      return std::tie(b.registered_unix_ms, b.last_heartbeat_unix_ms, b.source_id) <
             std::tie(a.registered_unix_ms, a.last_heartbeat_unix_ms, a.source_id);
    });
    const auto content_of = [](const SourceRecord& r) {
      auto c = r.attributes.find(kSourceAttrContent);
      return c == r.attributes.end() ? std::string() : c->second;
    };
    const SourceRecord newest = recs.front();  // a copy: the records are moved out below
    const std::string newest_content = content_of(newest);
    std::vector<SourceRecord> kept;
    std::set<int> kept_ranks;
    for (SourceRecord& r : recs) {
      const bool alike = r.world_size == newest.world_size && r.layout == newest.layout &&
                         r.layout_fingerprint == newest.layout_fingerprint && content_of(r) == newest_content;
      if (alike && kept_ranks.insert(r.rank).second) {
        kept.push_back(std::move(r));
        continue;
      }
      if (reported_duplicates.insert(r.source_id).second) {
        report.skipped.push_back(fmt::format(
            "{} rank {}: source {} passed over: instance_id {} is registered more than once (a restarted rank whose "
            "old lease has not expired, or two instances given one instance_id); its newest registration, {} (layout "
            "{}), names the instance used{}",
            id, r.rank, r.source_id, id, newest.source_id, newest.layout,
            alike ? "" : ", and this record differs from it (layout, fingerprint or content)"));
      }
    }
    std::sort(kept.begin(), kept.end(), [](const SourceRecord& a, const SourceRecord& b) { return a.rank < b.rank; });
    recs = std::move(kept);
  }

  // Vets the instances of `records` not seen before and adds the usable ones. `explain`: a
  // fingerprint mismatch is explained by asking the source for its fingerprint inputs (a wait
  // of up to stall_timeout_s); false while transfers run (a re-listing), which must not wait.
  // Errors: only ChooseContent's (the interrupt, the deadline, a checkpoint that cannot be read
  // while deciding a tie; never with `explain` false).
  Status AddInstances(const std::vector<SourceRecord>& records, const std::vector<Interval>& needed,
                      bool explain = true) {
    std::map<std::string, std::vector<SourceRecord>> by_instance;
    for (const SourceRecord& r : records) {
      if (r.instance_id == options.instance_id) {
        // An instance does not load from itself (its ranks that finished already serve). A
        // NotFound says so, in case these were meant to be loaded from (a seed given the
        // loader's instance_id).
        own_instance_listed = true;
        continue;
      }
      by_instance[r.instance_id].push_back(r);
      if (auto c = r.attributes.find(kSourceAttrContent); c != r.attributes.end())
        advertised_contents.insert(c->second);
    }
    for (auto& [id, recs] : by_instance) {
      if (!seen_instances.count(id)) KeepNewestPerRank(id, recs);  // an instance in use stays as it was taken
    }
    SW_RETURN_IF_ERROR(ChooseContent(by_instance, /*may_hash=*/explain));
    for (auto& [id, recs] : by_instance) {
      if (options.max_instances > 0 && static_cast<int>(instances.size()) >= options.max_instances) break;
      if (seen_instances.count(id)) continue;
      Instance inst;
      inst.id = id;
      const int world = recs.front().world_size;
      inst.layout_string = recs.front().layout;
      std::sort(recs.begin(), recs.end(), [](const SourceRecord& a, const SourceRecord& b) { return a.rank < b.rank; });
      bool complete = static_cast<int>(recs.size()) == world;
      for (int r = 0; complete && r < world; ++r) {
        complete = recs[static_cast<std::size_t>(r)].rank == r &&
                   recs[static_cast<std::size_t>(r)].world_size == world &&
                   recs[static_cast<std::size_t>(r)].layout == inst.layout_string &&
                   recs[static_cast<std::size_t>(r)].layout_fingerprint == recs.front().layout_fingerprint;
      }
      if (!complete) {
        // Not seen yet: its ranks register one after another (each after hashing its buffer),
        // so a later listing may find it whole. Reported once, until then.
        if (partial_instances.insert(id).second) {
          report.skipped.push_back(
              fmt::format("{}: {} of {} ranks READY or ranks disagree on the layout", id, recs.size(), world));
        }
        continue;
      }
      seen_instances.insert(id);
      if (partial_instances.erase(id)) {  // whole now: no longer skipped
        const std::string prefix = id + ": ";  // (clang 14 lambdas capture no structured bindings)
        std::erase_if(report.skipped, [&prefix](const std::string& why) { return why.starts_with(prefix); });
      }
      inst.ranks = recs;
      auto content_it = recs.front().attributes.find(kSourceAttrContent);
      if (content_it != recs.front().attributes.end()) {
        if (!content_disputed.empty()) {
          report.skipped.push_back(
              fmt::format("{}: {}: {}", id, ErrorCodeName(ErrorCode::kVerificationFailed), content_disputed));
          continue;
        }
        if (!content.empty() && content_it->second != content) {
          // Same identity, other bytes: the instance lies about its revision.
          report.skipped.push_back(
              fmt::format("{}: {}: it serves content {} under revision {}, expected content {}{}", id,
                          ErrorCodeName(ErrorCode::kVerificationFailed), content_it->second, identity.revision, content,
                          identity.revision.starts_with(kCheckpointRevisionPrefix)
                              ? ""
                              : " (what most of the instances listed when the load started serve)"));
          continue;
        }
        if (content.empty()) content = content_it->second;
      }
      auto cap = recs.front().attributes.find(kSourceAttrBandwidthCap);
      if (cap != recs.front().attributes.end()) inst.bandwidth = std::strtod(cap->second.c_str(), nullptr);
      auto src_layout = MakeLayoutFromString(model, inst.layout_string);
      if (!src_layout.ok()) {
        report.skipped.push_back(fmt::format("{}: {}: layout \"{}\" is not a layout of this model: {}", id,
                                             ErrorCodeName(ErrorCode::kLayoutMismatch), inst.layout_string,
                                             src_layout.status().message()));
        continue;
      }
      const std::vector<std::string> inputs = LayoutFingerprintInputs(*src_layout);
      if (LayoutFingerprintOf(inputs) != recs.front().layout_fingerprint) {
        // Compared before any descriptor exists. The source is healthy: not marked STALE.
        report.skipped.push_back(
            fmt::format("{}: {}: layout fingerprint {} of \"{}\" differs from {} computed here: {}", id,
                        ErrorCodeName(ErrorCode::kLayoutMismatch), recs.front().layout_fingerprint, inst.layout_string,
                        LayoutFingerprintOf(inputs),
                        explain ? MismatchReason(inst, inputs)
                                : std::string("found while loading (its fingerprint inputs were not asked for)")));
        for (auto& [rank, peer] : inst.peers) (void)Send(peer, Msg(P2pKind::kBye));
        continue;
      }
      auto coverage = workflows::CoverageOf(*src_layout, *layout, options.rank);
      if (!coverage.ok()) {
        report.skipped.push_back(fmt::format("{}: cannot plan from it: {}", id, coverage.status().ToString()));
        continue;
      }
      if (workflows::IntervalsOf(*coverage) != needed) {
        report.skipped.push_back(fmt::format("{}: its plan does not cover this rank's bytes", id));
        continue;
      }
      inst.coverage = std::move(*coverage);
      instances.push_back(std::move(inst));
    }
    return Status::Ok();
  }

  // Sets `content` (or `content_disputed`) from the instances of `by_instance` not seen yet,
  // when no content is known: the content most of them advertise is the revision's (an
  // instance serving other bytes under the same user revision, listed first, no longer decides
  // for the others); a tie for the most is decided by the fallback checkpoint's revision when
  // `may_hash` (the first listing: it reads the checkpoint whole, which a re-listing during the
  // transfers must not), else the content stays unknown and disputed (FromDisk then loads the
  // checkpoint only if it is one of the disputed contents). Errors: the checkpoint's hash
  // (interrupt, deadline, unreadable).
  Status ChooseContent(const std::map<std::string, std::vector<SourceRecord>>& by_instance, bool may_hash) {
    if (!content.empty() || !content_disputed.empty()) return Status::Ok();
    std::map<std::string, std::vector<std::string>> instances_of;  // content -> instance ids
    for (const auto& [id, recs] : by_instance) {
      if (seen_instances.count(id)) continue;
      auto c = recs.front().attributes.find(kSourceAttrContent);
      if (c != recs.front().attributes.end()) instances_of[c->second].push_back(id);
    }
    std::size_t most = 0, with_most = 0;
    for (const auto& [c, ids] : instances_of) {
      if (ids.size() > most) {
        most = ids.size();
        with_most = 1;
        content = c;
      } else if (ids.size() == most) {
        ++with_most;
      }
    }
    if (with_most <= 1) return Status::Ok();
    content.clear();
    std::vector<std::string> sides;
    for (const auto& [c, ids] : instances_of) sides.push_back(fmt::format("{} by {}", c, fmt::join(ids, ", ")));
    std::string checkpoint_says;
    if (!options.checkpoint_path.empty() && may_hash) {
      SW_ASSIGN_OR_RETURN(const Checkpoint checkpoint, Checkpoint::Open(options.checkpoint_path));
      SW_ASSIGN_OR_RETURN(const std::string on_disk, HashCheckpoint(checkpoint));
      checked_checkpoint = on_disk;
      if (auto it = instances_of.find(on_disk); it != instances_of.end() && it->second.size() == most) {
        content = on_disk;
        return Status::Ok();
      }
      checkpoint_says =
          fmt::format("; checkpoint \"{}\" has revision {}, none of them", options.checkpoint_path, on_disk);
    }
    content_disputed = fmt::format(
        "the instances of revision {} serve different contents ({}) and no content is served by most of them{}, so "
        "none is used: name the revision by its content (\"xxh3:...\") to load one, and stop the instances that "
        "serve other bytes under it",
        identity.revision, fmt::join(sides, "; "), checkpoint_says);
    return Status::Ok();
  }

  std::vector<std::size_t> Alive() const {
    std::vector<std::size_t> out;
    for (std::size_t i = 0; i < instances.size(); ++i) {
      if (!instances[i].failed) out.push_back(i);
    }
    return out;
  }

  // Splits the unassigned bytes evenly over the live instances as new moves.
  void Assign() {
    const std::vector<std::size_t> alive = Alive();
    if (alive.empty() || unassigned.empty()) return;
    const auto portions = workflows::SplitEvenly(unassigned, alive.size());
    unassigned.clear();
    for (std::size_t k = 0; k < alive.size(); ++k) {
      const std::vector<SourceRun> runs = workflows::Clip(instances[alive[k]].coverage, portions[k]);
      // From a bandwidth-capped instance, moves of at most lease_seconds of its
      // bandwidth: a lease is the unit in which a source serves loaders in priority
      // order, so a lower-priority loader that got in first yields after one short lease.
      const double bandwidth = instances[alive[k]].bandwidth;
      const std::uint64_t cut_bytes =
          bandwidth > 0 ? workflows::CappedMoveBytes(bandwidth, options.lease_seconds, options.move_bytes)
                        : options.move_bytes;
      for (auto& cut : workflows::CutMoves(runs, cut_bytes)) {
        LoadMove m;
        m.instance = alive[k];
        m.src_rank = cut.front().src_rank;
        for (const SourceRun& r : cut) m.bytes += r.bytes();
        m.runs = std::move(cut);
        moves.push_back(std::move(m));
      }
    }
  }

  void ReleaseHandle(LoadMove& m) {
    if (m.handle) {
      (void)agent->Release(*m.handle);
      m.handle.reset();
    }
  }

  // An instance died, stalled or served bad bytes: give its unfinished moves back. `hold`: its
  // STALE mark is held (the coordinator's source_mark_hold_s) because the source itself
  // reported that its served bytes differ from its committed content; a stall, a failed read
  // or bytes that changed on the way are marked until its next heartbeat only, since the cause
  // may be this loader's own (a starved process, its network, its memory) and a held mark
  // would keep a healthy source from the retry of the same load (engine catch-up retries a
  // stalled load).
  void FailInstance(std::size_t i, const std::string& reason, bool hold = false) {
    Instance& inst = instances[i];
    if (inst.failed) return;
    inst.failed = true;
    inst.failure = reason;
    inst.hold_mark = hold;
    report.failed.push_back(fmt::format("{}: {}", inst.id, reason));
    metrics.SourceInstances(Alive().size());
    for (auto& [rank, peer] : inst.peers) {
      (void)Send(peer, Msg(P2pKind::kBye));
      (void)agent->InvalidatePeer(peer);
    }
    for (LoadMove& m : moves) {
      if (m.instance != i || m.state == LoadMove::State::kDone || m.state == LoadMove::State::kAbandoned) continue;
      ReleaseHandle(m);
      m.state = LoadMove::State::kAbandoned;
      for (const SourceRun& r : m.runs) workflows::AppendIntervals(r, unassigned);
      ++report.rereads;
    }
    unassigned = workflows::Normalize(std::move(unassigned));
    to_mark_stale.push_back(i);
  }

  void Dispatch(const std::string& peer, const P2pMessage& m) {
    if (m.kind == P2pKind::kHelloAck) {
      auto it = hello_of_request.find(m.id);
      if (it == hello_of_request.end()) return;
      const auto [instance, src_rank] = it->second;
      if (!instances[instance].hello_acked.insert(src_rank).second) return;
      for (LoadMove& mv : moves) {  // moves that landed before the ack
        if (mv.instance == instance && mv.src_rank == src_rank && mv.state == LoadMove::State::kHashed &&
            !instances[instance].failed) {
          SendDigestRequest(mv, /*verify=*/false);
        }
      }
      return;
    }
    auto it = move_of_request.find(m.id);
    if (it == move_of_request.end()) return;
    LoadMove& mv = moves[it->second];
    Instance& inst = instances[mv.instance];
    if (inst.failed || inst.peers[mv.src_rank] != peer) return;
    const Clock::time_point now = Clock::now();
    switch (m.kind) {
      case P2pKind::kQueued:  // first acknowledgement, then a keepalive every 0.5 s while queued
        if (mv.state == LoadMove::State::kLeaseWait || mv.state == LoadMove::State::kLeaseQueued) {
          mv.state = LoadMove::State::kLeaseQueued;
          mv.deadline = now + Seconds(options.stall_timeout_s);
        }
        break;
      case P2pKind::kGrant:
        if (mv.state == LoadMove::State::kLeaseWait || mv.state == LoadMove::State::kLeaseQueued) {
          mv.pace_until = now + Seconds(m.seconds);
          StartRead(it->second);
        }
        break;
      case P2pKind::kDigestReply:
        if (mv.state != LoadMove::State::kDigestWait) break;
        if (m.status == DigestStatus::kOk && m.value != mv.local_digest && !mv.verifying) {
          // The source answered whole blocks from the digests it recorded at commit: ask
          // it to hash its current bytes and check them, to tell a source whose bytes
          // changed since commit (kCorrupt) from bytes corrupted on the way.
          SendDigestRequest(mv, /*verify=*/true);
          break;
        }
        if (m.status != DigestStatus::kOk || m.value != mv.local_digest) {
          FailInstance(
              mv.instance,
              m.status == DigestStatus::kCorrupt
                  ? fmt::format("rank {} reports its served bytes differ from its committed content", mv.src_rank)
              : m.status == DigestStatus::kOutOfRange
                  ? fmt::format("rank {} says a read range lies outside its buffer", mv.src_rank)
                  : fmt::format("digest mismatch on a {}-byte move from rank {}: source {:016x}, landed {:016x}",
                                mv.bytes, mv.src_rank, m.value, mv.local_digest),
              /*hold=*/m.status == DigestStatus::kCorrupt);  // the source says its own bytes are bad
          break;
        }
        if (inst.bandwidth > 0 && now < mv.pace_until) {
          mv.state = LoadMove::State::kPacing;
        } else {
          Finish(mv);
        }
        break;
      default:
        break;
    }
  }

  void Finish(LoadMove& mv) {
    Instance& inst = instances[mv.instance];
    if (inst.bandwidth > 0) {
      (void)Send(inst.peers[mv.src_rank], Msg(P2pKind::kRelease, mv.request_id));
    }
    mv.state = LoadMove::State::kDone;
    report.bytes_from_sources += mv.bytes;
    report.bytes_per_instance[inst.id] += mv.bytes;
    ++report.moves;
  }

  void StartRead(std::size_t index) {
    LoadMove& mv = moves[index];
    Instance& inst = instances[mv.instance];
    // A row-parallel shard's rows as one strided descriptor each, not one per row.
    std::vector<TransferDescriptor> descs;
    descs.reserve(mv.runs.size());
    for (const SourceRun& r : mv.runs) {
      descs.push_back({.local_region = region,
                       .local_offset = r.dst_offset,
                       .remote_region = inst.regions[mv.src_rank],
                       .remote_offset = r.src_offset,
                       .length = r.length,
                       .count = r.count,
                       .local_stride = r.dst_stride,
                       .remote_stride = r.src_stride});
    }
    auto handle = agent->PrepareTransfer(TransferOp::kRead, inst.peers[mv.src_rank], std::move(descs), std::nullopt);
    if (!handle.ok()) {
      FailInstance(mv.instance, "preparing a READ failed: " + handle.status().ToString());
      return;
    }
    mv.handle = *handle;
    Status posted = agent->Post(*handle);
    if (!posted.ok()) {
      FailInstance(mv.instance, "posting a READ failed: " + posted.ToString());
      return;
    }
    mv.state = LoadMove::State::kReading;
    if (first_read == Clock::time_point{}) first_read = Clock::now();
    // Generous for the bytes (10 MB/s), strict for silence. The READs in flight from one source
    // rank share its link: they share one deadline for all their bytes, so that a slow link is
    // not taken for a stalled source.
    std::uint64_t in_flight = 0;
    for (const LoadMove& o : moves) {
      if (o.state == LoadMove::State::kReading && o.instance == mv.instance && o.src_rank == mv.src_rank)
        in_flight += o.bytes;
    }
    // One deadline for all of them, covering all their bytes (they may progress in any order).
    const Clock::time_point deadline =
        Clock::now() + Seconds(options.stall_timeout_s + static_cast<double>(in_flight) / 10e6);
    for (LoadMove& o : moves) {
      if (o.state == LoadMove::State::kReading && o.instance == mv.instance && o.src_rank == mv.src_rank)
        o.deadline = std::max(o.deadline, deadline);
    }
    mv.deadline = deadline;
  }

  void AfterRead(std::size_t index) {
    LoadMove& mv = moves[index];
    ReleaseHandle(mv);
    const Clock::time_point t = Clock::now();
    workflows::MoveDigest digest;
    for (const SourceRun& r : mv.runs) {
      workflows::ForEachRow(r, [&](std::uint64_t dst, std::uint64_t src, std::uint64_t length) {
        workflows::MoveDigest::ForEachSegment(src, length, [&](std::uint64_t seg, std::uint64_t n) {
          digest.Add(XXH3_64bits(buffer.data() + dst + (seg - src), n));
        });
      });
    }
    mv.local_digest = digest.Value();
    report.digest_seconds += Since(t);
    mv.state = LoadMove::State::kHashed;
    if (instances[mv.instance].hello_acked.contains(mv.src_rank)) SendDigestRequest(mv, /*verify=*/false);
  }

  void SendDigestRequest(LoadMove& mv, bool verify) {
    P2pMessage request;
    request.kind = P2pKind::kDigest;
    request.id = mv.request_id;
    request.flag = verify;
    for (const SourceRun& r : mv.runs) {
      workflows::ForEachRow(
          r, [&](std::uint64_t, std::uint64_t src, std::uint64_t length) { request.ranges.emplace_back(src, length); });
    }
    Status sent = Send(instances[mv.instance].peers[mv.src_rank], request);
    if (!sent.ok()) {
      FailInstance(mv.instance, "sending a digest request failed: " + sent.ToString());
      return;
    }
    mv.verifying = verify;
    mv.state = LoadMove::State::kDigestWait;
    mv.deadline = Clock::now() + Seconds(options.stall_timeout_s);
  }

  // Starts queued moves: at most `per_peer` moves of one source rank past the queue.
  void Launch() {
    std::map<std::pair<std::size_t, std::uint32_t>, int> active;
    for (const LoadMove& m : moves) {
      if (m.state != LoadMove::State::kQueued && m.state != LoadMove::State::kDone &&
          m.state != LoadMove::State::kAbandoned) {
        ++active[{m.instance, m.src_rank}];
      }
    }
    for (std::size_t i = 0; i < moves.size(); ++i) {
      LoadMove& m = moves[i];
      if (m.state != LoadMove::State::kQueued) continue;
      Instance& inst = instances[m.instance];
      if (inst.failed) continue;
      if (!inst.peers.contains(m.src_rank)) continue;  // HELLO not sent yet
      // Capped: one move reading and the next one's lease request queued at the source,
      // so that when the grant ends the source chooses among every waiting loader
      // (this one included) by priority, instead of whoever asks again first.
      const int per_peer = inst.bandwidth > 0 ? 2 : 4;
      int& n = active[{m.instance, m.src_rank}];
      if (n >= per_peer) continue;
      ++n;
      m.request_id = next_id++;
      move_of_request[m.request_id] = i;
      if (inst.bandwidth > 0) {
        Status sent = Send(inst.peers[m.src_rank], LeaseRequest(m.request_id, m.bytes, options.instance_id,
                                                                static_cast<std::uint64_t>(options.lease_priority)));
        if (!sent.ok()) {
          FailInstance(m.instance, "sending a lease request failed: " + sent.ToString());
          continue;
        }
        m.state = LoadMove::State::kLeaseWait;
        m.deadline = Clock::now() + Seconds(options.stall_timeout_s);
      } else {
        StartRead(i);
      }
    }
  }

  // HELLO every source rank the live instances' moves need (once per rank).
  void Handshake() {
    for (LoadMove& m : moves) {
      if (m.state != LoadMove::State::kQueued) continue;
      Instance& inst = instances[m.instance];
      if (inst.failed || inst.peers.contains(m.src_rank)) continue;
      auto id = Hello(inst, m.src_rank, false);
      if (!id.ok()) {
        FailInstance(m.instance, fmt::format("rank {}: {}", m.src_rank, id.status().ToString()));
        continue;
      }
      hello_of_request[*id] = {m.instance, m.src_rank};
      inst.hello_deadline[m.src_rank] = Clock::now() + Seconds(options.stall_timeout_s);
    }
  }

  // A turn of Load's loop takes milliseconds (Poll waits at most 2 ms for a message). A
  // longer gap between two looks at the deadlines means this process did not run: stopped
  // (SIGSTOP, a debugger, a paused VM) or starved of CPU. Its sources were not silent
  // meanwhile; their answers wait in the agent's queues, and after a stop the lane threads
  // deliver them only once they run again, maybe after this thread's next look. Every stall
  // deadline moves by the gap, so that no healthy source is declared stalled, re-read
  // elsewhere (or from disk) and marked STALE because the loader itself paused: the
  // "healthy source marked STALE for the target's own problem" peers' users report.
  // Found by fault injection (`p2p-loader-stop`): a loader stopped 5-9 s blamed both of
  // its healthy seeds and read up to 87 MB of a rank from disk. The same for a stall of the
  // agent's lanes while this thread ran (Agent::LaneStallSeconds): READs and answers sat
  // unmoved on this side.
  void ForgiveOwnPause(Clock::time_point now) {
    // A turn waits at most 2 ms (slice 0): a gap over kOwnPauseSeconds is a pause.
    const double lanes_before = own_pause.lanes_s();
    const Clock::duration gap = own_pause.Check(now);
    const bool lanes_were_held = lanes_held;
    lanes_held = own_pause.lanes_s() > lanes_before;
    if (gap == Clock::duration::zero()) return;
    for (LoadMove& m : moves) m.deadline += gap;  // unused outside the waiting states: harmless
    for (Instance& inst : instances) {
      for (auto& [rank, answer_by] : inst.hello_deadline) answer_by += gap;
    }
    const double gap_s = std::chrono::duration<double>(gap).count();
    report.paused_seconds += gap_s;
    // A lane stall is forgiven look by look while it lasts: one warning when it is first seen.
    if (lanes_held) {
      if (!lanes_were_held) {
        spdlog::warn(
            "model loader rank {}: its agent's lanes are held up (not run for over {} s); its sources' "
            "stall deadlines move by as long as that lasts",
            options.rank, kLaneStallThresholdS);
      }
      return;
    }
    spdlog::warn(
        "model loader rank {}: this process did not run for {:.2f} s; its sources' stall deadlines "
        "move by as much",
        options.rank, gap_s);
  }

  // For a stall's error: what this loader forgave of its own pauses and lane stalls (they did
  // not count against the source), when anything.
  std::string Forgiven() const {
    if (report.paused_seconds <= 0) return "";
    return fmt::format(" (not counting {:.2f} s this loader or its lanes did not run, {:.2f} s of it the lanes)",
                       report.paused_seconds, own_pause.lanes_s());
  }

  void Poll() {
    for (std::size_t i = 0; i < moves.size(); ++i) {
      LoadMove& m = moves[i];
      if (m.state != LoadMove::State::kReading) continue;
      auto done = agent->Test(*m.handle);
      if (!done.ok()) {
        FailInstance(m.instance, fmt::format("READ from rank {} failed: {}", m.src_rank, done.status().ToString()));
      } else if (*done) {
        AfterRead(i);
      }
    }
    auto n = agent->WaitNotification(0.002);
    std::vector<Notification> notes;
    if (n.ok()) notes.push_back(std::move(*n));
    for (Notification& more : agent->TakeNotifications()) notes.push_back(std::move(more));
    for (const Notification& note : notes) {
      if (auto m = DecodeP2p(note.payload)) Dispatch(note.peer, *m);
    }
    // A dead or stopped source is found by its silence: READs that do not complete,
    // digest requests or HELLOs not answered, lease keepalives (every 0.5 s while
    // queued) that stop, each bounded by stall_timeout_s. (Agent::FailedPeers is not
    // consulted: on UCX 1.13.1 a failed shared-memory connect to one peer was seen to
    // flag a live peer of the same worker.)
    const Clock::time_point now = Clock::now();
    ForgiveOwnPause(now);
    for (LoadMove& m : moves) {
      if (instances[m.instance].failed) continue;
      switch (m.state) {
        case LoadMove::State::kPacing:
          if (now >= m.pace_until) Finish(m);
          break;
        case LoadMove::State::kQueued:
        case LoadMove::State::kHashed:
          if (instances[m.instance].hello_deadline.contains(m.src_rank) &&
              !instances[m.instance].hello_acked.contains(m.src_rank) &&
              now > instances[m.instance].hello_deadline[m.src_rank]) {
            FailInstance(m.instance, fmt::format("rank {} did not answer HELLO within {} s{}", m.src_rank,
                                                 options.stall_timeout_s, Forgiven()));
          }
          break;
        case LoadMove::State::kLeaseWait:
        case LoadMove::State::kLeaseQueued:
        case LoadMove::State::kReading:
        case LoadMove::State::kDigestWait:
          if (now > m.deadline) {
            const char* what = m.state == LoadMove::State::kReading      ? "READ not complete (10 MB/s allowed on top)"
                               : m.state == LoadMove::State::kDigestWait ? "digest request not answered"
                                                                         : "lease request not answered";
            FailInstance(m.instance, fmt::format("rank {}: {} within {:.1f} s (dead or stalled){}", m.src_rank, what,
                                                 options.stall_timeout_s, Forgiven()));
          }
          break;
        default:
          break;
      }
    }
  }

  Status FromDisk() {
    if (unassigned.empty()) return Status::Ok();
    if (options.checkpoint_path.empty()) {
      return Unavailable(fmt::format("{} bytes of rank {} have no usable source and no checkpoint was given",
                                     workflows::TotalBytes(unassigned), options.rank));
    }
    // What the checkpoint must hold: the content known, else the one every listed record of
    // the identity advertised (a skipped instance's too).
    std::string expected = content;
    if (expected.empty() && advertised_contents.size() == 1) expected = *advertised_contents.begin();
    if (expected.empty() && options.revision.empty()) {
      // The revision came from the sources (ResolveIdentity) and they do not say which bytes it
      // is: nothing ties this checkpoint to it, and its bytes would be served under it afterwards.
      return FailedPrecondition(fmt::format(
          "disk fallback of rank {}: the model being loaded ({}, revision {}) was taken from its sources, which "
          "advertise {} content for it, so checkpoint \"{}\" cannot be checked against it; refusing to load "
          "unchecked bytes (name the revision, ModelLoaderOptions::revision, to trust this checkpoint for it)",
          options.rank, identity.Digest(), identity.revision,
          advertised_contents.empty() ? std::string("no")
                                      : fmt::format("differing ({})", fmt::join(advertised_contents, ", ")),
          options.checkpoint_path));
    }
    SW_ASSIGN_OR_RETURN(const Checkpoint checkpoint, Checkpoint::Open(options.checkpoint_path));
    if (expected.empty() && !content_disputed.empty()) {
      // Instances disagree about the revision's bytes: the checkpoint must be one of them.
      if (checked_checkpoint.empty()) {
        SW_ASSIGN_OR_RETURN(checked_checkpoint, HashCheckpoint(checkpoint));
      }
      if (!advertised_contents.contains(checked_checkpoint)) {
        return FailedPrecondition(fmt::format(
            "disk fallback of rank {}: checkpoint \"{}\" has revision {}, and {}; refusing to load other bytes",
            options.rank, options.checkpoint_path, checked_checkpoint, content_disputed));
      }
      expected = checked_checkpoint;
    }
    if (!expected.empty() && expected != checked_checkpoint) {
      SW_ASSIGN_OR_RETURN(const std::string on_disk, HashCheckpoint(checkpoint));
      if (on_disk != expected) {
        return FailedPrecondition(fmt::format(
            "disk fallback of rank {}: checkpoint \"{}\" has revision {}, but the model being loaded ({}, revision "
            "{}) has content {}; refusing to load other bytes",
            options.rank, options.checkpoint_path, on_disk, identity.Digest(), identity.revision, expected));
      }
      checked_checkpoint = on_disk;
    }
    // Exactly the bytes no source gave, straight into the buffer (no copy of the rank beside
    // it; the padding between shards stays zero), stopped by the interrupt hook or the deadline.
    ShardReadOptions read;
    read.only = std::span<const Interval>(unassigned);
    read.interrupt = StopHook();
    const auto where = [&] {
      return fmt::format("disk fallback of rank {} reading {} bytes of checkpoint \"{}\"", options.rank,
                         workflows::TotalBytes(unassigned), options.checkpoint_path);
    };
    SW_RETURN_IF_ERROR(CheckStop(/*every_call=*/true).WithContext(where()));
    SW_RETURN_IF_ERROR(LoadShardsFromCheckpoint(checkpoint, *layout, options.rank, buffer, read).WithContext(where()));
    report.bytes_from_disk += workflows::TotalBytes(unassigned);
    unassigned.clear();
    return Status::Ok();
  }

  void Goodbye() {
    for (Instance& inst : instances) {
      if (inst.failed) continue;
      for (auto& [rank, peer] : inst.peers) (void)Send(peer, Msg(P2pKind::kBye));
    }
    for (LoadMove& m : moves) {
      if (m.handle) {
        // A READ that does not drain within 1 s abandons its source rank (InvalidatePeer), so
        // that none stays in flight, pinned and unreleasable, into the next Load.
        if (m.state == LoadMove::State::kReading && !agent->Cancel(*m.handle, 1.0).ok()) {
          (void)agent->InvalidatePeer(instances[m.instance].peers[m.src_rank]);
        }
        ReleaseHandle(m);
      }
    }
  }

  // Instances that started serving since the load began (a fleet whose loaded
  // instances become sources): take back every move not yet reading and split
  // those bytes over all live instances again.
  void Relist(const std::vector<SourceRecord>& records, const std::vector<Interval>& needed) {
    const std::size_t before = instances.size();
    (void)AddInstances(records, needed, /*explain=*/false);  // never fails without `explain`
    if (instances.size() == before) return;
    metrics.SourceInstances(Alive().size());
    for (LoadMove& m : moves) {
      const bool waiting = m.state == LoadMove::State::kQueued || m.state == LoadMove::State::kLeaseWait ||
                           m.state == LoadMove::State::kLeaseQueued;
      if (!waiting) continue;
      if (m.state != LoadMove::State::kQueued) {
        (void)Send(instances[m.instance].peers[m.src_rank], Msg(P2pKind::kRelease, m.request_id));
      }
      m.state = LoadMove::State::kAbandoned;
      for (const SourceRun& r : m.runs) workflows::AppendIntervals(r, unassigned);
    }
    unassigned = workflows::Normalize(std::move(unassigned));
    ++report.replans;
  }

  // Re-listing runs on its own thread so that a slow or vanished coordinator (a
  // ListSources retrying for unavailable_timeout_s) never stalls the transfers, their
  // keepalives and deadlines. At most one listing is in flight; the loader's
  // destructor waits for it.
  void StartRelist() {
    if (relisting.valid()) return;
    relisting = std::async(std::launch::async, [reg = registry, digest = identity.Digest()] {
      return reg->ListSources(digest, SourceState::kReady);
    });
  }
  void CollectRelist(const std::vector<Interval>& needed) {
    if (!relisting.valid() || relisting.wait_for(std::chrono::seconds(0)) != std::future_status::ready) return;
    Result<std::vector<SourceRecord>> records = relisting.get();
    if (!records.ok()) {
      report.skipped.push_back("re-listing sources failed: " + records.status().ToString());
      relist_failed = true;  // not retried in this load: the known sources carry on
      return;
    }
    Relist(*records, needed);
  }

  // STALE marks run off the transfer loop too, one helper thread per failed instance (its ranks
  // marked one after another): a coordinator that is gone costs each call its client's retry
  // window (unavailable_timeout_s), which must not stall the transfers or count as this
  // process's own pause. Load waits for them at its end for at most kMarksWaitSeconds (not
  // after an interrupt or load_timeout_s), the next Load and the destructor for all of them.
  static constexpr double kMarksWaitSeconds = 2.0;
  std::vector<std::future<void>> marking;

  void MarkFailedStale() {
    std::vector<std::tuple<std::string, std::string, bool>> marks;  // source id, reason, hold
    for (std::size_t i : to_mark_stale) {
      for (const SourceRecord& r : instances[i].ranks) {
        marks.emplace_back(r.source_id, "P2P loader " + options.instance_id + ": " + instances[i].failure,
                           instances[i].hold_mark);
      }
    }
    to_mark_stale.clear();
    if (marks.empty()) return;
    marking.push_back(std::async(std::launch::async, [reg = registry, marks = std::move(marks)] {
      for (const auto& [id, reason, hold] : marks) (void)reg->MarkSourceStale(id, reason, hold);
    }));
  }

  // Waits for the marks in flight, at most `timeout_s` in all; drops those that finished.
  void AwaitMarks(double timeout_s) {
    const Clock::time_point until = Clock::now() + Seconds(timeout_s);
    std::erase_if(marking, [&](std::future<void>& f) { return f.wait_until(until) == std::future_status::ready; });
  }

  // Asks options.interrupt (in the transfer loop at most every kInterruptPollSeconds;
  // `every_call`: now) and the deadline: non-OK (the interrupt's status, or kTimedOut) ends
  // the Load, which is then cut short.
  Status CheckStop(bool every_call = false) {
    if (options.interrupt && (every_call || Since(last_interrupt_check) >= kInterruptPollSeconds)) {
      last_interrupt_check = Clock::now();
      Status interrupted = options.interrupt();
      if (!interrupted.ok()) {
        cut_short = true;
        return interrupted;
      }
    }
    if (Clock::now() > give_up) {
      cut_short = true;
      return TimedOut(
          fmt::format("P2P load of rank {} did not finish within {} s", options.rank, options.load_timeout_s));
    }
    return Status::Ok();
  }
  // What a Load cut short was still doing, for its error: the bytes verified so far, and the
  // sources whose moves had not finished (at most kShown of them, most bytes first), with what
  // each move waited for. E.g. "40960 of 1318912 bytes verified; unfinished: instance slow rank 0:
  // 3 move(s), 49152 bytes (2 queued, 1 verified, paced by the source's bandwidth cap)".
  std::string Progress() const {
    static constexpr std::size_t kShown = 4;
    std::uint64_t verified = 0;
    std::uint64_t total = workflows::TotalBytes(unassigned);
    struct Pending {
      std::uint64_t bytes = 0;
      int moves = 0;
      std::map<std::string, int> waits;  // what the moves wait for -> how many
    };
    std::map<std::pair<std::size_t, std::uint32_t>, Pending> pending;  // (instance, src rank)
    for (const LoadMove& m : moves) {
      if (m.state == LoadMove::State::kAbandoned) continue;
      total += m.bytes;
      if (m.state == LoadMove::State::kDone || m.state == LoadMove::State::kPacing) verified += m.bytes;
      if (m.state == LoadMove::State::kDone) continue;
      Pending& p = pending[{m.instance, m.src_rank}];
      p.bytes += m.bytes;
      ++p.moves;
      ++p.waits[MoveWait(m.state)];
    }
    std::vector<std::pair<std::pair<std::size_t, std::uint32_t>, Pending>> order(pending.begin(), pending.end());
    std::stable_sort(order.begin(), order.end(),
                     [](const auto& a, const auto& b) { return a.second.bytes > b.second.bytes; });
    std::vector<std::string> parts;
    for (std::size_t i = 0; i < order.size() && i < kShown; ++i) {
      const auto& [where, p] = order[i];
      std::vector<std::string> waits;
      for (const auto& [what, n] : p.waits) waits.push_back(fmt::format("{} {}", n, what));
      parts.push_back(fmt::format("instance {} rank {}: {} move(s), {} bytes ({})", instances[where.first].id,
                                  where.second, p.moves, p.bytes, fmt::join(waits, ", ")));
    }
    if (order.size() > kShown) parts.push_back(fmt::format("and {} more source rank(s)", order.size() - kShown));
    std::string text = fmt::format("{} of {} bytes verified", verified, total);
    if (!parts.empty()) text += fmt::format("; unfinished: {}", fmt::join(parts, "; "));
    if (!unassigned.empty()) {
      text += fmt::format("; {} bytes had no usable source{}", workflows::TotalBytes(unassigned),
                          options.checkpoint_path.empty() ? "" : " (left to the disk fallback)");
    }
    return text;
  }
  static const char* MoveWait(LoadMove::State state) {
    switch (state) {
      case LoadMove::State::kQueued:
        return "queued";
      case LoadMove::State::kLeaseWait:
        return "waiting for the source's lease";
      case LoadMove::State::kLeaseQueued:
        return "queued at the source for a lease";
      case LoadMove::State::kReading:
        return "READ in flight";
      case LoadMove::State::kHashed:
        return "landed, waiting for the source's HELLO answer";
      case LoadMove::State::kDigestWait:
        return "landed, waiting for the source's digest";
      case LoadMove::State::kPacing:
        return "verified, paced by the source's bandwidth cap";
      default:
        return "finished";
    }
  }

  // CheckStop as the hook of a checkpoint read (the disk fallback, its revision check), which
  // calls it per tensor and per kInterruptCheckBytes: the deadline each time, options.interrupt
  // at most every kInterruptPollSeconds (a Python hook takes the GIL; a checkpoint may hold
  // 100,000 tensors). Each such read first asks CheckStop(true) itself, so a stop already asked
  // for (e.g. a Ctrl-C during the transfers) is seen before the read starts.
  std::function<Status()> StopHook() {
    return [this] { return CheckStop(); };
  }

  // CheckpointRevision of the fallback checkpoint, stopped by the interrupt or the deadline.
  Result<std::string> HashCheckpoint(const Checkpoint& checkpoint) {
    const std::string where =
        fmt::format("rank {} hashing checkpoint \"{}\" to check its revision", options.rank, options.checkpoint_path);
    SW_RETURN_IF_ERROR(CheckStop(/*every_call=*/true).WithContext(where));
    auto revision = CheckpointRevision(checkpoint, StopHook());
    if (!revision.ok()) return revision.status().WithContext(where);
    return revision;
  }

  Result<LoadReport> Run() {
    const Clock::time_point start = Clock::now();
    give_up = start + Seconds(options.load_timeout_s);
    last_interrupt_check = start;
    report = LoadReport{};
    instances.clear();
    moves.clear();
    move_of_request.clear();
    hello_of_request.clear();
    to_mark_stale.clear();
    seen_instances.clear();
    own_instance_listed = false;
    partial_instances.clear();
    reported_duplicates.clear();
    checked_checkpoint.clear();
    if (relisting.valid()) relisting.wait();  // of a previous failed Load
    relisting = {};
    for (std::future<void>& f : marking) f.wait();  // of a previous Load
    marking.clear();
    advertised_contents.clear();
    content_disputed.clear();
    cut_short = false;
    relist_failed = false;
    SW_RETURN_IF_ERROR(ResolveIdentity());
    content = identity.revision.starts_with(kCheckpointRevisionPrefix) ? identity.revision : "";
    report.identity = identity.Digest();
    report.buffer_bytes = buffer.size();
    const std::vector<Interval> needed = NeededIntervals(*layout, options.rank);
    SW_RETURN_IF_ERROR(FindInstances(needed));
    const Clock::time_point listed = Clock::now();
    report.list_seconds = std::chrono::duration<double>(listed - start).count();
    first_read = {};
    // Before any deadline is set.
    own_pause = workflows::OwnPauseForgiveness(0.0, Clock::now(), workflows::LaneStallOf(*agent));
    lanes_held = false;
    unassigned = needed;
    Clock::time_point last_list = Clock::now();
    if (instances.empty() && options.checkpoint_path.empty()) {
      return NotFound(fmt::format(
          "no usable READY source of {} for layout {} rank {} and no checkpoint{}{}{}{}{}", identity.Digest(),
          options.layout, options.rank, report.skipped.empty() ? "" : "; skipped: ", fmt::join(report.skipped, "; "),
          own_instance_listed ? fmt::format("; passed over: the sources of {}, this loader's own instance_id (an "
                                            "instance never loads from itself: give the loader another instance_id "
                                            "than the sources)",
                                            options.instance_id)
                              : "",
          RevisionsServedHint(), StaleSourcesHint(identity.StructureDigest())));
    }
    while (true) {
      Assign();
      if (!unassigned.empty()) break;  // nothing alive to give them to
      Handshake();
      Launch();
      const bool all_done = std::all_of(moves.begin(), moves.end(), [](const LoadMove& m) {
        return m.state == LoadMove::State::kDone || m.state == LoadMove::State::kAbandoned;
      });
      if (all_done && unassigned.empty()) break;
      if (Status stop = CheckStop(); !stop.ok()) {
        // A load that ran out of load_timeout_s says what it still waited for (the sources
        // are alive: a silent one fails within stall_timeout_s and is read elsewhere).
        if (stop.code() == ErrorCode::kTimedOut) stop = TimedOut(fmt::format("{}: {}", stop.message(), Progress()));
        Goodbye();
        return stop;
      }
      Poll();
      if (options.relist_interval_s > 0 && Since(last_list) > options.relist_interval_s) {
        last_list = Clock::now();
        const bool waiting = std::any_of(moves.begin(), moves.end(), [](const LoadMove& m) {
          return m.state == LoadMove::State::kQueued || m.state == LoadMove::State::kLeaseWait ||
                 m.state == LoadMove::State::kLeaseQueued;
        });
        if (waiting && !relist_failed) StartRelist();
      }
      CollectRelist(needed);
      if (!to_mark_stale.empty() && !unassigned.empty() && !Alive().empty()) {
        Assign();  // re-planned first, then the failed source is marked
        MarkFailedStale();
      }
    }
    const Clock::time_point transferred = Clock::now();
    if (first_read != Clock::time_point{}) {
      report.handshake_seconds = std::chrono::duration<double>(first_read - listed).count();
      report.transfer_seconds = std::chrono::duration<double>(transferred - first_read).count();
    } else {
      report.handshake_seconds = std::chrono::duration<double>(transferred - listed).count();
    }
    Goodbye();
    MarkFailedStale();
    Status disk = FromDisk();
    if (!disk.ok()) {
      if (!report.failed.empty()) {  // keeps the disk error's code (e.g. kFailedPrecondition for another revision)
        return Status(disk.code(),
                      fmt::format("{}; sources failed: {}", disk.message(), fmt::join(report.failed, "; ")));
      }
      return disk;
    }
    report.seconds = Since(start);
    report.finish_seconds = Since(transferred);
    loaded = true;
    return report;
  }
};

ModelLoader::ModelLoader(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ModelLoader::~ModelLoader() = default;

Result<std::unique_ptr<ModelLoader>> ModelLoader::Create(SourceRegistry& registry, const ModelDescription& model,
                                                         ModelLoaderOptions options) {
  if (options.instance_id.empty()) return InvalidArgument("model loader: empty instance id");
  if (options.lease_priority < 0) return InvalidArgument("model loader: negative lease_priority");
  if (!(options.lease_seconds > 0) || !std::isfinite(options.lease_seconds)) {
    return InvalidArgument("model loader: lease_seconds must be finite and > 0");
  }
  if (!(options.stall_timeout_s > 0) || !(options.load_timeout_s > 0) || options.move_bytes == 0) {
    return InvalidArgument("model loader: stall and load timeouts must be > 0 and move_bytes > 0");
  }
  if (options.stall_timeout_s < kMinStallTimeoutSeconds) {
    // A stalled source is marked STALE for every loader: a bound below what a healthy source
    // needs to answer would take healthy sources out of service.
    return InvalidArgument(fmt::format(
        "model loader: stall_timeout_s {} is below {} s, less than a healthy source may take to answer on a loaded "
        "host; the sources it gives up on are marked STALE for every loader",
        options.stall_timeout_s, kMinStallTimeoutSeconds));
  }
  auto layout = MakeLayoutFromString(model, options.layout);
  if (!layout.ok()) return layout.status().WithContext("model loader");
  if (options.rank < 0 || options.rank >= layout->world_size()) {
    return InvalidArgument(fmt::format("model loader: rank {} outside layout {} of {} ranks", options.rank,
                                       options.layout, layout->world_size()));
  }
  auto impl = std::make_unique<Impl>();
  impl->registry = &registry;
  impl->model = model;
  impl->layout = std::move(*layout);
  AgentOptions agent_options = options.agent;
  if (agent_options.metrics == nullptr) agent_options.metrics = options.metrics;
  SW_ASSIGN_OR_RETURN(impl->metrics, workflows::LoaderMetrics::Make(options.metrics, options.rank));
  if (agent_options.name.empty()) {
    agent_options.name =
        fmt::format("{}/loader/{}/{}-{}", options.instance_id, options.rank, ::getpid(), g_loader_counter.fetch_add(1));
  }
  if (options.lease_priority == 0) {
    options.lease_priority =
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
            .count();
  }
  impl->options = std::move(options);
  SW_ASSIGN_OR_RETURN(impl->agent, Agent::Create(agent_options));
  const std::uint64_t bytes = impl->layout->rank(impl->options.rank).buffer_bytes;
  if (!impl->options.buffer.empty()) {
    if (impl->options.buffer.size() < bytes) {
      return InvalidArgument(fmt::format("model loader: the caller's buffer has {} bytes, rank {} of {} needs {}",
                                         impl->options.buffer.size(), impl->options.rank, impl->options.layout, bytes));
    }
    SW_ASSIGN_OR_RETURN(impl->region,
                        impl->agent->RegisterMemory(impl->options.buffer.data(), impl->options.buffer.size()));
    impl->buffer = impl->options.buffer.first(bytes);
  } else {
    // Private huge-page memory, zero-filled and populated: same-host READs land in
    // it by kernel copy (ReadPath::kAuto), which pays none of the per-4-KiB-page
    // hypervisor faults of a copy through a mapping of the source (the cause of a
    // P2P load running slower than a warm disk load on the PVM VMs; docs/benchmarks_history.md,
    // "Issue 8 item 9"). Loaders and sources on other hosts reach it through UCX.
    SW_ASSIGN_OR_RETURN(impl->region,
                        impl->agent->AllocateArena(std::max<std::uint64_t>(bytes, 64), ArenaMemory::kPrivateHugePages));
    impl->buffer = impl->agent->RegionBytes(impl->region).first(bytes);
    return std::unique_ptr<ModelLoader>(new ModelLoader(std::move(impl)));  // already zero, padding included
  }
  PopulateForWrite(impl->buffer);
  // Only the padding between shards of the caller's buffer is zeroed here: a
  // committed load has written every shard byte (from sources or disk), so zeroing
  // those too would only cost a pass over the whole buffer.
  std::uint64_t at = 0;
  for (const Interval& iv : NeededIntervals(*impl->layout, impl->options.rank)) {
    std::fill(impl->buffer.begin() + static_cast<std::ptrdiff_t>(at),
              impl->buffer.begin() + static_cast<std::ptrdiff_t>(iv.begin), std::byte{0});
    at = iv.end;
  }
  std::fill(impl->buffer.begin() + static_cast<std::ptrdiff_t>(at), impl->buffer.end(), std::byte{0});
  return std::unique_ptr<ModelLoader>(new ModelLoader(std::move(impl)));
}

Result<LoadReport> ModelLoader::Load() {
  if (!impl_ || !impl_->agent) return InvalidArgument("model loader: already turned into a source");
  if (impl_->loaded) return InvalidArgument("model loader: already loaded");
  const auto t0 = std::chrono::steady_clock::now();
  auto report = impl_->Run();
  if (!impl_->cut_short) impl_->AwaitMarks(Impl::kMarksWaitSeconds);
  impl_->metrics.Loaded(report.ok() ? Status::Ok() : report.status(),
                        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
                        report.ok() ? report->bytes_from_sources : 0, report.ok() ? report->bytes_from_disk : 0);
  return report;
}

bool ModelLoader::loaded() const { return impl_ && impl_->loaded; }
std::span<std::byte> ModelLoader::buffer() const { return impl_ ? impl_->buffer : std::span<std::byte>{}; }
const Layout& ModelLoader::layout() const { return *impl_->layout; }
const ModelIdentity& ModelLoader::identity() const { return impl_->identity; }

Result<std::unique_ptr<ModelSource>> ModelLoader::BecomeSource(ModelSourceOptions options) {
  if (!loaded()) return FailedPrecondition("model loader: BecomeSource before a committed load");
  if (options.instance_id.empty()) options.instance_id = impl_->options.instance_id;
  if (options.layout.empty()) options.layout = impl_->options.layout;
  if (options.content_revision.empty()) options.content_revision = impl_->content;
  options.rank = impl_->options.rank;
  auto source = ModelSource::Start(*impl_->registry, impl_->agent, impl_->region, impl_->buffer, *impl_->layout,
                                   impl_->identity, std::move(options));
  if (!source.ok()) return source.status();  // the loader keeps its buffer and agent
  impl_->loaded = false;
  impl_->buffer = {};
  return source;
}

}  // namespace shardwire
