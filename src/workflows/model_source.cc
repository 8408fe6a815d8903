// ModelSource: a serving rank's weights offered to P2P loaders (model_loading.h).
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <thread>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "shardwire/model_layouts.h"
#include "shardwire/model_loading.h"
#include "workflows/p2p_messages.h"
#include "workflows/xxh3_dispatch.h"

namespace shardwire {
namespace {

using Clock = std::chrono::steady_clock;

// Seconds one heartbeat may take in all (ModelSourceOptions::heartbeat_interval_s).
double HeartbeatBoundS(const ModelSourceOptions& options) { return std::max(2 * options.heartbeat_interval_s, 1.0); }

using workflows::DecodeP2p;
using workflows::DigestStatus;
using workflows::EncodeP2p;
using workflows::P2pKind;
using workflows::P2pMessage;

constexpr std::uint64_t kBlockBytes = workflows::kSourceBlockBytes;  // granularity of the committed-content check

std::atomic<std::uint64_t> g_agent_counter{0};

std::vector<std::uint64_t> BlockDigests(std::span<const std::byte> buffer) {
  std::vector<std::uint64_t> out;
  for (std::uint64_t off = 0; off < buffer.size(); off += kBlockBytes) {
    const std::uint64_t len = std::min<std::uint64_t>(kBlockBytes, buffer.size() - off);
    out.push_back(XXH3_64bits(buffer.data() + off, len));
  }
  return out;
}

// The source's layout, after checking the options that do not need an agent.
Result<Layout> SourceLayout(const ModelDescription& model, const ModelSourceOptions& options) {
  auto layout = MakeLayoutFromString(model, options.layout);
  if (!layout.ok()) return layout.status().WithContext("model source");
  if (options.rank < 0 || options.rank >= layout->world_size()) {
    return InvalidArgument(fmt::format("model source: rank {} outside layout {} of {} ranks", options.rank,
                                       options.layout, layout->world_size()));
  }
  if (options.instance_id.empty()) return InvalidArgument("model source: empty instance id");
  return std::move(*layout);
}

Result<std::unique_ptr<Agent>> CreateSourceAgent(const ModelSourceOptions& options) {
  AgentOptions agent_options = options.agent;
  if (agent_options.name.empty()) {
    agent_options.name =
        fmt::format("{}/source/{}/{}-{}", options.instance_id, options.rank, ::getpid(), g_agent_counter.fetch_add(1));
  }
  return Agent::Create(agent_options);
}

}  // namespace

struct ModelSource::Impl {
  SourceRegistry* registry = nullptr;
  std::unique_ptr<Agent> agent;
  RegionId region = 0;
  std::span<std::byte> buffer;
  ModelSourceOptions options;
  SourceRecord record;  // what is registered (source_id updated on re-registration)
  std::string fingerprint;
  std::vector<std::string> fingerprint_inputs;
  std::vector<std::uint64_t> block_digests;
  std::vector<std::byte> snapshot;  // Digest's copy of one block (server thread only)
  bool read_only = false;  // the buffer is mprotect'ed PROT_READ (Create): parts need no block check

  mutable std::mutex mu;  // guards record.source_id, stop, last_mark, marks_seen
  std::condition_variable cv;
  bool stop = false;
  std::optional<SourceHeartbeat> last_mark;  // of the last heartbeat that found a loader's mark
  std::uint64_t marks_seen = 0;
  std::atomic<bool> stop_server{false};
  std::thread heartbeat_thread;
  std::thread server_thread;
  std::atomic<std::uint64_t> digests_served{0};
  std::atomic<std::uint64_t> bytes_digested{0};

  // Leases (server thread only).
  struct LeaseRequest {
    std::string peer;
    std::uint64_t id = 0;
    std::uint64_t bytes = 0;
    std::string instance;  // the loader instance asking
  };
  // Loader instance -> its priority (as its first lease request said; lower first).
  // Grants go to the instance of the lowest (priority, instance id), then arrival, so
  // one loader finishes (and starts serving) before the next is served instead of all
  // finishing last together, and every source rank of every source agrees on the
  // order (the loader's ranks share one priority).
  std::map<std::string, std::uint64_t> first_request;
  // Peers that sent a HELLO this source answered: only they may ask for leases (a LEASE is
  // a loader's request after its handshake; a stray one is ignored).
  std::set<std::string> greeted;
  std::deque<LeaseRequest> lease_queue;
  std::optional<LeaseRequest> lease_holder;
  Clock::time_point lease_deadline;
  Clock::time_point next_keepalive;

  // Sends `m` to `peer`. A loader the agent knows is gone (kPeerDisconnected: its socket or
  // endpoint failed; kNotFound: forgotten) loses its leases at once, so its queued requests
  // are never granted to nobody; other failures are not ours to handle.
  void Reply(const std::string& peer, const P2pMessage& m) {
    const std::vector<std::byte> payload = EncodeP2p(m);
    const Status sent = agent->SendMessage(peer, payload);
    if (sent.code() == ErrorCode::kPeerDisconnected || sent.code() == ErrorCode::kNotFound) DropLeases(peer);
  }

  // The MoveDigest of the requested ranges (p2p_messages.h). A segment that is a whole
  // block is answered with the digest recorded at commit, without reading it (unless the
  // request asks to verify); a part of a block is hashed from the buffer when it is
  // read-only and the request does not ask to verify; otherwise from a snapshot of its
  // block that is checked against the recorded digest (kCorrupt when it changed since
  // commit), so the part's digest and the check see the same bytes: a write between two
  // reads of the buffer (which the contract forbids) cannot pass the check with bytes
  // other than the committed ones.
  P2pMessage Digest(const P2pMessage& request) {
    P2pMessage reply;
    reply.kind = P2pKind::kDigestReply;
    reply.id = request.id;
    const bool verify = request.flag;
    workflows::MoveDigest digest;
    std::uint64_t bytes = 0;
    auto block_length = [&](std::uint64_t b) {
      return std::min<std::uint64_t>(kBlockBytes, buffer.size() - b * kBlockBytes);
    };
    // The block the last part came from, copied and checked once: a row-parallel move's
    // ranges are its rows (thousands of ~1 KiB ranges, ascending), so each block is
    // copied once per move.
    std::uint64_t snapshot_block = std::numeric_limits<std::uint64_t>::max();
    auto snapshot_part = [&](std::uint64_t seg, std::uint64_t b) -> const std::byte* {
      if (b != snapshot_block) {
        snapshot.resize(kBlockBytes);
        std::memcpy(snapshot.data(), buffer.data() + b * kBlockBytes, block_length(b));
        snapshot_block = b;
        if (XXH3_64bits(snapshot.data(), block_length(b)) != block_digests[b]) reply.status = DigestStatus::kCorrupt;
      }
      return snapshot.data() + (seg - b * kBlockBytes);
    };
    for (const auto& [off, len] : request.ranges) {
      if (off > buffer.size() || len > buffer.size() - off) {
        reply.status = DigestStatus::kOutOfRange;
        break;
      }
      bytes += len;
      workflows::MoveDigest::ForEachSegment(off, len, [&](std::uint64_t seg, std::uint64_t n) {
        const std::uint64_t b = seg / kBlockBytes;
        if (seg == b * kBlockBytes && n == block_length(b)) {
          if (!verify) {
            digest.Add(block_digests[b]);
            return;
          }
          const std::uint64_t now = XXH3_64bits(buffer.data() + seg, n);
          if (now != block_digests[b]) reply.status = DigestStatus::kCorrupt;
          digest.Add(now);
          return;
        }
        const std::byte* part = (verify || !read_only) ? snapshot_part(seg, b) : buffer.data() + seg;
        digest.Add(XXH3_64bits(part, n));
      });
    }
    reply.value = digest.Value();
    if (options.test_lie_about_digests) reply.value += 1;
    digests_served.fetch_add(1);
    bytes_digested.fetch_add(bytes);
    return reply;
  }

  // Queued leases one peer may have: a loader asks for one per move it reads from this rank
  // and keeps a few in flight; more is a broken or hostile peer (ignored beyond the bound).
  static constexpr std::size_t kMaxQueuedLeasesPerPeer = 256;

  void DropLeases(const std::string& peer) {
    greeted.erase(peer);
    std::erase_if(lease_queue, [&](const LeaseRequest& r) { return r.peer == peer; });
    if (lease_holder && lease_holder->peer == peer) lease_holder.reset();
  }

  void Handle(const Notification& n) {
    const std::optional<P2pMessage> m = DecodeP2p(n.payload);
    if (!m) return;  // not ours; ignore
    switch (m->kind) {
      case P2pKind::kHello: {
        // Only the sender's own blob: one naming another peer would replace that peer's connection.
        auto name = agent->ImportMetadata(m->blob, n.peer);
        if (!name.ok()) return;  // cannot answer a peer we cannot reach
        P2pMessage ack;
        ack.kind = P2pKind::kHelloAck;
        ack.id = m->id;
        ack.text = fingerprint;
        if (m->flag) ack.lines = fingerprint_inputs;
        greeted.insert(n.peer);
        Reply(n.peer, ack);
        break;
      }
      case P2pKind::kDigest:
        Reply(n.peer, Digest(*m));
        break;
      case P2pKind::kLease: {
        if (!greeted.contains(n.peer)) return;
        if (std::count_if(lease_queue.begin(), lease_queue.end(), [&](const LeaseRequest& r) {
              return r.peer == n.peer;
            }) >= static_cast<std::ptrdiff_t>(kMaxQueuedLeasesPerPeer)) {
          return;
        }
        first_request.try_emplace(m->text, m->priority);
        // A lease covers at most this rank's whole buffer: a larger count (2^64 - 1 overflowed
        // the deadline's clock) would hold every other loader for as long as it says.
        lease_queue.push_back({n.peer, m->id, std::min<std::uint64_t>(m->value, buffer.size()), m->text});
        P2pMessage queued;
        queued.kind = P2pKind::kQueued;
        queued.id = m->id;
        Reply(n.peer, queued);
        break;
      }
      case P2pKind::kRelease:
        if (lease_holder && lease_holder->peer == n.peer && lease_holder->id == m->id) {
          lease_holder.reset();
        } else {
          std::erase_if(lease_queue, [&](const LeaseRequest& r) { return r.peer == n.peer && r.id == m->id; });
        }
        break;
      case P2pKind::kBye:
        DropLeases(n.peer);
        (void)agent->InvalidatePeer(n.peer);
        break;
      default:
        break;
    }
  }

  void GrantLeases() {
    const Clock::time_point now = Clock::now();
    if (!lease_queue.empty() && now > next_keepalive) {  // queued readers know we are alive
      next_keepalive = now + std::chrono::milliseconds(500);
      // Loaders the agent found dead (a hung-up message link, a UCX error, a failed liveness
      // check) hold nothing, their current grant included: the readers queued behind go on.
      for (const std::string& dead : agent->FailedPeers()) {
        DropLeases(dead);
        (void)agent->InvalidatePeer(dead);  // as BYE: no longer listed as failed
      }
      const std::deque<LeaseRequest> queue = lease_queue;  // Reply drops the leases of a dead loader
      for (const LeaseRequest& r : queue) {
        P2pMessage queued;
        queued.kind = P2pKind::kQueued;
        queued.id = r.id;
        Reply(r.peer, queued);
      }
    }
    // A grant ends bytes / cap after it was given, whether or not the reader released
    // it: the source moves on by itself, so the next reader's GRANT leaves at once
    // instead of a RELEASE -> GRANT round trip later (on a busy host tens of ms per
    // lease), and a reader that died or overran holds nothing.
    if (lease_holder && now >= lease_deadline) lease_holder.reset();
    // A grant that cannot reach its loader (gone) drops its leases: the next one goes at once.
    while (!lease_holder && !lease_queue.empty()) Grant(now);
  }

  // Grants the first lease of the queue (by priority, then instance, then arrival).
  void Grant(Clock::time_point now) {
    auto next =
        std::min_element(lease_queue.begin(), lease_queue.end(), [&](const LeaseRequest& a, const LeaseRequest& b) {
          // min_element keeps the first of equals: earlier arrival wins ties.
          const std::uint64_t pa = first_request[a.instance], pb = first_request[b.instance];
          return pa != pb ? pa < pb : a.instance < b.instance;
        });
    lease_holder = *next;
    lease_queue.erase(next);
    if (first_request.size() > 4096) first_request.clear();  // bounded memory; order restarts
    // At most 1e9 s: a cap of a fraction of a byte per second must not overflow the clock.
    const double seconds = options.bandwidth_bytes_per_s > 0
                               ? std::min(static_cast<double>(lease_holder->bytes) / options.bandwidth_bytes_per_s, 1e9)
                               : 0;
    lease_deadline = now + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
    P2pMessage grant;
    grant.kind = P2pKind::kGrant;
    grant.id = lease_holder->id;
    grant.seconds = seconds;
    Reply(lease_holder->peer, grant);
  }

  void Serve() {
    while (!stop_server.load()) {
      auto n = agent->WaitNotification(lease_holder ? 0.005 : 0.05);
      if (n.ok()) {
        Handle(*n);
        for (const Notification& more : agent->TakeNotifications()) Handle(more);
      }
      GrantLeases();
    }
  }

  void Heartbeat() {
    std::unique_lock<std::mutex> lock(mu);
    bool failing = false;  // the last heartbeat failed: logged once, and again at recovery
    auto outcome = [&](const Status& s, const std::string& id) {
      if (!s.ok() && !failing) {
        spdlog::warn(
            "model source {} rank {}: heartbeat of {} failed ({}); loaders see it STALE once the "
            "coordinator's stale_after_s passes without one; retrying every {} s",
            record.instance_id, record.rank, id, s.ToString(), options.heartbeat_interval_s);
      } else if (s.ok() && failing) {
        spdlog::warn("model source {} rank {}: heartbeats of {} succeed again", record.instance_id, record.rank, id);
      }
      failing = !s.ok();
    };
    while (!stop) {
      cv.wait_for(lock, std::chrono::duration<double>(options.heartbeat_interval_s));
      if (stop) break;
      const std::string id = record.source_id;
      lock.unlock();
      Result<SourceHeartbeat> s = registry->HeartbeatSource(id, HeartbeatBoundS(options));
      if (s.status().code() == ErrorCode::kNotFound) {
        // The coordinator deleted the record (missed heartbeats) or lost it (restarted
        // without Redis): register again, so loaders find this source without a restart.
        auto again = registry->RegisterSource(record, HeartbeatBoundS(options));
        lock.lock();
        if (again.ok()) {
          spdlog::warn("model source {} rank {}: the coordinator had no record {} (deleted, or restarted without "
                       "Redis); registered again as {}",
                       record.instance_id, record.rank, id, again->source_id);
          record.source_id = again->source_id;
        }
        outcome(again.status(), id);
        continue;
      }
      lock.lock();
      outcome(s.status(), id);
      if (s.ok()) Found(*s, id);
    }
  }

  // Records and logs what a heartbeat of `id` found (mu held): a loader's mark is logged
  // when it first shows and when its state or reason changes (a held mark shows at every
  // heartbeat for source_mark_hold_s), and the end of a hold once.
  void Found(const SourceHeartbeat& found, const std::string& id) {
    const bool was_held = last_mark.has_value() && last_mark->state == SourceState::kStale;
    auto log_hold_ended = [&] {
      spdlog::warn("model source {} rank {}: the loader's mark on {} no longer holds; READY again", record.instance_id,
                   record.rank, id);
    };
    if (found.stale_reason.empty()) {  // no mark: a hold that ended with a reply this source missed
      if (was_held) {
        log_hold_ended();
        last_mark->state = SourceState::kReady;
      }
      return;
    }
    ++marks_seen;
    if (was_held && last_mark->stale_reason == found.stale_reason && found.state == SourceState::kReady) {
      log_hold_ended();  // the heartbeat that cleared the held mark
    } else if (!was_held || last_mark->stale_reason != found.stale_reason || found.state != SourceState::kStale) {
      spdlog::warn("model source {} rank {}: a loader marked {} STALE ({}); {}", record.instance_id, record.rank, id,
                   found.stale_reason,
                   found.state == SourceState::kStale
                       ? "the mark holds: loaders skip this source until the coordinator's source_mark_hold_s "
                         "passes (a held mark means this source's bytes differ from its committed content: check "
                         "the served memory)"
                       : "this heartbeat made it READY again");
    }
    last_mark = found;
  }
};

ModelSource::ModelSource(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

ModelSource::~ModelSource() {
  if (!impl_) return;
  Stop();
  impl_->agent.reset();
}

void ModelSource::Stop() {
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    if (impl_->stop) return;
    impl_->stop = true;
  }
  impl_->cv.notify_all();
  if (impl_->heartbeat_thread.joinable()) impl_->heartbeat_thread.join();
  // Deregistered while still serving: a loader that lists sources meanwhile no longer finds
  // this one, where it used to find a record whose server had already stopped (and lost its
  // stall timeout on it). Loaders reading from it keep their digest and lease answers until
  // the deregistration is done.
  if (impl_->options.shutdown_timeout_s > 0) {
    Status s = impl_->registry->DeregisterSource(impl_->record.source_id, impl_->options.shutdown_timeout_s);
    if (!s.ok() && s.code() != ErrorCode::kNotFound) {
      spdlog::warn("model source {} rank {}: could not deregister {} within {} s ({}); the record ends with its lease",
                   impl_->record.instance_id, impl_->record.rank, impl_->record.source_id,
                   impl_->options.shutdown_timeout_s, s.ToString());
    }
  }
  impl_->stop_server.store(true);
  if (impl_->server_thread.joinable()) impl_->server_thread.join();
}

std::string ModelSource::source_id() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->record.source_id;
}

std::optional<SourceHeartbeat> ModelSource::last_mark() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->last_mark;
}

std::uint64_t ModelSource::marks_seen() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->marks_seen;
}

std::span<std::byte> ModelSource::buffer() const { return impl_->buffer; }
std::uint64_t ModelSource::digests_served() const { return impl_->digests_served.load(); }
std::uint64_t ModelSource::bytes_digested() const { return impl_->bytes_digested.load(); }

Result<std::unique_ptr<ModelSource>> ModelSource::Create(SourceRegistry& registry, const ModelDescription& model,
                                                         const ModelIdentity& identity, ModelSourceOptions options,
                                                         const std::function<Status(std::span<std::byte>)>& fill) {
  SW_ASSIGN_OR_RETURN(const Layout layout, SourceLayout(model, options));
  SW_ASSIGN_OR_RETURN(std::unique_ptr<Agent> agent, CreateSourceAgent(options));
  const std::uint64_t bytes = layout.rank(options.rank).buffer_bytes;
  // Private huge pages (zero-filled): same-host loaders read them by kernel copy, which
  // pins a 2 MiB page per lookup instead of a 4 KiB shared-memory page
  // (docs/benchmarks_history.md, "P2P load on a host with cheap page faults").
  SW_ASSIGN_OR_RETURN(const RegionId region,
                      agent->AllocateArena(std::max<std::uint64_t>(bytes, 64), ArenaMemory::kPrivateHugePages));
  std::span<std::byte> buffer = agent->RegionBytes(region).first(bytes);
  if (fill) SW_RETURN_IF_ERROR(fill(buffer));
  // The arena starts page-aligned (2 MiB); mprotect rounds the length up to whole pages,
  // all inside the arena. Should it fail, the source keeps checking blocks.
  const bool read_only =
      options.read_only_buffer && bytes > 0 && ::mprotect(buffer.data(), buffer.size(), PROT_READ) == 0;
  return Start(registry, agent, region, buffer, layout, identity, std::move(options), read_only);
}

Result<std::unique_ptr<ModelSource>> ModelSource::Serve(SourceRegistry& registry, const ModelDescription& model,
                                                        const ModelIdentity& identity, ModelSourceOptions options,
                                                        std::span<std::byte> buffer) {
  SW_ASSIGN_OR_RETURN(const Layout layout, SourceLayout(model, options));
  const std::uint64_t bytes = layout.rank(options.rank).buffer_bytes;
  if (buffer.size() < bytes) {
    return InvalidArgument(fmt::format("model source {}: the caller's buffer has {} bytes, rank {} of {} needs {}",
                                       options.instance_id, buffer.size(), options.rank, options.layout, bytes));
  }
  SW_ASSIGN_OR_RETURN(std::unique_ptr<Agent> agent, CreateSourceAgent(options));
  SW_ASSIGN_OR_RETURN(const RegionId region, agent->RegisterMemory(buffer.data(), bytes));
  return Start(registry, agent, region, buffer.first(bytes), layout, identity, std::move(options));
}

Result<std::unique_ptr<ModelSource>> ModelSource::Start(SourceRegistry& registry, std::unique_ptr<Agent>& agent,
                                                        RegionId region, std::span<std::byte> buffer,
                                                        const Layout& layout, const ModelIdentity& identity,
                                                        ModelSourceOptions options, bool read_only) {
  // At most a day between heartbeats (a lease outlives that by far in no real deployment; a
  // larger wait overflowed the heartbeat thread's clock and it heartbeat without pause).
  if (!(options.heartbeat_interval_s > 0) || !(options.heartbeat_interval_s <= 86400) ||
      !(options.bandwidth_bytes_per_s >= 0) || !std::isfinite(options.bandwidth_bytes_per_s)) {
    return InvalidArgument(fmt::format(
        "model source: heartbeat interval must be > 0 and <= 86400 s (got {}), and the bandwidth cap finite and >= 0 "
        "(got {}; 0: no cap)",
        options.heartbeat_interval_s, options.bandwidth_bytes_per_s));
  }
  if (!(options.shutdown_timeout_s >= 0) || !std::isfinite(options.shutdown_timeout_s)) {
    return InvalidArgument(
        fmt::format("model source: shutdown_timeout_s must be finite and >= 0 s, got {}", options.shutdown_timeout_s));
  }
  auto impl = std::make_unique<Impl>();
  impl->registry = &registry;
  impl->region = region;
  impl->buffer = buffer;
  impl->options = options;
  impl->fingerprint_inputs = LayoutFingerprintInputs(layout);
  impl->fingerprint = LayoutFingerprintOf(impl->fingerprint_inputs);
  impl->block_digests = BlockDigests(buffer);
  impl->read_only = read_only;
  SW_ASSIGN_OR_RETURN(impl->record.metadata, agent->ExportMetadata());
  impl->agent = std::move(agent);
  SourceRecord& r = impl->record;
  // A source id of its own: the registration is then idempotent, so the client resends one
  // whose reply was lost instead of leaving an orphan record beside a second one (loaders
  // skip an instance whose rank is listed twice). Kept when it registers again after the
  // coordinator lost the record.
  std::random_device entropy;
  r.source_id = fmt::format("src-{:016x}", (std::uint64_t{entropy()} << 32) | entropy());
  r.model_identity = identity.Digest();
  r.instance_id = options.instance_id;
  r.rank = options.rank;
  r.world_size = layout.world_size();
  r.layout = options.layout;
  r.layout_fingerprint = impl->fingerprint;
  r.attributes[kSourceAttrRegion] = std::to_string(region);
  r.attributes[kSourceAttrStructure] = identity.StructureDigest();
  r.attributes[kSourceAttrRevision] = identity.revision;
  // Shortest round-trip form: a cap below 0.5 B/s printed as "0" would read as no cap.
  r.attributes[kSourceAttrBandwidthCap] = fmt::format("{}", options.bandwidth_bytes_per_s);
  r.attributes[kSourceAttrBufferBytes] = std::to_string(buffer.size());
  if (!options.content_revision.empty()) r.attributes[kSourceAttrContent] = options.content_revision;
  // Serve before registering: a loader may read the moment the record is listed.
  Impl* raw = impl.get();
  raw->server_thread = std::thread([raw] { raw->Serve(); });
  auto registered = registry.RegisterSource(r, std::numeric_limits<double>::infinity());
  if (!registered.ok()) {
    const ErrorCode code = registered.status().code();
    if ((code == ErrorCode::kUnavailable || code == ErrorCode::kTimedOut) && options.shutdown_timeout_s > 0) {
      // The coordinator may have stored the record before the reply was lost: remove it, so
      // no loader lists a source that is not serving until its lease runs out.
      (void)registry.DeregisterSource(r.source_id, options.shutdown_timeout_s);
    }
    raw->stop_server.store(true);
    raw->server_thread.join();
    agent = std::move(raw->agent);  // nothing moved: the caller keeps its agent and buffer
    return registered.status().WithContext("registering model source " + options.instance_id);
  }
  r.source_id = registered->source_id;
  raw->heartbeat_thread = std::thread([raw] { raw->Heartbeat(); });
  return std::unique_ptr<ModelSource>(new ModelSource(std::move(impl)));
}

}  // namespace shardwire
