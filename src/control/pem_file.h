// Reading the PEM files of TLS (a coordinator's certificate chain and private key, a client's
// root certificate): bounded, regular files only (core/regular_file.h), and checked to hold a
// PEM block of the expected kind, so a wrong file is named at once rather than reported by gRPC
// as a listen failure or a closed socket.
//
// Thread-safety: pure functions (they read files).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "shardwire/status.h"

namespace shardwire::control {

/// Largest TLS certificate or key file read, bytes (a long chain is tens of KiB).
inline constexpr std::uint64_t kMaxPemFileBytes = std::uint64_t{1} << 20;

/// The whole file at `path`. Errors (kInvalidArgument naming `what`, e.g. "TLS certificate", and
/// the path): not a readable regular file of at most kMaxPemFileBytes; empty.
Result<std::string> ReadPemFile(const std::string& path, std::string_view what);

/// OK when `pem` holds a block "-----BEGIN ...<marker>-----" (marker "CERTIFICATE" or
/// "PRIVATE KEY"; RFC 7468 labels). Else kInvalidArgument naming `what` and `path`.
Status CheckPemKind(const std::string& pem, const std::string& path, std::string_view what, std::string_view marker);

}  // namespace shardwire::control
