#include "workflows/sync_messages.h"

#include <algorithm>
#include <chrono>
#include <cstring>

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace shardwire::sync {

std::vector<std::byte> Encode(const Message& message) {
  std::vector<std::byte> out(9);
  out[0] = static_cast<std::byte>(message.kind);
  for (int i = 0; i < 8; ++i)
    out[1 + static_cast<std::size_t>(i)] = static_cast<std::byte>((message.version >> (8 * i)) & 0xFF);
  return out;
}

std::optional<Message> Decode(std::span<const std::byte> payload) {
  if (payload.size() != 9) return std::nullopt;
  const auto kind = static_cast<MessageKind>(payload[0]);
  if (kind != MessageKind::kReady && kind != MessageKind::kDone) return std::nullopt;
  std::uint64_t version = 0;
  for (int i = 0; i < 8; ++i)
    version |= static_cast<std::uint64_t>(payload[1 + static_cast<std::size_t>(i)]) << (8 * i);
  return Message{kind, version};
}

Status Inbox::AwaitFromAll(Agent& agent, MessageKind kind, std::uint64_t version, std::set<std::string> peers,
                           double timeout_s, const std::function<Status()>& interrupt) {
  std::vector<std::string> received;  // peers whose message this call consumed
  auto take = [&](const std::string& peer, const Message& m) {
    if (m.kind == kind && m.version == version && peers.erase(peer) == 1) {
      received.push_back(peer);
      return true;
    }
    return false;
  };
  // On failure the consumed messages go back to the inbox, so that a retry sees them.
  auto fail = [&](Status status) {
    for (const std::string& peer : received) pending_.push_back({peer, Message{kind, version}});
    return status;
  };
  for (auto it = pending_.begin(); it != pending_.end();) {
    it = take(it->peer, it->message) ? pending_.erase(it) : std::next(it);
  }
  const char* what = kind == MessageKind::kReady ? "READY" : "DONE";
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  while (!peers.empty()) {
    const double left = std::chrono::duration<double>(deadline - std::chrono::steady_clock::now()).count();
    if (left <= 0) {
      return fail(TimedOut(fmt::format("{} v{} still missing from {} peer(s): {} after {:.1f} s", what, version,
                                       peers.size(), fmt::join(peers, ", "), timeout_s)));
    }
    // Wake at least once a second to notice peers the transport declared dead (and every
    // kPollSeconds when an interrupt hook is set).
    auto note = agent.WaitNotification(std::min(left, interrupt ? kPollSeconds : 1.0));
    if (!note.ok()) {
      if (note.status().code() != ErrorCode::kTimedOut) return fail(note.status());
      // The hook runs only when a slice passed without a notification: a wait that is
      // progressing pays nothing for it (a Python hook takes the GIL).
      if (interrupt) {
        Status st = interrupt();
        if (!st.ok()) return fail(std::move(st));
      }
      for (const std::string& failed : agent.FailedPeers()) {
        if (peers.count(failed)) {
          return fail(
              PeerDisconnected(fmt::format("peer {} disconnected while {} v{} was awaited", failed, what, version)));
        }
      }
      continue;  // the loop reports what is missing at the deadline
    }
    auto message = Decode(note->payload);
    if (!message) continue;  // not ours: ignore
    if (!take(note->peer, *message)) pending_.push_back({note->peer, *message});
  }
  return Status::Ok();
}

std::string MetadataKey(const std::string& job, const std::string& role, int rank) {
  return fmt::format("{}/{}/{}", job, role, rank);
}

}  // namespace shardwire::sync
