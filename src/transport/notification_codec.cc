// The notification codec (notification_codec.h).
#include "transport/notification_codec.h"

#include <cstring>

namespace shardwire::transport {

std::vector<std::byte> EncodeNotification(const std::string& sender, std::span<const std::byte> payload) {
  std::vector<std::byte> wire(kNotifyPrefix + sender.size() + payload.size());
  wire[0] = static_cast<std::byte>(kNotifyFormat);
  wire[1] = static_cast<std::byte>(sender.size() & 0xFF);
  wire[2] = static_cast<std::byte>((sender.size() >> 8) & 0xFF);
  std::memcpy(wire.data() + kNotifyPrefix, sender.data(), sender.size());
  if (!payload.empty()) std::memcpy(wire.data() + kNotifyPrefix + sender.size(), payload.data(), payload.size());
  return wire;
}

std::optional<Notification> DecodeNotification(const std::byte* data, std::size_t length) {
  if (length < kNotifyPrefix || data[0] != static_cast<std::byte>(kNotifyFormat)) return std::nullopt;
  const std::size_t name_len = static_cast<std::size_t>(data[1]) | (static_cast<std::size_t>(data[2]) << 8);
  if (name_len > length - kNotifyPrefix) return std::nullopt;
  Notification n;
  n.peer.assign(reinterpret_cast<const char*>(data + kNotifyPrefix), name_len);
  n.payload.assign(data + kNotifyPrefix + name_len, data + length);
  return n;
}

}  // namespace shardwire::transport
