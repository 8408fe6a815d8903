// The coordinator's shared bearer token: what a token may hold, and where a process finds it.
//
// The token travels as the gRPC metadata value "authorization: Bearer <token>"
// (coordinator.md, "Security"). gRPC refuses a metadata value with control characters by
// aborting the process, so a token is checked before any call: visible ASCII only (0x21-0x7E,
// what RFC 7230 allows in a header value without spaces; RFC 6750's b64token is a subset).
//
// Thread-safety: pure functions (TokenFromEnvironment reads the environment).
#pragma once

#include <string>
#include <string_view>

#include "shardwire/status.h"

namespace shardwire::control {

/// OK when `token` is empty (no authentication) or every byte is visible ASCII (0x21-0x7E).
/// Errors: kInvalidArgument naming `where` (e.g. "SHARDWIRE_TOKEN", "the token file 't'"), the
/// offending byte (hex) and its position; the token itself is never printed.
Status CheckBearerToken(std::string_view token, std::string_view where);

/// `text` without surrounding whitespace (spaces, tabs, CR, LF): a token file written by an
/// editor or with Windows line endings, or `export SHARDWIRE_TOKEN=$(cat file)`.
std::string TrimTokenText(std::string_view text);

/// SHARDWIRE_TOKEN, trimmed (TrimTokenText); "" when unset. Not checked: see CheckBearerToken.
std::string TokenFromEnvironment();

}  // namespace shardwire::control
