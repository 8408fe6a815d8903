// The agent's active-message protocol: the message ids its lanes register with
// UCX, the header of an active-message write, and the notification codec (the
// bytes of a notification on the wire). The handlers that receive these
// messages are in am_handlers.cc; the senders in lane_jobs.cc and agent.cc.
//
// Messages (all sent with ucp_am_send_nbx):
//   kNotifyAmId:   no header; data = u8 format (kNotifyFormat), u16 LE sender-name
//                  length, the name, the payload (EncodeNotification).
//   kWriteAmId:    header = AmWriteHeader; data = the bytes to place.
//   kFenceAmId:    header = u64 token (sent with UCP_AM_SEND_FLAG_REPLY).
//   kFenceAckAmId: header = u64 token (the reply to a fence).
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

/// Active-message id of a notification (a posted transfer's, or SendMessage's).
inline constexpr unsigned kNotifyAmId = 17;
/// Active-message id of an active-message write (WritePath::kActiveMessage).
inline constexpr unsigned kWriteAmId = 18;
/// Active-message id of a fence: acknowledged once every write before it is placed.
inline constexpr unsigned kFenceAmId = 19;
/// Active-message id of a fence's acknowledgement.
inline constexpr unsigned kFenceAckAmId = 20;
/// First byte of an encoded notification (its format version).
inline constexpr std::uint8_t kNotifyFormat = 1;
/// Bytes of an encoded notification before the sender's name: format, u16 name length.
inline constexpr std::size_t kNotifyPrefix = 3;

/// Header of an active-message write: where, in the target's registered memory,
/// the message's data goes. `offset` is in bytes from the region's first byte.
/// Sent as raw bytes (host byte order: both ends run the same build).
struct AmWriteHeader {
  std::uint32_t region = 0;
  std::uint32_t reserved = 0;
  std::uint64_t offset = 0;
};
static_assert(sizeof(AmWriteHeader) == 16);

/// Encodes a notification from agent `sender` (at most 65535 bytes, checked by
/// Agent::Create) carrying `payload`: kNotifyPrefix + sender.size() +
/// payload.size() bytes. No errors.
std::vector<std::byte> EncodeNotification(const std::string& sender, std::span<const std::byte> payload);

/// Decodes `length` bytes at `data` written by EncodeNotification. Returns
/// nullopt when they are not one (shorter than the prefix, another format
/// byte, or a name length beyond the data); never reads past `length`.
std::optional<Notification> DecodeNotification(const std::byte* data, std::size_t length);

}  // namespace shardwire::transport
