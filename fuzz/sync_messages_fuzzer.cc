// libFuzzer target for the weight-sync control messages (shardwire::workflows::Decode in
// src/workflows/sync_messages.h), which arrive as notifications from other processes.
//
// Properties checked on every input:
//   * decoding never crashes or reads outside the input (ASan, UBSan);
//   * an accepted payload re-encodes to exactly the same bytes (single encoding), and
//     its kind is one the protocol defines.
// Fuzz links: shardwire_workflows
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "fuzz_check.h"
#include "workflows/sync_messages.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using shardwire::fuzz::Check;
  const std::span<const std::byte> payload(reinterpret_cast<const std::byte*>(data), size);
  const auto message = shardwire::workflows::Decode(payload);
  if (!message.has_value()) return 0;
  Check(message->kind == shardwire::workflows::MessageKind::kReady || message->kind == shardwire::workflows::MessageKind::kDone ||
            message->kind == shardwire::workflows::MessageKind::kBlockAmax ||
            message->kind == shardwire::workflows::MessageKind::kMissed ||
            message->kind == shardwire::workflows::MessageKind::kAddend ||
            message->kind == shardwire::workflows::MessageKind::kRoundDone ||
            message->kind == shardwire::workflows::MessageKind::kRelayPlan ||
            message->kind == shardwire::workflows::MessageKind::kRelayed ||
            message->kind == shardwire::workflows::MessageKind::kWithdrawn ||
            message->kind == shardwire::workflows::MessageKind::kSlotsOpen,
        "sync_messages_fuzzer", "accepted kind is one the protocol defines");
  const std::vector<std::byte> again = shardwire::workflows::Encode(*message);
  Check(std::vector<std::byte>(payload.begin(), payload.end()) == again, "sync_messages_fuzzer",
        "accepted payload re-encodes to the same bytes");
  return 0;
}
