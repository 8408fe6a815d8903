// The notification codec: the bytes of a notification (a posted transfer's, or
// SendMessage's) as every backend carries them: u8 format (kNotifyFormat), u16 LE
// sender-name length, the name, the payload (EncodeNotification). The UCX
// backend sends them as active messages (src/transport/ucx/ucx_backend.h).
//
// Internal header (src/transport); not part of the public API. Thread-safety:
// the functions are pure (no state); any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "shardwire/agent.h"

namespace shardwire::transport {

/// First byte of an encoded notification (its format version).
inline constexpr std::uint8_t kNotifyFormat = 1;
/// Bytes of an encoded notification before the sender's name: format, u16 name length.
inline constexpr std::size_t kNotifyPrefix = 3;

/// Encodes a notification from agent `sender` (at most 65535 bytes, checked by
/// Agent::Create) carrying `payload`: kNotifyPrefix + sender.size() +
/// payload.size() bytes. No errors.
std::vector<std::byte> EncodeNotification(const std::string& sender, std::span<const std::byte> payload);

/// Decodes `length` bytes at `data` written by EncodeNotification. Returns
/// nullopt when they are not one (shorter than the prefix, another format
/// byte, or a name length beyond the data); never reads past `length`.
std::optional<Notification> DecodeNotification(const std::byte* data, std::size_t length);

}  // namespace shardwire::transport
