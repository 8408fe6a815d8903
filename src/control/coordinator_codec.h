// Internal to the control layer: the coordinator's request limits, their
// validation, and conversion between the public structs (coordinator.h) and the
// generated protobuf messages (proto/shardwire/v1/). Used by both the service
// (which validates every request) and the client (which refuses a request it
// knows the server would refuse, without a round trip).
//
// Thread-safety: pure functions.
#pragma once

#include <cstddef>
#include <string>

#include "shardwire/coordinator.h"
#include "shardwire/status.h"
#include "shardwire/v1/jobs.pb.h"
#include "shardwire/v1/rendezvous.pb.h"
#include "shardwire/v1/sources.pb.h"

namespace shardwire::control {

/// Limits (bytes unless said otherwise) of coordinator.h and the .proto files.
inline constexpr std::size_t kMaxNameBytes = 256;  ///< identities, ids, job and group names
inline constexpr std::size_t kMaxSourceIdBytes = 64;
inline constexpr std::size_t kMaxLayoutBytes = 4 * 1024;
inline constexpr std::size_t kMaxMetadataBytes = 1024 * 1024;
inline constexpr std::size_t kMaxAttributes = 64;  ///< entries
inline constexpr std::size_t kMaxAttributeValueBytes = 4 * 1024;
inline constexpr std::size_t kMaxReasonBytes = 4 * 1024;
inline constexpr std::size_t kMaxListedSources = 100'000;  ///< entries in one ListSources answer
/// Longest server-side wait of one Get RPC (seconds); clients wait longer in slices.
inline constexpr double kMaxServerWaitS = 30;
/// Largest request the server accepts (a 64 MiB rendezvous value plus its key
/// and framing); larger ones get RESOURCE_EXHAUSTED from gRPC itself.
inline constexpr int kMaxRequestBytes = 64 * 1024 * 1024 + 64 * 1024;
/// Largest answer a client accepts (a ListSources of many sources).
inline constexpr int kMaxResponseBytes = 1024 * 1024 * 1024;

// Validation: kInvalidArgument naming the field and the limit.
Status ValidateName(const std::string& value, std::string_view field, bool allow_empty = false);
Status ValidateSourceId(const std::string& value);
/// A source_id a client proposes in Register: "src-" and 16 lowercase hex digits (the form
/// the coordinator assigns). Errors: kInvalidArgument naming the value.
Status ValidateProposedSourceId(const std::string& value);
Status ValidateReason(const std::string& value);
Status ValidateWait(double wait_s);
Status ValidateSource(const v1::Source& source);
Status ValidateMember(const v1::JobMember& member);

// Conversion. To-proto never fails; from-proto fails with kInvalidArgument for
// duplicate attribute keys and kCorruptData for unknown enum values.
void ToProto(const SourceRecord& in, v1::Source* out);
Result<SourceRecord> FromProto(const v1::Source& in);
void ToProto(const JobMember& in, v1::JobMember* out);
Result<JobMember> FromProto(const v1::JobMember& in);
void ToProto(const JobView& in, v1::JobView* out);
Result<JobView> FromProto(const v1::JobView& in);
void ToProto(const SourceHeartbeat& in, v1::HeartbeatSourceResponse* out);
/// SOURCE_STATE_UNSPECIFIED (the empty reply of a coordinator older than the fields) and a
/// state this client does not know read as READY; kCorruptData for a reason longer than a
/// mark's (4 KiB).
Result<SourceHeartbeat> FromProto(const v1::HeartbeatSourceResponse& in);
v1::SourceState ToProto(std::optional<SourceState> state);
/// nullopt for SOURCE_STATE_UNSPECIFIED; kInvalidArgument for unknown values.
Result<std::optional<SourceState>> FromProto(v1::SourceState state);

std::string ToString(std::span<const std::byte> bytes);
std::vector<std::byte> ToBytes(const std::string& s);

}  // namespace shardwire::control
