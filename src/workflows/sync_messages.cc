#include "workflows/sync_messages.h"

#include <algorithm>
#include <chrono>
#include <cstring>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include "workflows/own_pause.h"

namespace shardwire::workflows {

const char* MessageKindName(MessageKind kind) {
  switch (kind) {
    case MessageKind::kReady:
      return "READY";
    case MessageKind::kDone:
      return "DONE";
    case MessageKind::kBlockAmax:
      return "BLOCK_AMAX";
    case MessageKind::kMissed:
      return "MISSED";
    case MessageKind::kAddend:
      return "ADDEND";
    case MessageKind::kRoundDone:
      return "ROUND_DONE";
    case MessageKind::kRelayPlan:
      return "RELAY_PLAN";
    case MessageKind::kRelayed:
      return "RELAYED";
    case MessageKind::kWithdrawn:
      return "WITHDRAWN";
    case MessageKind::kSlotsOpen:
      return "SLOTS_OPEN";
  }
  return "?";
}

namespace {

constexpr std::uint32_t kNoRelayParent = 0xFFFFFFFFu;
constexpr std::size_t kRelayTargetBytes = 13;

void PutLittleEndian(std::vector<std::byte>& out, std::uint64_t value, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<std::byte>(value >> (8 * i)));
}

std::uint64_t GetLittleEndian(std::span<const std::byte> in, std::size_t at, int bytes) {
  std::uint64_t value = 0;
  for (int i = 0; i < bytes; ++i) value |= static_cast<std::uint64_t>(in[at + static_cast<std::size_t>(i)]) << (8 * i);
  return value;
}

std::vector<std::byte> EncodeRelayPlan(const Message& message) {
  std::vector<std::byte> out;
  out.push_back(static_cast<std::byte>(message.kind));
  PutLittleEndian(out, message.version, 8);
  PutLittleEndian(out, message.relay_from.value_or(kNoRelayParent), 4);
  out.push_back(static_cast<std::byte>(message.relay_to.size()));
  for (const RelayTarget& t : message.relay_to) {
    PutLittleEndian(out, t.rank, 4);
    out.push_back(static_cast<std::byte>(t.buffer));
    PutLittleEndian(out, t.incarnation, 8);
  }
  return out;
}

std::optional<Message> DecodeRelayPlan(std::span<const std::byte> payload) {
  if (payload.size() < 14) return std::nullopt;
  const auto count = static_cast<std::size_t>(payload[13]);
  if (payload.size() != 14 + count * kRelayTargetBytes) return std::nullopt;
  Message m{MessageKind::kRelayPlan, GetLittleEndian(payload, 1, 8)};
  if (const auto from = static_cast<std::uint32_t>(GetLittleEndian(payload, 9, 4)); from != kNoRelayParent) {
    m.relay_from = from;
  }
  for (std::size_t i = 0; i < count; ++i) {
    const std::size_t at = 14 + i * kRelayTargetBytes;
    const auto buffer = static_cast<std::uint8_t>(payload[at + 4]);
    if (buffer > 1) return std::nullopt;
    const auto rank = static_cast<std::uint32_t>(GetLittleEndian(payload, at, 4));
    if (rank == kNoRelayParent) return std::nullopt;
    m.relay_to.push_back({rank, buffer, GetLittleEndian(payload, at + 5, 8)});
  }
  return m;
}

// Says, once per wait, that this process did not run for a while and the wait's deadline
// moved by as much (own_pause.h).
void WarnOwnPause(const OwnPauseDeadline& deadline, MessageKind kind, std::uint64_t version) {
  if (deadline.paused_s() < kOwnPauseSeconds) return;  // a lane a little late: not worth a line
  spdlog::warn(
      "waiting for {} v{}: this process or its agent's lanes did not run for {:.2f} s ({:.2f} s of it the lanes); "
      "the wait's deadline moved by as much",
      MessageKindName(kind), version, deadline.paused_s(), deadline.lanes_s());
}
// MISSED with the trainer's error (Message::reason): kind, version, code, length, text.
std::vector<std::byte> EncodeMissedWithReason(const Message& message) {
  std::string_view text = message.reason->message();
  if (text.size() > kMaxMissedReasonBytes) {
    std::size_t cut = kMaxMissedReasonBytes;
    while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;  // not inside a character
    text = text.substr(0, cut);
  }
  std::vector<std::byte> out;
  out.push_back(static_cast<std::byte>(message.kind));
  PutLittleEndian(out, message.version, 8);
  out.push_back(static_cast<std::byte>(message.unknown_reason_code != 0 ? message.unknown_reason_code
                                                                        : static_cast<int>(message.reason->code())));
  PutLittleEndian(out, text.size(), 2);
  for (char c : text) out.push_back(static_cast<std::byte>(c));
  return out;
}

std::optional<Message> DecodeMissedWithReason(std::span<const std::byte> payload) {
  if (payload.size() < 12) return std::nullopt;
  const auto code = static_cast<int>(payload[9]);
  if (code == static_cast<int>(ErrorCode::kOk)) return std::nullopt;  // never sent: a MISSED reason is an error
  const std::size_t length = GetLittleEndian(payload, 10, 2);
  if (length > kMaxMissedReasonBytes || payload.size() != 12 + length) return std::nullopt;
  Message m{MessageKind::kMissed, GetLittleEndian(payload, 1, 8)};
  // A code past this build's last is a newer peer's: still an error that ends the wait (it
  // used to be dropped as malformed, and the engine waited out its timeout).
  const bool known = code <= static_cast<int>(ErrorCode::kFailedPrecondition);
  if (!known) m.unknown_reason_code = static_cast<std::uint8_t>(code);
  m.reason = Status(known ? static_cast<ErrorCode>(code) : ErrorCode::kInternal,
                    std::string(reinterpret_cast<const char*>(payload.data()) + 12, length));
  return m;
}
}  // namespace

std::vector<std::byte> Encode(const Message& message) {
  if (message.kind == MessageKind::kRelayPlan) return EncodeRelayPlan(message);
  if (message.kind == MessageKind::kMissed && message.reason.has_value() && !message.reason->ok()) {
    return EncodeMissedWithReason(message);
  }
  if (message.kind == MessageKind::kWithdrawn) {
    std::vector<std::byte> out;
    out.push_back(static_cast<std::byte>(message.kind));
    PutLittleEndian(out, message.version, 8);
    PutLittleEndian(out, static_cast<std::uint64_t>(message.request), 8);
    return out;
  }
  const std::size_t floats = message.kind == MessageKind::kBlockAmax ? message.amax.size() : 0;
  const bool buffer = message.kind == MessageKind::kReady && message.buffer.has_value();
  const bool incarnation = message.kind == MessageKind::kReady && message.incarnation.has_value();
  const bool digest = message.kind == MessageKind::kDone && message.digest.has_value();
  const bool round = message.kind == MessageKind::kRoundDone;
  std::vector<std::byte> out(9 + 4 * floats + (buffer ? 1 : 0) + (incarnation ? 8 : 0) + (digest ? 8 : 0) +
                             (round ? 4 : 0));
  if (round) {
    for (int i = 0; i < 4; ++i) out[9 + static_cast<std::size_t>(i)] = static_cast<std::byte>(message.round >> (8 * i));
  }
  if (buffer) out[9] = static_cast<std::byte>(*message.buffer);
  if (incarnation) {
    const std::size_t at = buffer ? 10 : 9;
    for (int i = 0; i < 8; ++i)
      out[at + static_cast<std::size_t>(i)] = static_cast<std::byte>(*message.incarnation >> (8 * i));
  }
  if (digest) {
    for (int i = 0; i < 8; ++i)
      out[9 + static_cast<std::size_t>(i)] = static_cast<std::byte>(*message.digest >> (8 * i));
  }
  out[0] = static_cast<std::byte>(message.kind);
  for (int i = 0; i < 8; ++i)
    out[1 + static_cast<std::size_t>(i)] = static_cast<std::byte>((message.version >> (8 * i)) & 0xFF);
  for (std::size_t f = 0; f < floats; ++f) {
    std::uint32_t bits = 0;
    std::memcpy(&bits, &message.amax[f], 4);
    for (int i = 0; i < 4; ++i) out[9 + 4 * f + static_cast<std::size_t>(i)] = static_cast<std::byte>(bits >> (8 * i));
  }
  return out;
}

std::optional<Message> Decode(std::span<const std::byte> payload) {
  if (payload.size() < 9) return std::nullopt;
  const auto kind = static_cast<MessageKind>(payload[0]);
  if (kind == MessageKind::kRelayPlan) return DecodeRelayPlan(payload);
  if (kind == MessageKind::kMissed && payload.size() != 9) return DecodeMissedWithReason(payload);
  if (kind == MessageKind::kWithdrawn) {
    if (payload.size() != 17) return std::nullopt;
    Message m{kind, GetLittleEndian(payload, 1, 8)};
    m.request = static_cast<std::int64_t>(GetLittleEndian(payload, 9, 8));
    return m;
  }
  if (kind == MessageKind::kReady && (payload.size() == 10 || payload.size() == 18)) {
    if (payload[9] != std::byte{0} && payload[9] != std::byte{1}) return std::nullopt;
  } else if (kind == MessageKind::kReady && payload.size() == 17) {
    // READY with the incarnation, no buffer
  } else if (kind == MessageKind::kDone && payload.size() == 17) {
    // DONE with the digest of the bytes sent
  } else if (kind == MessageKind::kRoundDone) {
    if (payload.size() != 13) return std::nullopt;
  } else if (kind == MessageKind::kReady || kind == MessageKind::kDone || kind == MessageKind::kMissed ||
             kind == MessageKind::kAddend || kind == MessageKind::kRelayed || kind == MessageKind::kSlotsOpen) {
    if (payload.size() != 9) return std::nullopt;
  } else if (kind != MessageKind::kBlockAmax || (payload.size() - 9) % 4 != 0) {
    return std::nullopt;
  }
  std::uint64_t version = 0;
  for (int i = 0; i < 8; ++i)
    version |= static_cast<std::uint64_t>(payload[1 + static_cast<std::size_t>(i)]) << (8 * i);
  Message m{kind, version};
  if (kind == MessageKind::kReady) {
    const bool buffer = payload.size() == 10 || payload.size() == 18;
    if (buffer) m.buffer = static_cast<std::uint8_t>(payload[9]);
    if (payload.size() >= 17) m.incarnation = GetLittleEndian(payload, buffer ? 10 : 9, 8);
    return m;
  }
  if (kind == MessageKind::kRoundDone) {
    for (int i = 0; i < 4; ++i)
      m.round |= static_cast<std::uint32_t>(payload[9 + static_cast<std::size_t>(i)]) << (8 * i);
    return m;
  }
  if (kind == MessageKind::kDone) {
    if (payload.size() == 17) {
      std::uint64_t digest = 0;
      for (int i = 0; i < 8; ++i)
        digest |= static_cast<std::uint64_t>(payload[9 + static_cast<std::size_t>(i)]) << (8 * i);
      m.digest = digest;
    }
    return m;
  }
  m.amax.resize((payload.size() - 9) / 4);
  for (std::size_t f = 0; f < m.amax.size(); ++f) {
    std::uint32_t bits = 0;
    for (int i = 0; i < 4; ++i)
      bits |= static_cast<std::uint32_t>(payload[9 + 4 * f + static_cast<std::size_t>(i)]) << (8 * i);
    std::memcpy(&m.amax[f], &bits, 4);
  }
  return m;
}

Status Inbox::AwaitFromAll(Agent& agent, MessageKind kind, std::uint64_t version, std::set<std::string> peers,
                           double timeout_s, std::map<std::string, Message>* received,
                           std::optional<MessageKind> abort_kind, const std::function<Status()>& interrupt,
                           std::uint32_t round) {
  std::string aborted_by;
  std::optional<Status> aborted_reason;  // the sender's error, when its MISSED carried one
  std::uint8_t aborted_unknown_code = 0;  // its code byte, when this build does not know it
  std::vector<Pending> consumed;  // wanted messages this call took: back to the inbox on failure
  auto take = [&](const std::string& peer, const Message& m) {
    if (abort_kind && m.kind == *abort_kind && m.version == version && peers.count(peer)) {
      aborted_by = peer;
      aborted_reason = m.reason;
      aborted_unknown_code = m.unknown_reason_code;
      // Kept: the peer gave `version` up, so a repeated wait for it ends at once too instead
      // of waiting out its bound (BeginUpdate of the version drops it: TakeArrived).
      return false;
    }
    if (abort_kind && m.kind == *abort_kind && m.version < version) return true;  // about an older wait: drop
    if (m.kind == kind && m.version < version) return true;  // stale: drop
    if (m.kind == kind && m.version == version && m.round == round && peers.erase(peer) == 1) {
      if (received != nullptr) (*received)[peer] = m;
      consumed.push_back({peer, m});
      return true;
    }
    return false;
  };
  auto fail = [&](Status status) {
    for (Pending& p : consumed) pending_.push_back(std::move(p));
    return status;
  };
  for (auto it = pending_.begin(); it != pending_.end();) {
    it = take(it->peer, it->message) ? pending_.erase(it) : std::next(it);
  }
  auto aborted = [&] {
    if (aborted_reason.has_value() && !aborted_reason->ok()) {
      // A push that failed after it took this rank's READY: the sender's own error, its code kept.
      return Status(
          aborted_reason->code(),
          fmt::format("{} gave up on v{} for this rank ({} v{}): its push failed, nothing more of v{} "
                      "comes from it: {}{}",
                      aborted_by, version, MessageKindName(*abort_kind), version, version,
                      aborted_unknown_code != 0
                          ? fmt::format("(error code {}, which this build does not know: a peer of a newer build) ",
                                        aborted_unknown_code)
                          : "",
                      aborted_reason->message()));
    }
    return TimedOut(fmt::format("{} gave up on v{} for this rank ({} v{}): it was not ready or not reachable in time",
                                aborted_by, version, MessageKindName(*abort_kind), version));
  };
  if (!aborted_by.empty()) return fail(aborted());
  // Wake at least once a second to notice peers the transport declared dead (and every
  // kPollSeconds when an interrupt hook is set).
  const double slice_s = interrupt ? kPollSeconds : 1.0;
  // This process's own pauses and its lanes' stalls do not count.
  OwnPauseDeadline deadline(timeout_s, slice_s, PauseClock::now(), LaneStallOf(agent));
  // Past the deadline, what is queued at the agent is still read (a wait of timeout_s 0 takes
  // what arrived; a short one is not failed by notifications it had no turn to read), at most
  // kLateLooks of them, so that a stream of other messages cannot hold the wait open.
  static constexpr int kLateLooks = 4096;
  int late_looks = 0;
  while (!peers.empty()) {
    const double left = deadline.Left();
    const bool late = left <= 0;
    if (late) ++late_looks;
    auto note = late && late_looks > kLateLooks ? Result<Notification>(TimedOut("past the deadline"))
                                                : agent.WaitNotification(std::clamp(left, 0.0, slice_s));
    if (late && !note.ok() && note.status().code() == ErrorCode::kTimedOut) {
      WarnOwnPause(deadline, kind, version);
      return fail(TimedOut(fmt::format("{} v{} still missing from {} peer(s): {} after {:.1f} s", MessageKindName(kind),
                                       version, peers.size(), fmt::join(peers, ", "), timeout_s)));
    }
    if (!note.ok()) {
      // A peer that failed fails this wait only if it is awaited (below): an engine also talks
      // to its relay children, a trainer to other trainers.
      if (note.status().code() != ErrorCode::kTimedOut && note.status().code() != ErrorCode::kPeerDisconnected) {
        return fail(note.status());
      }
      // The hook runs only when a slice passed without a notification: a wait that is
      // progressing pays nothing for it (a Python hook takes the GIL).
      if (interrupt) {
        Status st = interrupt();
        if (!st.ok()) return fail(std::move(st));
      }
      for (const std::string& failed : agent.FailedPeers()) {
        if (peers.count(failed)) {
          return fail(PeerDisconnected(
              fmt::format("peer {} disconnected while {} v{} was awaited", failed, MessageKindName(kind), version)));
        }
      }
      continue;  // the loop reports what is missing at the deadline
    }
    auto message = Decode(note->payload);
    if (!message) continue;  // not ours: ignore
    if (!take(note->peer, *message)) pending_.push_back({note->peer, *message});
    if (!aborted_by.empty()) return fail(aborted());
  }
  WarnOwnPause(deadline, kind, version);
  return Status::Ok();
}

void Inbox::PutBack(const std::map<std::string, Message>& messages) {
  for (const auto& [peer, message] : messages) pending_.push_back({peer, message});
}

std::set<std::string> Inbox::TakeArrived(Agent& agent, MessageKind kind, std::uint64_t version,
                                         const std::set<std::string>& peers) {
  while (true) {  // drain what is queued; kPeerDisconnected comes once per failed peer
    auto note = agent.WaitNotification(0);
    if (!note.ok()) {
      if (note.status().code() == ErrorCode::kPeerDisconnected) continue;
      break;
    }
    if (auto message = Decode(note->payload)) pending_.push_back({note->peer, *message});
  }
  std::set<std::string> arrived;
  for (auto it = pending_.begin(); it != pending_.end();) {
    const bool match = it->message.kind == kind && it->message.version == version && peers.count(it->peer) == 1;
    if (match) arrived.insert(it->peer);
    it = match ? pending_.erase(it) : std::next(it);
  }
  return arrived;
}

Result<Collected> Inbox::Collect(
    Agent& agent, MessageKind kind, std::uint64_t version, const std::set<std::string>& peers, double timeout_s,
    const std::function<Status()>& interrupt,
    const std::function<std::optional<Status>(const std::string& peer, const Message& withdrawn)>& withdrawn,
    const std::function<bool(const std::string& peer, const Message& m)>& from_awaited) {
  Collected out;
  std::set<std::string> waiting = peers;
  auto take = [&](const std::string& peer, const Message& m) {
    if (withdrawn && m.kind == MessageKind::kWithdrawn) {
      if (!waiting.count(peer)) return false;  // for a later wait
      std::optional<Status> why = withdrawn(peer, m);
      if (why) {
        waiting.erase(peer);
        out.failed.emplace(peer, std::move(*why));
      }
      return true;
    }
    if (m.kind != kind) return false;
    if (m.version < version) return true;  // stale: drop
    if (m.version == version && waiting.count(peer) && (!from_awaited || from_awaited(peer, m))) {
      waiting.erase(peer);
      out.arrived.emplace(peer, m);
      return true;
    }
    return false;
  };
  for (auto it = pending_.begin(); it != pending_.end();) {
    it = take(it->peer, it->message) ? pending_.erase(it) : std::next(it);
  }
  auto drop_failed = [&] {
    for (const std::string& failed : agent.FailedPeers()) {
      if (waiting.erase(failed) == 1) {
        out.failed.emplace(failed, PeerDisconnected(fmt::format("peer {} disconnected while {} v{} was awaited", failed,
                                                                MessageKindName(kind), version)));
      }
    }
  };
  drop_failed();
  const double slice_s = interrupt ? kPollSeconds : 0.25;
  // This process's own pauses and its lanes' stalls do not count.
  OwnPauseDeadline deadline(timeout_s, slice_s, PauseClock::now(), LaneStallOf(agent));
  while (!waiting.empty()) {
    const double left = deadline.Left();
    if (left <= 0) break;
    auto note = agent.WaitNotification(std::min(left, slice_s));
    if (!note.ok()) {
      if (note.status().code() != ErrorCode::kTimedOut && note.status().code() != ErrorCode::kPeerDisconnected) {
        return note.status();
      }
      if (interrupt) {
        if (Status st = interrupt(); !st.ok()) {
          for (auto& [peer, m] : out.arrived) pending_.push_back({peer, m});
          return st;
        }
      }
      drop_failed();
      continue;
    }
    auto message = Decode(note->payload);
    if (!message) continue;  // not ours: ignore
    if (!take(note->peer, *message)) pending_.push_back({note->peer, *message});
  }
  WarnOwnPause(deadline, kind, version);
  return out;
}

std::string MetadataKey(const std::string& job, const std::string& role, int rank) {
  return fmt::format("{}/{}/{}", job, role, rank);
}

}  // namespace shardwire::workflows
