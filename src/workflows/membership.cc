#include "workflows/membership.h"

#include <algorithm>
#include <charconv>
#include <chrono>
#include <optional>
#include <string_view>
#include <thread>
#include <utility>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "model/bounded_json.h"

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

// One filed request: incarnation (0: leave), request id, and whether it is a catch-up hold.
struct Request {
  std::uint64_t incarnation = 0;
  std::int64_t id = 0;
  bool hold = false;
};

// Parses "<incarnation> <request id>" or "<incarnation> <request id> hold".
Result<Request> ParseRequest(const std::string& key, const std::string& text) {
  Request r;
  std::string body = text;
  constexpr std::string_view kHold = " hold";
  if (body.size() > kHold.size() && body.compare(body.size() - kHold.size(), kHold.size(), kHold) == 0) {
    r.hold = true;
    body.resize(body.size() - kHold.size());
  }
  const auto space = body.find(' ');
  const char* end = body.data() + body.size();
  if (space == std::string::npos ||
      std::from_chars(body.data(), body.data() + space, r.incarnation).ptr != body.data() + space ||
      std::from_chars(body.data() + space + 1, end, r.id).ptr != end || (r.hold && r.incarnation == 0)) {
    return CorruptData(fmt::format(
        "membership request {} holds \"{}\", not \"<incarnation> <request>\" or \"<incarnation> <request> hold\"", key,
        text));
  }
  return r;
}

// Engine rank r's latest request, or nullopt when it never filed one.
Result<std::optional<Request>> ReadRequest(Rendezvous& rendezvous, const std::string& job, int r) {
  const std::string key = MembershipRequestKey(job, r);
  auto got = rendezvous.Get(key, 0);
  if (!got.ok()) {
    if (got.status().code() == ErrorCode::kTimedOut) return std::optional<Request>();
    return got.status();
  }
  SW_ASSIGN_OR_RETURN(const Request request,
                      ParseRequest(key, std::string(reinterpret_cast<const char*>(got->data()), got->size())));
  return std::make_optional(request);
}

double SteadySeconds() { return std::chrono::duration<double>(Clock::now().time_since_epoch()).count(); }

}  // namespace

Result<std::set<int>> JoiningRanks(Rendezvous& rendezvous, const std::string& job, int engine_ranks) {
  std::set<int> joining;
  for (int r = 0; r < engine_ranks; ++r) {
    SW_ASSIGN_OR_RETURN(const auto request, ReadRequest(rendezvous, job, r));
    if (request && request->incarnation != 0 && !request->hold) joining.insert(r);
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

std::string HoldAckKey(const std::string& job, int engine_rank) {
  return fmt::format("{}/membership/held/{}", job, engine_rank);
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
    auto parsed = model::ParseBoundedJson(text);
    if (!parsed.ok()) return CorruptData(fmt::format("membership record {}: {}", key, parsed.status().message()));
    const nlohmann::json& j = *parsed;
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

Status MembershipLeader::Rescan(Rendezvous& rendezvous, const std::string& job, int engine_ranks,
                                std::uint64_t version) {
  for (int r = 0; r < engine_ranks; ++r) {
    SW_ASSIGN_OR_RETURN(const auto latest, ReadRequest(rendezvous, job, r));
    if (!latest) continue;  // this rank never asked
    std::int64_t& processed = processed_[r];
    if (latest->id <= processed) continue;
    processed = latest->id;
    // Any later request of the rank (its join, a leave, another process's hold) ends its hold.
    holds_.erase(r);
    if (latest->hold) {
      if (hold_s_ > 0) holds_[r] = Hold{latest->incarnation, latest->id, SteadySeconds()};
    } else if (latest->incarnation == 0) {
      members_.erase(r);
    } else {
      members_[r] = Member{latest->incarnation, latest->id, version};
    }
  }
  return Status::Ok();
}

Result<Membership> MembershipLeader::Publish(Rendezvous& rendezvous, const std::string& job, int engine_ranks,
                                             std::uint64_t version, HoldWait* held,
                                             const std::function<Status()>& interrupt) {
  SW_ASSIGN_OR_RETURN(std::int64_t requests, rendezvous.Add(MembershipRequestsKey(job), 0));
  if (requests != requests_seen_) {
    SW_RETURN_IF_ERROR(Rescan(rendezvous, job, engine_ranks, version));
    requests_seen_ = requests;
  }
  // Catch-up holds: no push starts while an engine loads the committed version from live ones.
  const double begin = SteadySeconds();
  auto pause = std::chrono::microseconds(500);
  while (!holds_.empty()) {
    const double now = SteadySeconds();
    for (auto it = holds_.begin(); it != holds_.end();) {
      if (!it->second.acknowledged) {
        // The last push published before this one: what the live engines keep serving. Versions
        // need not be consecutive (a training step); version - 1 only for a leader that has not
        // published yet (a trainer rank 0 restarted mid-job).
        const std::uint64_t serving = last_published_ != 0 ? last_published_ : version - 1;
        SW_RETURN_IF_ERROR(
            PutString(rendezvous, HoldAckKey(job, it->first), fmt::format("{} {}", it->second.request, serving)));
        it->second.acknowledged = true;
      }
      if (held != nullptr &&
          std::find(held->ranks.begin(), held->ranks.end(), it->first) == held->ranks.end()) {
        held->ranks.push_back(it->first);
      }
      // Each hold lasts at most hold_s, and so does the whole wait: an engine that crash-loops
      // and files a new hold each time cannot keep the push (and the job) waiting.
      if (now - it->second.seen_at >= hold_s_ || now - begin >= hold_s_) {
        if (held != nullptr) held->expired.push_back(it->first);
        it = holds_.erase(it);
      } else {
        ++it;
      }
    }
    if (holds_.empty()) break;
    if (interrupt) SW_RETURN_IF_ERROR(interrupt());
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::microseconds(10000));
    SW_ASSIGN_OR_RETURN(requests, rendezvous.Add(MembershipRequestsKey(job), 0));
    if (requests != requests_seen_) {
      SW_RETURN_IF_ERROR(Rescan(rendezvous, job, engine_ranks, version));
      requests_seen_ = requests;
    }
  }
  if (held != nullptr) held->seconds = held->ranks.empty() ? 0 : SteadySeconds() - begin;
  Membership m{version, members_};
  const std::string text = EncodeMembership(m);
  SW_RETURN_IF_ERROR(PutString(rendezvous, MembershipSlotKey(job, version), text));
  last_published_ = version;
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
                                           std::uint64_t incarnation, bool hold) {
  if (hold && incarnation == 0) {
    return InvalidArgument(fmt::format("engine rank {} of job {}: a catch-up hold needs an incarnation", engine_rank, job));
  }
  SW_ASSIGN_OR_RETURN(const std::int64_t request, rendezvous.Add(MembershipRequestsKey(job), 1));
  // The counter moves first, the request lands second: a leader that read the counter in
  // between sees the request on its next push (it re-reads when the counter changed).
  SW_RETURN_IF_ERROR(
      PutString(rendezvous, MembershipRequestKey(job, engine_rank),
                fmt::format("{} {}{}", incarnation, request, hold ? " hold" : "")));
  // Bump once more so that a leader which read the counter between Add and Put re-scans.
  SW_RETURN_IF_ERROR(rendezvous.Add(MembershipRequestsKey(job), 1).status());
  return request;
}

Result<std::uint64_t> AwaitHold(Rendezvous& rendezvous, const std::string& job, int engine_rank, std::int64_t request,
                                double timeout_s) {
  const std::string key = HoldAckKey(job, engine_rank);
  std::uint64_t version = 0;
  auto text = PollKey(rendezvous, key, timeout_s, [&](const std::string& t) -> Result<bool> {
    std::int64_t acked = 0;
    const auto space = t.find(' ');
    const char* end = t.data() + t.size();
    if (space == std::string::npos || std::from_chars(t.data(), t.data() + space, acked).ptr != t.data() + space ||
        std::from_chars(t.data() + space + 1, end, version).ptr != end) {
      return CorruptData(fmt::format("hold acknowledgement {} holds \"{}\", not \"<request> <version>\"", key, t));
    }
    return acked == request;
  });
  if (!text.ok()) return text.status();
  return version;
}

Result<std::uint64_t> AwaitAdmission(Rendezvous& rendezvous, const std::string& job, int engine_rank,
                                     std::uint64_t incarnation, std::int64_t request, double timeout_s,
                                     const std::function<Status()>& interrupt, double interrupt_poll_s) {
  // +inf: 1e9 s (31 years) away; the conversion of more overflows the clock.
  const auto deadline = Clock::now() + std::chrono::duration<double>(std::clamp(timeout_s, 0.0, 1e9));
  const auto interrupt_every = std::chrono::duration<double>(interrupt_poll_s);
  auto last_interrupt_check = Clock::now();
  auto pause = std::chrono::microseconds(500);
  while (true) {
    if (interrupt && Clock::now() - last_interrupt_check >= interrupt_every) {
      SW_RETURN_IF_ERROR(interrupt());
      last_interrupt_check = Clock::now();
    }
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
