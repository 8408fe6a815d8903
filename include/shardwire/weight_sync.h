// RL weight sync: trainer ranks (publishers) push each new policy into the shards
// of running inference engines (subscribers), resharding on the way.
//
// Protocol of one weight version v (every message is a transport notification):
//   subscriber: BeginUpdate(v)   -> READY(v) to each source rank it receives from
//                                   (the engine has paused serving from its buffer)
//   publisher:  Push(v)          waits for READY(v) from each destination it sends
//                                to, then posts its prepared one-sided WRITEs, waits
//                                for their remote completion (every byte visible at
//                                the engine) and only then sends DONE(v)
//   subscriber: WaitForUpdate(v) waits for DONE(v) from every source, then commits v
//   publisher:  to an engine rank that was not READY within engine_timeout_s, or failed
//               during the push: MISSED(v) instead of DONE(v); that engine keeps v-1 and
//               the others commit v (fault isolation). Every push writes every byte, so
//               the engine's next completed version is whole again.
// A subscriber therefore never holds a version it has not received completely:
// committed_version() moves from v-1 to v only when all its bytes arrived. The plan
// is computed in every process from the two layouts (deterministic), so no process
// broadcasts it; the transfers are prepared once (Connect) and posted every step.
//
// Conversion: when the engine layout's tensors differ in dtype from the trainer's (FP8
// block-quantised engines, casts), the publisher converts on the way and the wire carries
// the destination format (shardwire/push_conversion.h): before posting, trainer ranks whose
// shards split a 128x128 block exchange partial amaxes (BLOCK_AMAX(v), trainer to trainer),
// then each converts its shard piece by piece into a bounded staging buffer and posts each
// piece's WRITEs while converting the next; DONE(v) follows the last of them. Both sides
// derive the same conversion from the two layouts.
//
// Partial(sum) trainer shards (DTensor Partial, e.g. a row-parallel output not yet
// all-reduced): the plan names a reducer per piece (transfer_plan.h, Reduction); at the start of
// Push(v) each trainer rank writes its addends into the reducers' scratch slots and sends
// ADDEND(v) after their remote completion; a reducer waits for every addend, sums the slots
// (fp32 accumulation, one rounding: partial_reduction.h) and the plan's moves carry the sum,
// so an engine never sees an unreduced byte. In a converting push the reducer of a converted
// tensor's chunk converts the sum from its scratch like an owned shard (push_conversion.h).
//
// Rounds: a trainer posts its WRITEs in the plan's schedule rounds; before writing engine rank
// e in round r it waits for ROUND_DONE(v, r') from the trainers that wrote e in e's previous
// round r' (max_concurrency). Relays (relay_broadcasts): trainers write one replica of each
// engine rank's shards and tell each replica (RELAY_PLAN(v)) whether its bytes come through its
// relay parent and which children to forward to; a parent forwards after it committed v and
// sends RELAYED(v); a child commits after its trainers' DONE(v) and its parent's RELAYED(v).
//
// Processes find each other through a Rendezvous (keys "<job>/trainer/<rank>" and
// "<job>/engine/<rank>" hold transport metadata blobs).
//
// Thread-safety: a publisher or subscriber is used by one thread at a time.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "shardwire/agent.h"
#include "shardwire/layout.h"
#include "shardwire/push_conversion.h"
#include "shardwire/rendezvous.h"
#include "shardwire/status.h"

namespace shardwire {

/// Memory of the shard buffers a WeightPublisher / WeightSubscriber allocates itself
/// (WeightSyncOptions::buffer and second_buffer empty).
enum class BufferMemory : std::uint8_t {
  /// Publisher (trainer buffer, only ever a source): kPrivateHugePages. Subscriber (engine
  /// buffers): kShared when the push converts (the publisher converts straight into a mapped
  /// engine buffer, convert_into_mapped, which needs shared memory) or when the first write to
  /// a fresh 4 KiB page costs less than 6 us on this host (measured when the subscriber is
  /// created, ~10 ms: hardware-walked page tables, bare metal or KVM with EPT/NPT), so that
  /// same-host trainers pre-fault a mapping at Connect (~2-3 us per page) and write it with
  /// streaming stores at ~0.8-0.95x memcpy; else (shadow paging, PVM: 7-20 us per page)
  /// kPrivateHugePages, written by kernel copy at ~0.6x memcpy per CPU-second, with no
  /// pre-fault (docs/benchmarks_history.md, "Streaming stores into mapped engine buffers").
  /// Why huge pages on the trainer too: a kernel copy reads the source through the writer's
  /// own user mapping from kernel mode, and on a shadow-paging hypervisor (PVM) the first such
  /// access costs a fault per 4 KiB page even when user space has touched the page
  /// (docs/transport.md, "Kernel-copy WRITEs"); a 2 MiB page costs one.
  kAuto,
  /// An arena in UCX-allocated shared memory (ArenaMemory::kShared): same-host trainers map it
  /// and write it with memcpy, after pre-faulting their mapping at Connect (on a
  /// shadow-paging hypervisor ~20 us per 4 KiB page: docs/transport.md, "Pre-faulting").
  kShared,
  /// A private arena in transparent huge pages (ArenaMemory::kPrivateHugePages), populated by
  /// the engine when allocated: same-host trainers write it by kernel copy
  /// (process_vm_writev, WritePath::kAuto), others through UCX (emulated puts served by the
  /// engine's lanes). No mapping in the trainers, no pre-fault, no first-touch cost per page
  /// (docs/transport.md, "Kernel-copy WRITEs").
  kPrivateHugePages,
};

/// Largest WeightSyncOptions::convert_threads (each is a thread and a scratch buffer).
inline constexpr std::uint32_t kMaxConvertThreads = 256;

struct WeightSyncOptions {
  std::string job = "shardwire";  ///< rendezvous key prefix; one job = one trainer/engine pair of layouts
  double timeout_s = 120;         ///< bound of every wait (seconds)
  /// Publisher: bound (seconds) on waiting for any one engine rank in a push, for its READY
  /// and for its transfers to complete. An engine rank that exceeds it, or that the transport
  /// reports dead (a dead process on this host: well under a second), misses the version
  /// (PushStats::missed); the push goes on for the others. Capped by timeout_s.
  /// It bounds each destination's whole transfer too, so it must exceed the time one engine
  /// rank's share of a push takes on the fabric (not a no-progress bound yet).
  /// Counted while this process runs: a stop of the trainer itself (SIGSTOP, a paused VM,
  /// CPU starvation) moves the READY and transfer deadlines by its length, so no ready engine
  /// misses a version for the trainer's own pause (docs/reliability.md, "Own pauses"; the
  /// message waits of both roles, bounded by timeout_s, count the same way).
  /// Subscriber with relay_broadcasts: the bound of each forward to a child.
  double engine_timeout_s = 10;
  /// The rank's shard buffer in the caller's own memory (the trainer's parameters, the
  /// engine's weights), laid out by the rank's Layout (Layout::rank(r).buffer_bytes bytes at
  /// least; shards at their byte_offset). Empty: Shardwire allocates the buffer as a
  /// transport arena. Caller memory is registered in place (Agent::RegisterMemory, no
  /// staging copy) and must stay valid and unmoved until the publisher / subscriber is
  /// destroyed. Cost on this UCX 1.13.1 build: puts into caller-registered host memory are
  /// emulated over active messages (the target's lane threads copy them in), while an arena in
  /// UCX-allocated shared memory takes true one-sided puts (docs/transport.md); on RDMA or GPU
  /// memory both are true one-sided and registration costs one ibv_reg_mr / CUDA IPC handle.
  std::span<std::byte> buffer = {};
  /// Subscriber: double buffering. The engine keeps serving the committed version from one
  /// buffer (weights()) while the next lands in the other (back_buffer()); WaitForUpdate swaps
  /// them when it commits, so a push that fails half way never touches the weights being
  /// served. Costs a second buffer of the rank's size (2x its weight memory; on a GPU, HBM
  /// the KV cache no longer gets). READY(v) tells the trainers which buffer to write.
  bool double_buffered = false;
  /// With double_buffered: the second buffer in the caller's memory (as `buffer`); empty:
  /// an arena.
  std::span<std::byte> second_buffer = {};
  /// Interruption hook (e.g. Python's Ctrl-C): when set, the long waits of Connect, Push,
  /// WaitForUpdate and Join (an engine's READY, a trainer's DONE, an admission, a peer's
  /// metadata, the writes of a push, a Partial(sum) reducer's SLOTS_OPEN and the addends'
  /// writes) are cut into slices of at most kInterruptPollSeconds and
  /// call it between slices, on the calling thread. A non-OK status it returns ends the wait
  /// with that status (given context). Not cut: waits bounded by their own timeouts that a
  /// healthy peer answers at once (reading the membership record of a push on trainer ranks
  /// other than 0, a peer's plan signature, a lane wire-up).
  /// State stays consistent: an interrupted Connect or WaitForUpdate may be called again
  /// (notifications that arrived meanwhile are kept), except the update of a relay parent
  /// (relay_broadcasts) that told its children it will not forward that version: its
  /// WaitForUpdate and BeginUpdate of that version are refused with kFailedPrecondition; a Push
  /// interrupted while waiting for READY wrote no engine buffer (partial-sum addends to other
  /// trainer ranks may have gone out) and may be called again; one interrupted while its writes
  /// were in flight cancels those not complete (Agent::Cancel): no destination gets DONE for
  /// that version from this rank, so none commits it (their bytes may be partly written); with
  /// several trainer ranks, push the next version on every rank rather than this one again
  /// (ranks that completed it refuse it). The hook is called only after a slice in which
  /// nothing arrived, so a progressing wait does not pay for it.
  std::function<Status()> interrupt = {};
  /// Conversion in the push (used only when the layouts' dtypes differ): FP8 block size and
  /// scale arithmetic, and the staging bound in bytes. Publishers and subscribers of one job
  /// must pass the same values.
  PushConversionOptions conversion = {};
  /// Dynamic membership: engine ranks join and leave at any time through the rendezvous
  /// (the coordinator), and a restarted engine process takes its rank's slot again.
  /// Publishers: Connect connects to no engine; each Push reads the job's membership for its
  /// version (trainer rank 0 publishes it: the join and leave requests that arrived since
  /// its last push) and writes only to member engine ranks, connecting first to those whose
  /// incarnation changed (a new process: its metadata is imported again and the transfers
  /// to it prepared again, which the push waits for). An engine rank that missed a push is
  /// skipped, without waiting, until it joins again (WeightSubscriber::Join), so a stalled
  /// engine costs one engine_timeout_s, not one per push; so does a joiner that stalls before
  /// a trainer connected to it (the connect is bounded by engine_timeout_s, and a failed
  /// connect is not tried again until the rank's member record changes). Subscribers: Create takes the next
  /// incarnation of the rank; Join must be called before the first BeginUpdate and after
  /// every missed version; the destructor leaves (best effort). The plan is the one of the
  /// two layouts: members fill the engine layout's rank slots (a replica that does not run
  /// leaves its slots empty: absent from each push, never waited for), so engines can scale
  /// out up to the replicas the engine layout names. Publishers and subscribers of one job must agree on it. Costs
  /// per push: trainer rank 0 one rendezvous counter read and one write, every other
  /// trainer rank one read (the leader's record; polled until it appears).
  bool dynamic_membership = false;
  /// Dynamic membership, publishers (trainer rank 0 applies it): the longest, in seconds, a
  /// push waits before it starts while an engine process catches up from live engines
  /// (WeightSubscriber::HoldPushes, CatchUpOptions::hold), counted from when trainer rank 0
  /// first sees the hold, and at most this long in all per push however many holds arrive
  /// meanwhile (an engine that crash-loops filing holds cannot stall the job); a hold ends
  /// earlier when its process joins or leaves. While it
  /// lasts no push starts, so no live engine commits a newer version and withdraws the one the
  /// new process reads (docs/reliability.md, "Catch-up"); healthy engines keep serving their
  /// committed version, and only the trainers wait. Capped at timeout_s / 2 (the other trainer
  /// ranks and the engines wait up to timeout_s for the push). 0: pushes never wait (a catch-up
  /// then races the pushes and may fall back to the disk).
  double catch_up_hold_s = 10;
  /// Per-version integrity check: each trainer rank hashes (XXH3-64) the bytes it sends each
  /// engine rank, where it sends them from, and attaches the digest to DONE(v); the engine
  /// hashes where they landed, in the same order, and commits v only if every source's digest
  /// matches (else WaitForUpdate fails with kVerificationFailed naming the trainer rank, and
  /// the engine keeps v-1). Cost: one read of the pushed bytes on each side per push (xxh3 runs
  /// at memory speed; on GPUs this would be a kernel over device memory). Publishers and
  /// subscribers of one job must agree (Connect refuses a mismatch).
  bool verify_digests = false;
  /// K of the transfer plan (PlanOptions::max_concurrency): in each schedule round no trainer
  /// rank writes to more than K engine ranks and no engine rank receives from more than K
  /// trainer ranks (src/plan/schedule.h). The push honours the rounds: a trainer rank posts its
  /// round-r WRITEs to engine rank e only after every trainer rank that wrote to e in the
  /// previous round in which e receives has completed that round (ROUND_DONE(v, r) messages,
  /// trainer to trainer, only between trainers that share an engine rank in consecutive
  /// rounds), so at no moment do more than K trainer ranks write into one engine rank (the
  /// incast a NIC or an NVLink port suffers under). Each trainer rank runs its own rounds one
  /// after another. With K at least the number of peers there is one round and nothing waits.
  /// Without relay_broadcasts a broadcast to a destination group of more than K members is
  /// written member by member within its round, so a trainer then talks to more than K engine
  /// ranks at once. Publishers and subscribers of one job must agree (it changes the
  /// plan; Connect refuses a mismatch). A converting push schedules its moved and its
  /// converted tensors as one plan (ScheduleJointly) and converts a round's bytes within the
  /// round (ConversionRound::schedule_round); rows a trainer rank sends in two rounds are
  /// converted twice (CPU, not bytes on the wire).
  int max_concurrency = 4;
  /// Engine-to-engine relays: engine ranks that hold identical shards (the same TP rank of
  /// every engine replica) need the same bytes, so the trainers write only one of them, the
  /// root, and each engine rank forwards its buffer's pushed bytes to its children once it has
  /// committed the version, along a K-ary tree (K = max_concurrency, at most 255; heap order
  /// over the replicas' ranks: src/workflows/relay_tree.h). A trainer then sends each byte once instead
  /// of once per replica (its egress divided by the replica count); each forward is one
  /// one-sided WRITE of a few coalesced ranges, then RELAYED(v). Per push each trainer tells
  /// each engine rank in a tree (RELAY_PLAN(v), before DONE(v)) whether its bytes come through
  /// the parent and which children to forward to: a child whose parent was not ready (dead,
  /// stalled, missed) is written directly by the trainers, so fault isolation holds as without
  /// relays; a parent that fails after READY costs its children that version (MISSED(v) from
  /// the parent as its wait fails, also before it learnt its plan; else, e.g. to a child it was
  /// never connected to, their wait of min(timeout_s, (d + 1) x engine_timeout_s) for a rank
  /// d levels below its tree's root: each level's commit may wait for the forward above it). A child that
  /// failed v tells its parent as it moves on (BeginUpdate of a later version, AdoptVersion,
  /// Join, HoldPushes, Leave: MISSED(v), child -> parent), and the parent then skips that
  /// forward, so a parent late by more than the child's wait does not write v over the v+1 the
  /// child takes meanwhile. Best effort: the parent asks right before it posts each forward, so
  /// a MISSED still on its way then, or a parent that stalls while its forward WRITE is in
  /// flight, can still land v late (verify_digests catches it only if it lands before the
  /// child's digest check of v+1). Digests (verify_digests) stay end to end: the trainers'
  /// digests are checked by every engine rank, relayed or not. Cost: a child commits after its
  /// parent (one forward per tree level later); each parent's WaitForUpdate returns after its
  /// forwards complete (bounded by engine_timeout_s). Deep trees (K = 1 is a chain) need
  /// timeout_s >= (depth + 1) x engine_timeout_s for a slow chain of forwards to reach the
  /// deepest rank; WeightSubscriber::Create warns when it is not. engine_timeout_s should be
  /// the same on every engine rank of a tree (a child's RELAYED bound uses its own). A
  /// RELAY_PLAN naming any parent or child but those of the tree every rank computes fails
  /// that version for the rank (kCorruptData), and its children are told (MISSED). Publishers
  /// and subscribers of one job must agree (Connect refuses a mismatch).
  bool relay_broadcasts = false;
  /// Publisher only: convert straight into the engine's buffer when the transport maps it into
  /// this process (Agent::MapPeerRegion: a same-host engine arena; on a GPU node the NVLink / CUDA
  /// IPC peer mapping): the converter writes each few rows of FP8 bytes and scales (or cast
  /// values) into the mapped engine buffer while they are in the CPU's cache, so a converted
  /// byte is written once per engine rank, with no staging slot and no second copy by a
  /// transfer. DONE(v) still follows every byte (the writes end before it is sent) and
  /// verify_digests hashes the bytes as written, read back from the engine's buffer. Engine ranks
  /// the transport cannot map (RDMA, TCP, caller-registered memory) take the staging ring as
  /// before. false forces the staging ring for every engine rank (tests compare both paths).
  bool convert_into_mapped = true;
  /// Publisher only: copy the moved (not converted) bytes into the engine buffers the transport
  /// maps into this process (Agent::MapPeerRegion: a same-host engine arena; on a GPU node the
  /// NVLink / CUDA IPC peer mapping) on the pushing thread and lanes - 1 helpers (in a converting
  /// push: on lanes threads of their own, beside the conversion), instead of posting them to the
  /// lanes: read once, write to every replica. Engine ranks that hold the
  /// same shard (the same TP rank of each replica) take identical moves, and each chunk of
  /// them (64 KiB) is written into every such rank while it is in this core's cache, so a
  /// source byte is read from memory once rather than once per replica (src/workflows/
  /// replica_fanout.h; docs/benchmarks_history.md "Read once, write to every replica"). The copies end
  /// (streaming stores fenced) before DONE(v); verify_digests is unchanged. Engine ranks the
  /// transport cannot map take the lanes as before. false: the lanes copy every direct move
  /// (tests compare both paths; demo rl-sync --lane-copies).
  bool copy_into_mapped = true;
  /// Publisher only: threads that convert the rounds going into mapped engine buffers (the
  /// pushing thread and convert_threads - 1 helpers started per push, taking rounds in turn; each
  /// with its own scratch of about 64 KiB). 0 counts as 1. Rounds any engine rank takes from the
  /// staging ring are converted by the pushing thread (it posts their transfers).
  std::uint32_t convert_threads = 2;  ///< at most kMaxConvertThreads (Create: kInvalidArgument)
  /// See BufferMemory. Ignored for buffers in the caller's memory (the caller may advise them
  /// itself: madvise(MADV_HUGEPAGE) before first touch).
  BufferMemory buffer_memory = BufferMemory::kAuto;
  /// Lanes (progress and copy threads, AgentOptions::lanes) of this rank's transport agent;
  /// 0 means kDefaultLanes. A same-host trainer's lanes do its copies into the engines (kernel
  /// copy or memcpy), so where several ranks share a host's cores, more lanes than cores per
  /// rank only add context switches and cache contention: on this 2-core VM, 2 trainers with
  /// 1 lane each pushed about 7% faster on average than with 2 each (5 of 6 same-machine pairs;
  /// demo rl-sync --trainer-lanes, docs/benchmarks_history.md). Independent per rank: publishers and
  /// subscribers need not agree.
  std::uint32_t lanes = 0;
  /// Where this rank reports its metrics (docs/metrics.md): push / update durations (seconds,
  /// histograms), the pushed / committed version, missed versions by reason, and its agent's
  /// bytes and transfers by peer (AgentOptions::metrics). Must outlive the publisher or
  /// subscriber. nullptr: no metrics.
  MetricsRegistry* metrics = nullptr;
};

/// Checks the time bounds of `options` (what WeightPublisher::Create and
/// WeightSubscriber::Create check first): timeout_s and engine_timeout_s finite and > 0,
/// catch_up_hold_s finite and >= 0, so every wait of a push or an update ends.
/// Errors: kInvalidArgument naming the field and its value. Thread-safe (pure).
Status ValidateWeightSyncTimes(const WeightSyncOptions& options);

/// Upper bound, in seconds, of the time between two calls of WeightSyncOptions::interrupt
/// (and ModelLoaderOptions::interrupt) while a wait is in progress.
inline constexpr double kInterruptPollSeconds = 0.1;

/// An engine rank that did not receive a version, and why (kPeerDisconnected: dead or gone;
/// kTimedOut: no READY or transfers not complete within engine_timeout_s; transport errors).
struct MissedEngine {
  int engine_rank = 0;
  Status reason;
};

/// One engine rank's WRITEs of one schedule round, as one trainer rank saw them (PushStats).
struct RoundSpan {
  std::uint32_t round = 0;
  int engine_rank = 0;
  double posted_s = 0;     ///< CLOCK_MONOTONIC seconds when posted
  double completed_s = 0;  ///< CLOCK_MONOTONIC seconds when their completion was seen (or they were given up)
};

/// What one Push did.
struct PushStats {
  std::uint64_t version = 0;
  std::uint64_t bytes = 0;  ///< bytes this rank wrote (to the engine ranks that got the version)
  /// Descriptors posted to the lanes or copied into mapped engine buffers (copy_into_mapped),
  /// per destination (a strided move of many rows counts once).
  std::uint64_t descriptors = 0;
  std::uint64_t rows = 0;             ///< contiguous row moves inside them (what one descriptor per row would post)
  double ready_wait_s = 0;            ///< waiting for destinations to be ready
  double transfer_s = 0;              ///< first post to last remote completion
  std::uint64_t converted_bytes = 0;  ///< bytes produced by conversion (FP8 weights, scales, casts)
  double convert_s = 0;               ///< time spent converting (overlaps the WRITEs of earlier pieces)
  /// CPU seconds of the pushing thread in those conversions (CLOCK_THREAD_CPUTIME_ID; with
  /// convert_into_mapped it includes the copies into the mapped engine buffers): unlike convert_s
  /// it hardly moves when other threads share the cores.
  double convert_cpu_s = 0;
  double amax_exchange_s = 0;            ///< waiting for other trainer ranks' partial amaxes
  std::uint64_t staging_bytes = 0;       ///< the conversion staging buffer (allocated once, bytes)
  std::uint64_t staging_peak_bytes = 0;  ///< most staging bytes holding data at once in this push
  /// Converted bytes written straight into mapped engine buffers (convert_into_mapped), each
  /// destination counted; the rest of converted_bytes went through the staging ring.
  std::uint64_t mapped_bytes = 0;
  /// Moved (not converted) bytes the pushing threads copied into mapped engine buffers
  /// (copy_into_mapped), each destination counted, and the source bytes they read for them
  /// (each once, whatever the number of replicas that took them: copied_bytes / copy_read_bytes
  /// is the fan-out). The other moved bytes went through the lanes (direct_copy_bytes,
  /// kernel_copy_bytes, ucx_requests).
  std::uint64_t copied_bytes = 0;
  std::uint64_t copy_read_bytes = 0;
  /// CPU seconds of those copies, summed over the pushing thread and its helpers
  /// (CLOCK_THREAD_CPUTIME_ID).
  double copy_cpu_s = 0;
  /// Engine ranks this rank writes to that missed the version (the others received it and
  /// got DONE). Each such engine's subscriber times out or reports the failure, keeps its
  /// last committed version, and receives the next version in full again.
  std::vector<MissedEngine> missed;
  /// Dynamic membership: engine ranks this rank would write to that are not members of the
  /// job for this version (never joined, left, or not restarted yet). Not misses.
  std::vector<int> absent;
  /// relay_broadcasts: engine ranks this rank did not write because their relay parent
  /// forwards the version to them (they got DONE and are not misses).
  std::vector<int> relayed;
  /// How this push's bytes moved (the agent's AgentStats over the push): bytes
  /// copied by the lanes through a mapping of the destination's arena, and UCX
  /// data requests issued (one per row not copied directly; 0 when every block
  /// took the direct path).
  std::uint64_t direct_copy_bytes = 0;
  std::uint64_t ucx_requests = 0;
  /// Bytes written by kernel copy (process_vm_writev into a same-host engine's private arena:
  /// BufferMemory::kPrivateHugePages, WritePath::kAuto).
  std::uint64_t kernel_copy_bytes = 0;
  /// Schedule rounds this rank wrote in (of its direct moves; WeightSyncOptions::max_concurrency).
  std::uint32_t rounds = 0;
  /// Time this rank waited for other trainer ranks to finish earlier rounds (seconds).
  double round_wait_s = 0;
  /// Per round and engine rank written: when the WRITEs were posted and when this rank saw
  /// them complete, in seconds of CLOCK_MONOTONIC (std::chrono::steady_clock on Linux: one
  /// clock for every process of a host, so spans of several trainer ranks can be compared).
  std::vector<RoundSpan> round_spans;
  /// Dynamic membership, trainer rank 0 only: seconds this push waited before it started for
  /// engine processes catching up (catch_up_hold_s), the engine ranks it waited for, and those
  /// whose hold ran out rather than ending with their join.
  double hold_s = 0;
  std::vector<int> held_for;
  std::vector<int> hold_expired;
};

/// What one WaitForUpdate saw.
struct UpdateStats {
  std::uint64_t version = 0;
  std::uint64_t bytes = 0;  ///< bytes this rank received
  int sources = 0;          ///< source ranks it received from
  double wait_s = 0;        ///< BeginUpdate to the last DONE
  /// relay_broadcasts: the engine rank whose forward brought this version's bytes (-1: the
  /// trainers wrote them), the children this rank forwarded it to (ascending), those whose
  /// forward failed (they miss the version; the reason names them), and the seconds the
  /// forwards took (after the commit).
  int relayed_from = -1;
  std::vector<int> relayed_to;
  std::vector<MissedEngine> relay_failed;
  double relay_s = 0;
};

/// One trainer rank. Owns its transport agent and the registered buffer holding its
/// shards, laid out by trainer_layout.rank(rank) (see shardwire::Layout).
class WeightPublisher {
 public:
  /// Creates the agent, registers options.buffer in place or allocates the shard buffer
  /// (BufferMemory: private huge pages for a publisher unless options.buffer_memory is kShared),
  /// computes the plan and publishes this rank's metadata. Errors: kInvalidArgument for a rank
  /// out of range, max_concurrency < 1 or time options ValidateWeightSyncTimes refuses;
  /// kLayoutMismatch for layouts that cannot be planned; PushConversion::Create's errors
  /// (kUnsupported, kInvalidArgument) when the push converts; rendezvous and transport errors.
  static Result<std::unique_ptr<WeightPublisher>> Create(Rendezvous& rendezvous, const Layout& trainer_layout,
                                                         const Layout& engine_layout, int rank,
                                                         WeightSyncOptions options);
  ~WeightPublisher();

  /// This rank's shard buffer (writable; the trainer's weights live here).
  std::span<std::byte> weights();

  /// Looks up every destination rank this rank sends to and prepares one transfer per
  /// destination (dynamic membership: none; each when it joins). Errors: kTimedOut when a
  /// destination does not appear in time; kLayoutMismatch, before any descriptor, naming an
  /// engine rank (or a trainer rank it exchanges amaxes with) created for other layouts
  /// (SyncPlanSignature: the layouts' descriptions and fingerprints; their plans would differ);
  /// kCorruptData when a trainer rank that reduces Partial(sum) addends published no scratch
  /// region; the interrupt hook's status when it fires.
  Status Connect();

  /// Pushes version `version` (see the protocol above) to every destination engine rank that
  /// is ready within engine_timeout_s; an engine rank that is dead, silent or slow misses the
  /// version (PushStats::missed, with the reason) and the others still get it. Takes at most
  /// the normal push time plus engine_timeout_s (a dead peer: plus its detection time).
  /// Cost beside the transfers: one rendezvous counter read (this rank's claim, see
  /// kAlreadyExists), plus the membership record with dynamic membership.
  /// Errors: kFailedPrecondition when `version` is 0 or not above the last version this
  /// publisher pushed to some engine (nothing moves); kAlreadyExists when a later publisher
  /// claimed this trainer rank (a restarted trainer, or a second one by mistake: this one
  /// stops, naming both claims; nothing moves); kFailedPrecondition when the rendezvous
  /// forgot the job (its claim counter went below this publisher's claim: an in-memory
  /// coordinator restarted; nothing moves); kPeerDisconnected when no destination received the version (the message
  /// lists why; with dynamic membership this is not an error as long as some engine rank is a member: every member is
  /// then in PushStats::missed); kFailedPrecondition with dynamic membership when no engine rank is a member; a failed
  /// trainer peer or conversion input (kCorruptData for NaN/Inf) fails the push; kInvalidArgument
  /// before Connect. A push that fails after it took engine ranks' READY(v) (a conversion
  /// error, a trainer peer, the interrupt hook) tells each of them so, with this error (MISSED
  /// with a reason, best effort): their WaitForUpdate(v) fails at once with it instead of at
  /// their timeout. They then begin the same version again, which a retry of this push writes
  /// (BeginUpdate drops the MISSED(v) of the failed attempt), or a later one; a relay parent
  /// that told its children it will not forward v takes a later one, and a dynamic member
  /// joins again first (Join). A failure before READY
  /// (the checks above, Partial(sum) addends, the membership record) tells no engine.
  Result<PushStats> Push(std::uint64_t version);

  /// Dynamic membership: waits (up to timeout_s seconds) until at least `engine_ranks` engine
  /// ranks of the job asked to join (WeightSubscriber::Join) and have not left; the next push
  /// writes to them. For a trainer's first push, which fails when no engine is a member.
  /// `timeout_s` >= 0 (+inf: 1e9 s). Returns how many asked. Errors: kInvalidArgument without
  /// dynamic membership, with a count outside [1, engine world size], or a negative or NaN
  /// timeout; kTimedOut saying how many asked; rendezvous errors.
  Result<int> WaitForEngines(int engine_ranks, double timeout_s);

  /// Bytes this rank sends per Push.
  std::uint64_t bytes_per_push() const;

  /// The transport agent's counters since Create (shardwire/agent.h, AgentStats):
  /// e.g. the pages Connect pre-faulted in the destinations' arenas and how long
  /// that took. Thread-safe.
  AgentStats transport_stats() const;

  /// Releases the prepared transfers, as the destructor does, but keeps the agent and the
  /// shard buffer (weights() stays valid): for front ends whose tensor views keep the object
  /// alive after their user closed it (the Python binding). Engine ranks see no more pushes
  /// from this rank (they time out waiting for it, as for a trainer that stopped). Afterwards
  /// Connect, Push and WaitForEngines fail with kFailedPrecondition naming the call; the
  /// accessors still answer. Idempotent; never fails. Not concurrent with other calls.
  void Close();

  struct State;

 private:
  explicit WeightPublisher(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

/// One inference-engine rank. Owns its agent and the registered buffer holding its
/// shards, laid out by engine_layout.rank(rank).
class WeightSubscriber {
 public:
  /// Creates the agent, allocates the shard buffer, computes the plan and publishes
  /// this rank's metadata. Errors as WeightPublisher::Create.
  static Result<std::unique_ptr<WeightSubscriber>> Create(Rendezvous& rendezvous, const Layout& trainer_layout,
                                                          const Layout& engine_layout, int rank,
                                                          WeightSyncOptions options);
  ~WeightSubscriber();

  /// This rank's shard buffer holding committed_version(), the weights to serve.
  /// Single-buffered: written by publishers between BeginUpdate and the end of
  /// WaitForUpdate; the engine must not read it in that window (it pauses). Double-buffered:
  /// never written while it is returned here; after a commit it is the other buffer, so
  /// call weights() again after every WaitForUpdate (and do not keep spans across it).
  std::span<std::byte> weights();

  /// The buffer the next version is written into: weights() when single-buffered, the
  /// other buffer when double-buffered.
  std::span<std::byte> back_buffer();

  /// Looks up every source rank this rank receives from; with relay_broadcasts and a fixed
  /// membership also its relay children (their metadata must appear within timeout_s), and
  /// prepares the forwards to them. Errors: kTimedOut; kLayoutMismatch naming a trainer rank
  /// (or a relay child) created for other layouts (nothing is written here then).
  Status Connect();

  /// Declares the engine paused for `version`: sends READY(version) to every source rank, which
  /// may then write. Errors: kInvalidArgument before Connect or when `version` is not newer than
  /// committed_version(). A source that cannot be reached (dead process, failed endpoint) does
  /// not fail it: the others got READY and write, so the update has begun either way, and the
  /// following WaitForUpdate fails with that send's error (kPeerDisconnected) naming the source.
  /// kFailedPrecondition for a version whose update failed on this rank while it was a relay
  /// parent (its children were told it will not be forwarded): begin a later version.
  Status BeginUpdate(std::uint64_t version);

  /// Blocks until every source has delivered `version`, then commits it. `timeout_s` (seconds)
  /// bounds each of its waits in place of the options' timeout_s (< 0: the options'; +inf:
  /// 1e9 s; 0: take only what already arrived), e.g. a short bound to look at other work
  /// between waits: a wait that timed out (or was interrupted) may be called again for the
  /// same version, and what arrived is kept (DONE and relay plans; a relay child's forward
  /// may come later), except on a relay parent that told its children it will not forward
  /// `version` (kFailedPrecondition: begin a later one). A wait that a trainer's MISSED ended
  /// ends again at once with the same error: BeginUpdate the version again first.
  /// kInvalidArgument when `version` is not the one BeginUpdate began, or timeout_s is NaN;
  /// kFailedPrecondition when it is committed already (a second WaitForUpdate after success).
  /// Errors (committed_version() unchanged; single-buffered, the buffer possibly partly
  /// written, which holds_committed_version() then says until the next commit): kTimedOut
  /// naming the sources still missing, or naming a trainer that gave up on this rank for
  /// `version` (MISSED); a trainer whose push of `version` failed after it took this rank's
  /// READY: that push's error code, naming the trainer, with its message (e.g. kCorruptData
  /// for a NaN its FP8 conversion met); kPeerDisconnected (also the failed READY send of BeginUpdate);
  /// kVerificationFailed naming the trainer whose digest differs or is missing (verify_digests);
  /// kCorruptData for a relay message outside the relay tree; kFailedPrecondition for a version
  /// this rank gave up as a relay parent; the interrupt hook's status when it fires.
  Result<UpdateStats> WaitForUpdate(std::uint64_t version, double timeout_s = -1);

  /// The last version fully received (0 before the first): the version weights() holds and
  /// the engine serves (label generated tokens with it), unless holds_committed_version() is false.
  std::uint64_t committed_version() const;

  /// Whether weights() holds exactly committed_version(). Single-buffered: false from
  /// BeginUpdate (the trainers write the buffer it serves) until a version commits
  /// (WaitForUpdate or AdoptVersion), so also after a failed or interrupted WaitForUpdate, whose
  /// version may be partly written: such an engine must not serve, or must not label its tokens
  /// with committed_version(), before then. Always true when double-buffered (an update only
  /// touches the back buffer). Not thread-safe against the update calls (read it between them).
  bool holds_committed_version() const;

  /// Dynamic membership (WeightSyncOptions::dynamic_membership): asks the trainers to write
  /// to this engine process from their next push on, and waits (up to timeout_s) until a
  /// push admits it. Returns that push's version: call BeginUpdate with it. Call after
  /// Connect, and again after a WaitForUpdate that failed (a missed version: the trainers
  /// skip this rank until it joins again). `timeout_s` < 0: the options' timeout_s. A Join
  /// that timed out may be called again (the request stands; the wait starts over). A process
  /// admitted before tells its sources that it filed a new request (a WITHDRAWN message,
  /// src/workflows/sync_messages.h), so that a push already waiting for its READY (a trainer
  /// that does not know this rank failed a version, e.g. one its relay parent did not forward)
  /// stops waiting for it at once instead of at engine_timeout_s.
  /// Errors: kInvalidArgument without dynamic membership, before Connect, or for a NaN
  /// timeout_s (+inf: 1e9 s); kTimedOut when
  /// no push admitted it in time (no trainer pushing); kFailedPrecondition when the
  /// admitting version is not above committed_version(); rendezvous errors; the status of
  /// options.interrupt (the request stands, as after a timeout).
  Result<std::uint64_t> Join(double timeout_s = -1);

  /// Dynamic membership: asks the trainers not to start another push until this process
  /// joins (Join) or leaves, so that the version live engines serve stays served while this
  /// process loads it from them (CatchUpFromLiveEngines, engine_catch_up.h). Trainer rank 0
  /// honours it when it next starts a push, for at most its catch_up_hold_s; a push it had
  /// already started completes. Returns at once; call before Connect or after. Join ends the
  /// hold (and admits this process at the first push after it). Errors: kInvalidArgument
  /// without dynamic membership; rendezvous errors.
  Status HoldPushes();

  /// After HoldPushes: waits up to `timeout_s` seconds (>= 0) until trainer rank 0 honours the hold and
  /// returns the last version pushed before it (the version the live engines then keep
  /// serving, once each committed it). Errors: kFailedPrecondition without a hold filed by
  /// this process; kTimedOut when no push started since the hold (no push is running, so
  /// the newest committed version stays served until one starts and honours the hold);
  /// rendezvous errors.
  Result<std::uint64_t> AwaitHold(double timeout_s);

  /// Dynamic membership: asks the trainers to stop writing to this rank from their next
  /// push on (returns at once; the destructor does it too); a push already waiting for its
  /// READY stops waiting (WITHDRAWN, as for Join). Files no leave when a later process of the
  /// same rank exists (a replacement started while this one shuts down): its requests stand,
  /// and this process's leave would evict it; a push waiting for this process's READY still
  /// stops waiting (WITHDRAWN under a request above this process's admission, which a trainer
  /// that admitted a later process of the rank ignores).
  /// Errors: kInvalidArgument
  /// without dynamic membership; rendezvous errors.
  Status Leave();

  /// Declares that weights() already holds `version`, obtained outside a push (e.g. loaded
  /// from a live engine with the P2P loader when this process restarted): committed_version()
  /// becomes `version`. Errors: kFailedPrecondition when `version` is not above
  /// committed_version(), or during an update (between BeginUpdate and the return of its WaitForUpdate).
  Status AdoptVersion(std::uint64_t version);

  /// This process's incarnation of its rank (dynamic membership: 1 for the first process of
  /// the rank, +1 per restart; 0 without dynamic membership).
  std::uint64_t incarnation() const;

  /// Stops taking part in the job, as the destructor does, but keeps the agent and the
  /// shard buffer (weights() stays readable and holds committed_version(), unless
  /// holds_committed_version() says otherwise): a dynamic member leaves (Leave, best effort:
  /// the trainers skip this rank from their next push); a relay parent closed during an
  /// update tells its connected children it will not forward that version, and a relay child
  /// tells its parent it gave up a version it failed; the prepared forwards are released.
  /// With a fixed membership the trainers still count this rank as an engine: while the agent
  /// lives each push waits engine_timeout_s for its READY and reports it missed. For front
  /// ends whose tensor views keep the object alive after their user closed it (the Python
  /// binding). Afterwards Connect, BeginUpdate, WaitForUpdate, Join, Leave,
  /// HoldPushes, AwaitHold and AdoptVersion fail with kFailedPrecondition naming the call;
  /// the accessors still answer. Idempotent; never fails. Not concurrent with other calls.
  void Close();

  struct State;

 private:
  explicit WeightSubscriber(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace shardwire
