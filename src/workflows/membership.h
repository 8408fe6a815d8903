// Engine membership of an RL job with dynamic membership (WeightSyncOptions::
// dynamic_membership): which engine ranks, in which incarnation, each push writes.
//
// Engine ranks join and leave through the rendezvous (the coordinator in a deployment):
//   "<job>/membership/requests"      counter, +1 per join or leave request
//   "<job>/membership/request/<r>"   engine rank r's latest request: "<incarnation> <request id>"
//                                    (incarnation 0: leave), or "<incarnation> <request id> hold"
//                                    (a catch-up hold, below)
//   "<job>/membership/slot/<v % 8>"  the membership of push v (JSON, below), written by
//                                    trainer rank 0 (the leader) when push v starts
// Every trainer rank reads the record of push v before it waits for READY(v), so all of
// them write to the same engines in one push; a joining engine learns from the first
// record that lists its request the version it begins with. A ring of 8 slots suffices:
// trainers are at most one push apart (engines READY for v+1 only after DONE(v) from all).
//
// Catch-up holds: an engine process that is about to load the committed version from live
// engines (engine_catch_up.h) files a hold request. The leader, when it next starts a push,
// waits before publishing that push's record until the rank files a later request (its join,
// or a leave) or until hold_s (its own clock) passed since it first saw the hold, polling the
// counter. No push starts meanwhile, so no live engine commits a newer version and withdraws the
// one being loaded; at most the push whose record was already published completes. A hold is
// applied once: an expired one is not waited for again (a new process files a new one). When the
// leader begins to honour a hold it writes "<job>/membership/held/<r>" = "<request id> <version>",
// `version` being the last push whose record it had published (the version the live engines
// keep serving once they committed it).
//
// Record: {"version": v, "members": [{"rank": r, "incarnation": i, "request": q,
// "since": s}, ...]}; `since` is the first version written to that incarnation after
// request q.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "shardwire/rendezvous.h"
#include "shardwire/status.h"

namespace shardwire::workflows {

/// One engine rank's membership.
struct Member {
  std::uint64_t incarnation = 0;  ///< the engine process's incarnation (from 1)
  std::int64_t request = 0;       ///< the join request this membership answers
  std::uint64_t since = 0;        ///< first version written to it after that request
};

/// The engine ranks a push writes to: engine rank -> member.
struct Membership {
  std::uint64_t version = 0;
  std::map<int, Member> members;
};

std::string EncodeMembership(const Membership& m);
/// Errors: kCorruptData naming `key` for malformed JSON or fields.
Result<Membership> DecodeMembership(const std::string& key, const std::string& text);

std::string MembershipRequestsKey(const std::string& job);
std::string MembershipRequestKey(const std::string& job, int engine_rank);
std::string MembershipSlotKey(const std::string& job, std::uint64_t version);
/// Key of the per-rank incarnation counter an engine rank increments when it starts.
std::string IncarnationKey(const std::string& job, int engine_rank);
/// Key of the leader's acknowledgement of engine rank r's catch-up hold.
std::string HoldAckKey(const std::string& job, int engine_rank);

/// An engine rank's side: waits (up to timeout_s, polling) until the leader honours hold
/// `request` of `engine_rank` and returns the last version pushed before it. Errors:
/// kTimedOut (no push started since the hold was filed: no push is running either);
/// kCorruptData.
Result<std::uint64_t> AwaitHold(Rendezvous& rendezvous, const std::string& job, int engine_rank, std::int64_t request,
                                double timeout_s);

/// What a leader's Publish waited for (catch-up holds).
struct HoldWait {
  double seconds = 0;          ///< waited before publishing (0: no hold)
  std::vector<int> ranks;      ///< engine ranks whose catch-up held the push
  std::vector<int> expired;    ///< of those, the ones whose hold ran out (hold_s) instead of being released
};

/// Trainer rank 0's side: applies the join, leave and hold requests that arrived since the
/// last call (one counter read when none did), waits while catch-up holds are open (at most
/// hold_s per hold from when it first saw it, and at most hold_s in all however many holds
/// arrive meanwhile; 0: never waits), and publishes the membership of
/// push `version`. `engine_ranks`: the engine layout's world size. `interrupt` (may be empty)
/// is called between polls of a hold wait; its error ends the wait. Errors: rendezvous errors;
/// kCorruptData for a malformed request value (naming its key); interrupt's error.
class MembershipLeader {
 public:
  explicit MembershipLeader(double hold_s = 0) : hold_s_(hold_s) {}
  Result<Membership> Publish(Rendezvous& rendezvous, const std::string& job, int engine_ranks, std::uint64_t version,
                             HoldWait* held = nullptr, const std::function<Status()>& interrupt = {});

 private:
  struct Hold {
    std::uint64_t incarnation = 0;
    std::int64_t request = 0;
    double seen_at = 0;  // steady clock seconds
    bool acknowledged = false;
  };
  Status Rescan(Rendezvous& rendezvous, const std::string& job, int engine_ranks, std::uint64_t version);
  double hold_s_ = 0;
  std::int64_t requests_seen_ = 0;
  std::map<int, Member> members_;
  std::map<int, std::int64_t> processed_;  // engine rank -> latest request id applied
  std::map<int, Hold> holds_;               // open catch-up holds
  std::uint64_t last_published_ = 0;        // the version of this leader's last Publish (0: none)
};

/// The engine ranks whose latest request is a join (they are members from the leader's next
/// push on, or already are). Errors: rendezvous errors; kCorruptData.
Result<std::set<int>> JoiningRanks(Rendezvous& rendezvous, const std::string& job, int engine_ranks);

/// Every trainer rank: the membership of push `version`, waiting up to timeout_s for the
/// leader to publish it. Errors: kTimedOut; kFailedPrecondition when the slot already holds
/// a later version (this rank pushes a version the others are past); kCorruptData.
Result<Membership> ReadMembership(Rendezvous& rendezvous, const std::string& job, std::uint64_t version,
                                  double timeout_s);

/// An engine rank's side: files a join (incarnation > 0) or leave (incarnation 0) request,
/// or with `hold` a catch-up hold of that incarnation (> 0), and returns its request id.
/// Errors: rendezvous errors; kInvalidArgument for a hold of incarnation 0.
Result<std::int64_t> FileMembershipRequest(Rendezvous& rendezvous, const std::string& job, int engine_rank,
                                           std::uint64_t incarnation, bool hold = false);

/// Waits (up to timeout_s, polling the ring) for a push whose membership answers join
/// `request` of engine rank `engine_rank`, and returns that push's version (the version the
/// engine begins with). `interrupt` (WeightSyncOptions::interrupt), when set, is called
/// between polls at least every interrupt_poll_s seconds; a non-OK status it returns ends
/// the wait with that status (the request stands: the wait may start again).
/// Errors: kTimedOut (no push admitted it in time: are the trainers pushing?); kCorruptData;
/// the interrupt's status.
Result<std::uint64_t> AwaitAdmission(Rendezvous& rendezvous, const std::string& job, int engine_rank,
                                     std::uint64_t incarnation, std::int64_t request, double timeout_s,
                                     const std::function<Status()>& interrupt = {}, double interrupt_poll_s = 0.1);

}  // namespace shardwire::workflows
