#include "control/bearer_token.h"

#include <fmt/format.h>

#include <cstdlib>

namespace shardwire::control {

Status CheckBearerToken(std::string_view token, std::string_view where) {
  if (token.size() > kMaxBearerTokenBytes) {
    return InvalidArgument(fmt::format(
        "the bearer token from {} is {} bytes, more than the {} a call's metadata can carry (gRPC's 8 KiB limit)",
        where, token.size(), kMaxBearerTokenBytes));
  }
  for (std::size_t i = 0; i < token.size(); ++i) {
    const auto c = static_cast<unsigned char>(token[i]);
    if (c < 0x21 || c > 0x7e) {
      return InvalidArgument(fmt::format(
          "the bearer token from {} holds byte 0x{:02x} at position {} of {}; a token is visible ASCII only "
          "(0x21-0x7e: no spaces, line breaks or other control characters)",
          where, c, i, token.size()));
    }
  }
  return Status::Ok();
}

std::string TrimTokenText(std::string_view text) {
  constexpr std::string_view kSpace = " \t\r\n";
  const auto first = text.find_first_not_of(kSpace);
  if (first == std::string_view::npos) return {};
  const auto last = text.find_last_not_of(kSpace);
  return std::string(text.substr(first, last - first + 1));
}

std::string TokenFromEnvironment() {
  const char* env = std::getenv("SHARDWIRE_TOKEN");
  return env != nullptr ? TrimTokenText(env) : std::string();
}

}  // namespace shardwire::control
