// The coordinator's shared bearer token: what a token may hold, and where a process finds it.
//
// The token travels as the gRPC metadata value "authorization: Bearer <token>"
// (coordinator.md, "Security"). gRPC refuses a metadata value with control characters by
// aborting the process, so a token is checked before any call: visible ASCII only (0x21-0x7E,
// what RFC 7230 allows in a header value without spaces; RFC 6750's b64token is a subset).
//
// Thread-safety: pure functions (TokenFromEnvironment reads the environment).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "shardwire/status.h"

namespace shardwire::control {

/// Longest token, bytes: gRPC refuses a call whose metadata exceeds 8 KiB (its default
/// GRPC_ARG_MAX_METADATA_SIZE), so a longer token could be configured but never sent.
inline constexpr std::size_t kMaxBearerTokenBytes = 4096;

/// OK when `token` is empty (no authentication) or it is at most kMaxBearerTokenBytes of visible
/// ASCII (0x21-0x7E). Errors: kInvalidArgument naming `where` (e.g. "SHARDWIRE_TOKEN", "the
/// token file 't'") and the length, or the offending byte (hex) and its position; the token
/// itself is never printed.
Status CheckBearerToken(std::string_view token, std::string_view where);

/// `text` without surrounding whitespace (spaces, tabs, CR, LF): a token file written by an
/// editor or with Windows line endings, or `export SHARDWIRE_TOKEN=$(cat file)`.
std::string TrimTokenText(std::string_view text);

/// SHARDWIRE_TOKEN, trimmed (TrimTokenText); "" when unset. Not checked: see CheckBearerToken.
std::string TokenFromEnvironment();

}  // namespace shardwire::control
