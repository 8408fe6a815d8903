// Control messages of the weight-sync protocol (see shardwire/weight_sync.h), carried
// as transport notifications: 1 byte kind + 8 bytes little-endian version.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "shardwire/agent.h"
#include "shardwire/status.h"

namespace shardwire::sync {

enum class MessageKind : std::uint8_t { kReady = 1, kDone = 2 };

struct Message {
  MessageKind kind;
  std::uint64_t version;
};

std::vector<std::byte> Encode(const Message& message);
/// nullopt for a payload that is not a sync message (wrong size or kind).
std::optional<Message> Decode(std::span<const std::byte> payload);

/// Notifications that arrived but were not yet wanted (e.g. READY for the next version).
class Inbox {
 public:
  /// Waits until `kind`/`version` has arrived from every peer in `peers` (agent names).
  /// Other messages are kept for later calls, and so are the wanted ones when the wait
  /// fails (a later call for the same kind/version finds them). `interrupt`, when set, is
  /// called after every kPollSeconds slice that brought no notification; its non-OK status
  /// ends the wait.
  /// Errors: kTimedOut naming the peers still missing; transport errors (a disconnected
  /// peer) as the agent reports them; the interrupt's status.
  Status AwaitFromAll(Agent& agent, MessageKind kind, std::uint64_t version, std::set<std::string> peers,
                      double timeout_s, const std::function<Status()>& interrupt = {});

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

}  // namespace shardwire::sync
