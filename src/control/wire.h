// Internal: constants of the TCP rendezvous wire protocol documented in
// include/shardwire/tcp_rendezvous.h.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

namespace shardwire::control_internal::wire {

enum Op : std::uint8_t {
  kHello = 1,
  kPut = 2,
  kGet = 3,
  kCancelGet = 4,
  kAdd = 5,
};

enum ReplyStatus : std::uint8_t {
  kOk = 0,
  kNotReady = 1,
  kInvalidArgument = 2,
  kUnsupported = 3,
};

/// op (1) + key_len (4).
inline constexpr std::size_t kRequestHeadBytes = 5;
/// status (1) + len (8).
inline constexpr std::size_t kReplyHeadBytes = 9;
/// Largest reply payload a client accepts: a value, or a short error message.
inline constexpr std::uint64_t kMaxReplyPayload = 64ull * 1024 * 1024 + 64 * 1024;

/// HELLO's value: "SWRDZV" then protocol version 0x00 0x01.
inline constexpr std::array<std::byte, 8> kHelloMagic = {
    std::byte{'S'}, std::byte{'W'}, std::byte{'R'}, std::byte{'D'},
    std::byte{'Z'}, std::byte{'V'}, std::byte{0x00}, std::byte{0x01}};

}  // namespace shardwire::control_internal::wire
