// Engine membership of an RL job with dynamic membership (WeightSyncOptions::
// dynamic_membership): which engine ranks, in which incarnation, each push writes.
//
// Engine ranks join and leave through the rendezvous (the coordinator in a deployment):
//   "<job>/membership/requests"      counter, +1 per join or leave request
//   "<job>/membership/request/<r>"   engine rank r's latest request: "<incarnation> <request id>"
//                                    (incarnation 0: leave)
//   "<job>/membership/slot/<v % 8>"  the membership of push v (JSON, below), written by
//                                    trainer rank 0 (the leader) when push v starts
// Every trainer rank reads the record of push v before it waits for READY(v), so all of
// them write to the same engines in one push; a joining engine learns from the first
// record that lists its request the version it begins with. A ring of 8 slots suffices:
// trainers are at most one push apart (engines READY for v+1 only after DONE(v) from all).
//
// Record: {"version": v, "members": [{"rank": r, "incarnation": i, "request": q,
// "since": s}, ...]}; `since` is the first version written to that incarnation after
// request q.
#pragma once

#include <cstdint>
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

/// Trainer rank 0's side: applies the join and leave requests that arrived since the last
/// call (one counter read when none did) and publishes the membership of push `version`.
/// `engine_ranks`: the engine layout's world size. Errors: rendezvous errors; kCorruptData
/// for a malformed request value (naming its key).
class MembershipLeader {
 public:
  Result<Membership> Publish(Rendezvous& rendezvous, const std::string& job, int engine_ranks, std::uint64_t version);

 private:
  std::int64_t requests_seen_ = 0;
  std::map<int, Member> members_;
};

/// The engine ranks whose latest request is a join (they are members from the leader's next
/// push on, or already are). Errors: rendezvous errors; kCorruptData.
Result<std::set<int>> JoiningRanks(Rendezvous& rendezvous, const std::string& job, int engine_ranks);

/// Every trainer rank: the membership of push `version`, waiting up to timeout_s for the
/// leader to publish it. Errors: kTimedOut; kFailedPrecondition when the slot already holds
/// a later version (this rank pushes a version the others are past); kCorruptData.
Result<Membership> ReadMembership(Rendezvous& rendezvous, const std::string& job, std::uint64_t version,
                                  double timeout_s);

/// An engine rank's side: files a join (incarnation > 0) or leave (incarnation 0) request
/// and returns its request id.
Result<std::int64_t> FileMembershipRequest(Rendezvous& rendezvous, const std::string& job, int engine_rank,
                                           std::uint64_t incarnation);

/// Waits (up to timeout_s, polling the ring) for a push whose membership answers join
/// `request` of engine rank `engine_rank`, and returns that push's version (the version the
/// engine begins with). Errors: kTimedOut (no push admitted it in time: are the trainers
/// pushing?); kCorruptData.
Result<std::uint64_t> AwaitAdmission(Rendezvous& rendezvous, const std::string& job, int engine_rank,
                                     std::uint64_t incarnation, std::int64_t request, double timeout_s);

}  // namespace shardwire::workflows
