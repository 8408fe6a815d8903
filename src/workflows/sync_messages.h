// Control messages of the weight-sync protocol (see shardwire/weight_sync.h), carried
// as transport notifications: 1 byte kind + 8 bytes little-endian version; READY of a
// double-buffered engine appends 1 byte, the buffer (0 or 1) to write, and READY of an engine
// under dynamic membership then appends its process's 8-byte little-endian incarnation (so a
// READY is 9, 10, 17 or 18 bytes); BLOCK_AMAX
// (trainer to trainer, shardwire/push_conversion.h) appends its partial amaxes as
// little-endian fp32 (the number follows from the payload size); DONE with the per-version
// integrity check appends the 8-byte little-endian XXH3-64 digest of the bytes it sent;
// ROUND_DONE appends the 4-byte little-endian schedule round; RELAY_PLAN appends the 4-byte
// relay parent (0xFFFFFFFF: none), a 1-byte count and per child 4-byte rank, 1-byte buffer and
// 8-byte incarnation (all little-endian); WITHDRAWN appends the 8-byte little-endian membership
// request id (two's complement).
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "shardwire/agent.h"
#include "shardwire/status.h"

namespace shardwire::workflows {

/// READY(v): engine -> trainer, the engine's buffer may be written; DONE(v): trainer -> engine,
/// all its bytes of v landed; BLOCK_AMAX(v): trainer -> trainer, partial amaxes; MISSED(v):
/// trainer -> engine, this engine will not get v from it (it was not ready, or failed, in time);
/// engine -> engine, a relay parent will not forward v to this child (its own wait failed, or
/// the forward did), or (child -> parent) the child gave v up and moved on: v must not be
/// forwarded to it any more;
/// ADDEND(v): trainer -> trainer, its Partial(sum) addends of v landed in the reducer's scratch;
/// ROUND_DONE(v, r): trainer -> trainer, every WRITE this trainer posted in schedule round r of v
/// completed (or was given up), so the next round's senders of those engine ranks may post;
/// RELAY_PLAN(v): trainer -> engine with replicas (relay_broadcasts), sent before DONE(v): whether
/// this trainer's bytes of v reach it through its relay parent, and which of its children it
/// must forward v to (their buffer and incarnation); RELAYED(v): engine -> engine, the relay
/// parent's forward of v landed in the child's buffer; WITHDRAWN(v, request): engine -> trainer
/// (dynamic membership), this engine, a member whose last begun version was v, has filed
/// membership request `request` (to join again after a version it failed, or to leave) and
/// sends no READY until a push applies that request: a trainer waiting for its READY under a
/// membership record of the rank with an older request stops waiting for it; SLOTS_OPEN(v):
/// trainer -> trainer, a Partial(sum) reducer's push of v started (its pushes of older versions
/// ended), so an addend source may write its addends of v into the reducer's scratch slots
/// (without it, a source running a version ahead overwrote addends not yet summed).
enum class MessageKind : std::uint8_t {
  kReady = 1,
  kDone = 2,
  kBlockAmax = 3,
  kMissed = 4,
  kAddend = 5,
  kRoundDone = 6,
  kRelayPlan = 7,
  kRelayed = 8,
  kWithdrawn = 9,
  kSlotsOpen = 10
};

/// An engine rank a relay parent forwards a version to (RELAY_PLAN).
struct RelayTarget {
  std::uint32_t rank = 0;         ///< engine rank
  std::uint8_t buffer = 0;        ///< the buffer it asked to be written (READY)
  std::uint64_t incarnation = 0;  ///< its process's incarnation (dynamic membership; else 0)
  bool operator==(const RelayTarget&) const = default;
};

struct Message {
  MessageKind kind;
  std::uint64_t version;
  std::vector<float> amax = {};              ///< kBlockAmax only: partial amaxes in BlockAmaxExchange order
  std::optional<std::uint8_t> buffer = {};   ///< kReady of a double-buffered engine: buffer 0 or 1 to write
  std::optional<std::uint64_t> digest = {};  ///< kDone with verify_digests: XXH3-64 of the bytes sent (push_digest.h)
  std::uint32_t round = 0;                   ///< kRoundDone: the schedule round (TransferPlan Bucket::round)
  std::optional<std::uint32_t> relay_from = {};  ///< kRelayPlan: the parent the bytes come through (none: direct)
  std::vector<RelayTarget> relay_to = {};        ///< kRelayPlan: children to forward to (at most 255, the
                                                 ///< one-byte count; kMaxRelayFanout caps every tree so)
  std::int64_t request = 0;                      ///< kWithdrawn: the engine's membership request id
  /// kReady under dynamic membership: the incarnation of the engine process that sent it (every
  /// process of an engine rank has the rank's agent name; a READY a killed process sent before it
  /// died must not be taken for its replacement's). None: 0 (static membership).
  std::optional<std::uint64_t> incarnation = {};
  /// kMissed from a trainer whose push of `version` failed after it took this engine's READY
  /// (e.g. a NaN met by the FP8 conversion, an interrupt, a peer trainer gone): the error it
  /// failed with, so that the engine's WaitForUpdate ends at once with it instead of at its
  /// timeout. None: the trainer gave up on this engine alone (not ready or not reachable in
  /// time), or a relay MISSED. Wire: its code (one byte, never kOk), the message's length
  /// (two bytes, little-endian) and at most kMaxMissedReasonBytes of it (longer ones are cut
  /// at a UTF-8 character boundary when encoded).
  std::optional<Status> reason = {};
  /// kMissed with a reason whose code byte this build does not know (a peer of a newer build,
  /// with more error codes): that byte, kept so the message re-encodes as sent; `reason` then
  /// holds kInternal and the peer's message, and the wait it ends says which code it was.
  /// 0: the code is one of this build's (or there is no reason).
  std::uint8_t unknown_reason_code = 0;
};

/// Bytes of a MISSED reason's message on the wire (Message::reason).
inline constexpr std::size_t kMaxMissedReasonBytes = 2048;

/// "READY", "DONE", "BLOCK_AMAX", "MISSED", "ADDEND", "ROUND_DONE", "RELAY_PLAN", "RELAYED",
/// "WITHDRAWN" or "SLOTS_OPEN".
const char* MessageKindName(MessageKind kind);

std::vector<std::byte> Encode(const Message& message);
/// nullopt for a payload that is not a sync message (wrong size or kind).
std::optional<Message> Decode(std::span<const std::byte> payload);

/// What Inbox::Collect saw: the peers whose message arrived, and those found failed.
struct Collected {
  std::map<std::string, Message> arrived;  ///< peer -> its message
  std::map<std::string, Status> failed;    ///< peer -> why (kPeerDisconnected)
};

/// Notifications that arrived but were not yet wanted (e.g. READY for the next version).
class Inbox {
 public:
  /// Waits until `kind`/`version` has arrived from every peer in `peers` that is alive, or
  /// `timeout_s` passes; never fails because of one peer: peers the transport declares dead
  /// are returned in `failed`, peers still silent at the deadline in neither set. Messages of
  /// the same kind for older versions are dropped (a peer that missed a version answers late).
  /// `interrupt` as for AwaitFromAll (on interruption the arrived messages go back to the inbox).
  /// `withdrawn`, when set, is asked about every WITHDRAWN message from a peer still awaited:
  /// a status puts the peer in `failed` with it (the peer will not send `kind` for `version`),
  /// nullopt drops the message (stale: its request was admitted already). WITHDRAWN messages
  /// from peers not awaited are kept for later calls. `from_awaited`, when set, is asked about
  /// every message of `kind`/`version` from a peer still awaited: false means it came from
  /// another process of that name (READY of an older incarnation) and is not taken; it stays
  /// queued until a later version's wait drops it as stale.
  /// Errors: only transport errors that concern no single peer; the interrupt's status.
  Result<Collected> Collect(
      Agent& agent, MessageKind kind, std::uint64_t version, const std::set<std::string>& peers, double timeout_s,
      const std::function<Status()>& interrupt = {},
      const std::function<std::optional<Status>(const std::string& peer, const Message& withdrawn)>& withdrawn = {},
      const std::function<bool(const std::string& peer, const Message& m)>& from_awaited = {});

  /// Waits until `kind`/`version` has arrived from every peer in `peers` (agent names).
  /// Other messages are kept for later calls. Errors: kTimedOut naming the peers still
  /// missing; transport errors (a disconnected peer) as the agent reports them.
  /// Other messages are kept for later calls, and so are the wanted ones when the wait
  /// fails (a later call for the same kind/version finds them). With `received`, the
  /// matching messages are stored there by peer name. With `abort_kind`, a message of that
  /// kind for `version` from any of `peers` ends the wait with kTimedOut naming the peer (a
  /// trainer that gave up on this engine for this version), or, when it carries a reason
  /// (Message::reason: the trainer's push failed), with the reason's code and message. `interrupt`, when set, is called
  /// after every kPollSeconds slice that brought no notification; its non-OK status ends the
  /// wait. `round` must equal the message's round (ROUND_DONE; 0 for every other kind).
  /// Messages of `kind` or `abort_kind` for versions below `version` are dropped (stale: a push
  /// abandoned, or an older version given up on). The `abort_kind` message that ended a wait
  /// stays in the inbox, so a repeated wait for the same version ends at once too. At the
  /// deadline what the agent has queued is still read (at most 4096 notifications), so a wait
  /// of `timeout_s` 0 takes what already arrived.
  /// Errors: kTimedOut naming the peers still missing; transport errors (a
  /// disconnected peer that is awaited: kPeerDisconnected) as the agent reports them; the interrupt's status.
  Status AwaitFromAll(Agent& agent, MessageKind kind, std::uint64_t version, std::set<std::string> peers,
                      double timeout_s, std::map<std::string, Message>* received = nullptr,
                      std::optional<MessageKind> abort_kind = std::nullopt,
                      const std::function<Status()>& interrupt = {}, std::uint32_t round = 0);

  /// Puts messages an earlier successful AwaitFromAll returned (by peer name) back into the
  /// inbox, for a later wait of the same kind and version: a caller whose wait failed at a
  /// later step and may be made again (WeightSubscriber::WaitForUpdate).
  void PutBack(const std::map<std::string, Message>& messages);

  /// Without waiting: takes every notification the agent has queued into the inbox, then
  /// removes and returns the peers of `peers` whose `kind`/`version` message is in it (e.g. a
  /// relay parent asking, right before a forward, which children gave the version up).
  /// A peer-failure notice it drains is not reported again by WaitNotification, but the peer
  /// stays in Agent::FailedPeers, which every wait here checks at least once a second.
  std::set<std::string> TakeArrived(Agent& agent, MessageKind kind, std::uint64_t version,
                                    const std::set<std::string>& peers);

  static constexpr double kPollSeconds = 0.1;

 private:
  struct Pending {
    std::string peer;
    Message message;
  };
  std::deque<Pending> pending_;
};

/// Rendezvous key under which a rank's transport metadata is published.
std::string MetadataKey(const std::string& job, const std::string& role, int rank);

}  // namespace shardwire::workflows
