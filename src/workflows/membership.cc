#include "workflows/membership.h"

#include <algorithm>
#include <charconv>
#include <chrono>
#include <optional>
#include <thread>
#include <utility>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace shardwire::workflows {

namespace {

constexpr std::uint64_t kSlots = 8;
using Clock = std::chrono::steady_clock;

// Polls `key` (which may hold an older value) until `done` accepts it or timeout_s pass.
template <typename Done>
Result<std::string> PollKey(Rendezvous& rendezvous, const std::string& key, double timeout_s, Done done) {
  const auto deadline = Clock::now() + std::chrono::duration<double>(timeout_s);
  auto pause = std::chrono::microseconds(200);
  while (true) {
    const double left = std::chrono::duration<double>(deadline - Clock::now()).count();
    auto got = rendezvous.Get(key, std::max(0.0, std::min(left, 1.0)));
    if (got.ok()) {
      std::string text(reinterpret_cast<const char*>(got->data()), got->size());
      SW_ASSIGN_OR_RETURN(const bool accepted, done(text));
      if (accepted) return text;
    } else if (got.status().code() != ErrorCode::kTimedOut) {
      return got.status();
    }
    if (left <= 0) return TimedOut(fmt::format("rendezvous key {}: no wanted value within {:.1f} s", key, timeout_s));
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::microseconds(5000));
  }
}

// Parses "<incarnation> <request id>".
Status ParseRequest(const std::string& key, const std::string& text, std::uint64_t* incarnation,
                    std::int64_t* request) {
  const auto space = text.find(' ');
  const char* end = text.data() + text.size();
  if (space == std::string::npos ||
      std::from_chars(text.data(), text.data() + space, *incarnation).ptr != text.data() + space ||
      std::from_chars(text.data() + space + 1, end, *request).ptr != end) {
    return CorruptData(fmt::format("membership request {} holds \"{}\", not \"<incarnation> <request>\"", key, text));
  }
  return Status::Ok();
}

// Engine rank r's latest request, or nullopt when it never filed one.
Result<std::optional<std::pair<std::uint64_t, std::int64_t>>> ReadRequest(Rendezvous& rendezvous,
                                                                          const std::string& job, int r) {
  const std::string key = MembershipRequestKey(job, r);
  auto got = rendezvous.Get(key, 0);
  if (!got.ok()) {
    if (got.status().code() == ErrorCode::kTimedOut) return std::optional<std::pair<std::uint64_t, std::int64_t>>();
    return got.status();
  }
  std::uint64_t incarnation = 0;
  std::int64_t request = 0;
  SW_RETURN_IF_ERROR(
      ParseRequest(key, std::string(reinterpret_cast<const char*>(got->data()), got->size()), &incarnation, &request));
  return std::make_optional(std::make_pair(incarnation, request));
}

}  // namespace

Result<std::set<int>> JoiningRanks(Rendezvous& rendezvous, const std::string& job, int engine_ranks) {
  std::set<int> joining;
  for (int r = 0; r < engine_ranks; ++r) {
    SW_ASSIGN_OR_RETURN(const auto request, ReadRequest(rendezvous, job, r));
    if (request && request->first != 0) joining.insert(r);
  }
  return joining;
}

std::string MembershipRequestsKey(const std::string& job) { return job + "/membership/requests"; }
std::string MembershipRequestKey(const std::string& job, int engine_rank) {
  return fmt::format("{}/membership/request/{}", job, engine_rank);
}
std::string MembershipSlotKey(const std::string& job, std::uint64_t version) {
  return fmt::format("{}/membership/slot/{}", job, version % kSlots);
}
std::string IncarnationKey(const std::string& job, int engine_rank) {
  return fmt::format("{}/engine/{}/incarnation", job, engine_rank);
}

std::string EncodeMembership(const Membership& m) {
  nlohmann::json members = nlohmann::json::array();
  for (const auto& [rank, member] : m.members) {
    members.push_back(
        {{"rank", rank}, {"incarnation", member.incarnation}, {"request", member.request}, {"since", member.since}});
  }
  return nlohmann::json{{"version", m.version}, {"members", members}}.dump();
}

Result<Membership> DecodeMembership(const std::string& key, const std::string& text) {
  try {
    const nlohmann::json j = nlohmann::json::parse(text);
    Membership m;
    m.version = j.at("version").get<std::uint64_t>();
    for (const nlohmann::json& e : j.at("members")) {
      const int rank = e.at("rank").get<int>();
      if (rank < 0) return CorruptData(fmt::format("membership record {}: negative engine rank {}", key, rank));
      m.members[rank] = Member{e.at("incarnation").get<std::uint64_t>(), e.at("request").get<std::int64_t>(),
                               e.at("since").get<std::uint64_t>()};
    }
    return m;
  } catch (const nlohmann::json::exception& e) {
    return CorruptData(fmt::format("membership record {} is malformed: {}", key, e.what()));
  }
}

Result<Membership> MembershipLeader::Publish(Rendezvous& rendezvous, const std::string& job, int engine_ranks,
                                             std::uint64_t version) {
  SW_ASSIGN_OR_RETURN(const std::int64_t requests, rendezvous.Add(MembershipRequestsKey(job), 0));
  if (requests != requests_seen_) {
    for (int r = 0; r < engine_ranks; ++r) {
      SW_ASSIGN_OR_RETURN(const auto latest, ReadRequest(rendezvous, job, r));
      if (!latest) continue;  // this rank never asked
      const auto [incarnation, request] = *latest;
      auto it = members_.find(r);
      const std::int64_t answered = it != members_.end() ? it->second.request : 0;
      if (request <= answered) continue;
      if (incarnation == 0) {
        members_.erase(r);
      } else {
        members_[r] = Member{incarnation, request, version};
      }
    }
    requests_seen_ = requests;
  }
  Membership m{version, members_};
  const std::string text = EncodeMembership(m);
  SW_RETURN_IF_ERROR(PutString(rendezvous, MembershipSlotKey(job, version), text));
  return m;
}

Result<Membership> ReadMembership(Rendezvous& rendezvous, const std::string& job, std::uint64_t version,
                                  double timeout_s) {
  const std::string key = MembershipSlotKey(job, version);
  Membership out;
  auto text = PollKey(rendezvous, key, timeout_s, [&](const std::string& t) -> Result<bool> {
    SW_ASSIGN_OR_RETURN(Membership m, DecodeMembership(key, t));
    if (m.version > version) {
      return FailedPrecondition(
          fmt::format("membership record {} is of version {} while this trainer pushes {} (trainers out of step)", key,
                      m.version, version));
    }
    if (m.version < version) return false;
    out = std::move(m);
    return true;
  });
  if (!text.ok()) {
    return text.status().WithContext(fmt::format("membership of push v{} (published by trainer rank 0)", version));
  }
  return out;
}

Result<std::int64_t> FileMembershipRequest(Rendezvous& rendezvous, const std::string& job, int engine_rank,
                                           std::uint64_t incarnation) {
  SW_ASSIGN_OR_RETURN(const std::int64_t request, rendezvous.Add(MembershipRequestsKey(job), 1));
  // The counter moves first, the request lands second: a leader that read the counter in
  // between sees the request on its next push (it re-reads when the counter changed).
  SW_RETURN_IF_ERROR(
      PutString(rendezvous, MembershipRequestKey(job, engine_rank), fmt::format("{} {}", incarnation, request)));
  // Bump once more so that a leader which read the counter between Add and Put re-scans.
  SW_RETURN_IF_ERROR(rendezvous.Add(MembershipRequestsKey(job), 1).status());
  return request;
}

Result<std::uint64_t> AwaitAdmission(Rendezvous& rendezvous, const std::string& job, int engine_rank,
                                     std::uint64_t incarnation, std::int64_t request, double timeout_s) {
  const auto deadline = Clock::now() + std::chrono::duration<double>(timeout_s);
  auto pause = std::chrono::microseconds(500);
  while (true) {
    std::uint64_t best = 0;
    for (std::uint64_t slot = 0; slot < kSlots; ++slot) {
      const std::string key = MembershipSlotKey(job, slot);
      auto got = rendezvous.Get(key, 0);
      if (!got.ok()) {
        if (got.status().code() == ErrorCode::kTimedOut) continue;
        return got.status();
      }
      SW_ASSIGN_OR_RETURN(const Membership m,
                          DecodeMembership(key, std::string(reinterpret_cast<const char*>(got->data()), got->size())));
      auto it = m.members.find(engine_rank);
      if (it == m.members.end() || it->second.incarnation != incarnation || it->second.request < request) continue;
      if (best == 0 || it->second.since < best) best = it->second.since;
    }
    if (best != 0) return best;
    if (Clock::now() >= deadline) {
      return TimedOut(
          fmt::format("engine rank {} (incarnation {}): no push admitted its join request {} within {:.1f} s (are the "
                      "trainers pushing?)",
                      engine_rank, incarnation, request, timeout_s));
    }
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::microseconds(10000));
  }
}

}  // namespace shardwire::workflows
