// libFuzzer target for the P2P loading messages (shardwire::workflows::DecodeP2p in
// src/workflows/p2p_messages.h), which a serving source and a loader decode from any peer
// that reaches their agent.
//
// Properties checked on every input:
//   * decoding never crashes or reads outside the input (ASan, UBSan);
//   * decoding allocates in proportion to the input: every line of a HELLO_ACK takes at
//     least its 4-byte length and every digest range 16 bytes of it (a 30-byte message once
//     made 2^24 empty strings, 512 MiB);
//   * an accepted message's encoding decodes again, to a message with the same encoding.
// Fuzz links: shardwire_workflows
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "fuzz_check.h"
#include "workflows/p2p_messages.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using shardwire::fuzz::Check;
  using shardwire::workflows::DecodeP2p;
  using shardwire::workflows::EncodeP2p;
  const std::span<const std::byte> payload(reinterpret_cast<const std::byte*>(data), size);
  const auto message = DecodeP2p(payload);
  if (!message.has_value()) return 0;
  Check(message->lines.size() * 4 <= size, "p2p_messages_fuzzer", "HELLO_ACK lines bounded by the input");
  Check(message->ranges.size() * 16 <= size, "p2p_messages_fuzzer", "DIGEST ranges bounded by the input");
  Check(message->blob.size() <= size && message->text.size() <= size, "p2p_messages_fuzzer",
        "blob and text bounded by the input");
  const std::vector<std::byte> encoded = EncodeP2p(*message);
  const auto again = DecodeP2p(encoded);
  Check(again.has_value(), "p2p_messages_fuzzer", "an accepted message's encoding decodes");
  if (again.has_value()) {
    Check(EncodeP2p(*again) == encoded, "p2p_messages_fuzzer", "decode and encode agree on the encoding");
  }
  return 0;
}
