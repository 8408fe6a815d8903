#include "control/coordinator_codec.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <set>

namespace shardwire::control {

std::string ToString(std::span<const std::byte> bytes) {
  return std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

std::vector<std::byte> ToBytes(const std::string& s) {
  const auto* b = reinterpret_cast<const std::byte*>(s.data());
  return std::vector<std::byte>(b, b + s.size());
}

namespace {

Status TooLong(std::string_view field, std::size_t size, std::size_t limit) {
  return InvalidArgument(fmt::format("{} is {} bytes; the limit is {} bytes", field, size, limit));
}

Status ValidateAttributes(const google::protobuf::RepeatedPtrField<v1::Attribute>& attrs, std::string_view owner) {
  if (static_cast<std::size_t>(attrs.size()) > kMaxAttributes) {
    return InvalidArgument(fmt::format("{} has {} attributes; the limit is {}", owner, attrs.size(), kMaxAttributes));
  }
  std::set<std::string_view> keys;
  for (const auto& a : attrs) {
    SW_RETURN_IF_ERROR(ValidateName(a.key(), fmt::format("{} attribute key", owner)));
    if (a.value().size() > kMaxAttributeValueBytes) {
      return TooLong(fmt::format("{} attribute '{}'", owner, a.key()), a.value().size(), kMaxAttributeValueBytes);
    }
    if (!keys.insert(a.key()).second) {
      return InvalidArgument(fmt::format("{} has attribute '{}' twice", owner, a.key()));
    }
  }
  return Status::Ok();
}

Status ValidateRank(int rank, int world_size, std::string_view owner) {
  if (world_size < 1) return InvalidArgument(fmt::format("{}: world_size must be >= 1, got {}", owner, world_size));
  if (rank < 0 || rank >= world_size) {
    return InvalidArgument(fmt::format("{}: rank {} is outside [0, {})", owner, rank, world_size));
  }
  return Status::Ok();
}

std::map<std::string, std::string> AttributesFromProto(const google::protobuf::RepeatedPtrField<v1::Attribute>& in) {
  std::map<std::string, std::string> out;
  for (const auto& a : in) out[a.key()] = a.value();
  return out;
}

void AttributesToProto(const std::map<std::string, std::string>& in,
                       google::protobuf::RepeatedPtrField<v1::Attribute>* out) {
  for (const auto& [k, v] : in) {
    auto* a = out->Add();
    a->set_key(k);
    a->set_value(v);
  }
}

}  // namespace

Status ValidateName(const std::string& value, std::string_view field, bool allow_empty) {
  if (value.empty() && !allow_empty) return InvalidArgument(fmt::format("{} is empty", field));
  if (value.size() > kMaxNameBytes) return TooLong(field, value.size(), kMaxNameBytes);
  return Status::Ok();
}

Status ValidateSourceId(const std::string& value) {
  if (value.empty()) return InvalidArgument("source_id is empty");
  if (value.size() > kMaxSourceIdBytes) return TooLong("source_id", value.size(), kMaxSourceIdBytes);
  return Status::Ok();
}

Status ValidateProposedSourceId(const std::string& value) {
  const bool ok = value.size() == 20 && value.starts_with("src-") &&
                  std::all_of(value.begin() + 4, value.end(),
                              [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
  if (!ok) {
    return InvalidArgument(fmt::format("a proposed source_id must be \"src-\" and 16 lowercase hex digits, got \"{}\"",
                                       value.substr(0, kMaxSourceIdBytes)));
  }
  return Status::Ok();
}

Status ValidateReason(const std::string& value) {
  if (value.size() > kMaxReasonBytes) return TooLong("stale reason", value.size(), kMaxReasonBytes);
  return Status::Ok();
}

Status ValidateWait(double wait_s) {
  if (!std::isfinite(wait_s) || wait_s < 0) {
    return InvalidArgument(fmt::format("wait_s must be finite and >= 0 seconds, got {}", wait_s));
  }
  return Status::Ok();
}

Status ValidateSource(const v1::Source& s) {
  SW_RETURN_IF_ERROR(ValidateName(s.model_identity(), "source model_identity"));
  SW_RETURN_IF_ERROR(ValidateName(s.instance_id(), "source instance_id"));
  const std::string owner = fmt::format("source of instance '{}' rank {}", s.instance_id(), s.rank());
  SW_RETURN_IF_ERROR(ValidateRank(s.rank(), s.world_size(), owner));
  if (s.layout().size() > kMaxLayoutBytes) return TooLong(owner + " layout", s.layout().size(), kMaxLayoutBytes);
  SW_RETURN_IF_ERROR(ValidateName(s.layout_fingerprint(), owner + " layout_fingerprint", /*allow_empty=*/true));
  if (s.metadata().size() > kMaxMetadataBytes) {
    return TooLong(owner + " metadata", s.metadata().size(), kMaxMetadataBytes);
  }
  return ValidateAttributes(s.attributes(), owner);
}

Status ValidateMember(const v1::JobMember& m) {
  SW_RETURN_IF_ERROR(ValidateName(m.member_id(), "member_id"));
  const std::string owner = fmt::format("member '{}'", m.member_id());
  if (m.role() != v1::JOB_ROLE_PUBLISHER && m.role() != v1::JOB_ROLE_SUBSCRIBER) {
    return InvalidArgument(
        fmt::format("{}: role must be PUBLISHER or SUBSCRIBER, got {}", owner, static_cast<int>(m.role())));
  }
  SW_RETURN_IF_ERROR(ValidateName(m.group(), owner + " group", /*allow_empty=*/true));
  SW_RETURN_IF_ERROR(ValidateRank(m.rank(), m.world_size(), owner));
  if (m.layout().size() > kMaxLayoutBytes) return TooLong(owner + " layout", m.layout().size(), kMaxLayoutBytes);
  if (m.metadata().size() > kMaxMetadataBytes) {
    return TooLong(owner + " metadata", m.metadata().size(), kMaxMetadataBytes);
  }
  return ValidateAttributes(m.attributes(), owner);
}

void ToProto(const SourceRecord& in, v1::Source* out) {
  out->set_source_id(in.source_id);
  out->set_model_identity(in.model_identity);
  out->set_instance_id(in.instance_id);
  out->set_rank(in.rank);
  out->set_world_size(in.world_size);
  out->set_layout(in.layout);
  out->set_layout_fingerprint(in.layout_fingerprint);
  out->set_metadata(ToString(in.metadata));
  AttributesToProto(in.attributes, out->mutable_attributes());
  out->set_state(in.state == SourceState::kStale ? v1::SOURCE_STATE_STALE : v1::SOURCE_STATE_READY);
  out->set_stale_reason(in.stale_reason);
  out->set_registered_unix_ms(in.registered_unix_ms);
  out->set_last_heartbeat_unix_ms(in.last_heartbeat_unix_ms);
}

Result<SourceRecord> FromProto(const v1::Source& in) {
  SourceRecord r;
  r.source_id = in.source_id();
  r.model_identity = in.model_identity();
  r.instance_id = in.instance_id();
  r.rank = in.rank();
  r.world_size = in.world_size();
  r.layout = in.layout();
  r.layout_fingerprint = in.layout_fingerprint();
  r.metadata = ToBytes(in.metadata());
  r.attributes = AttributesFromProto(in.attributes());
  switch (in.state()) {
    case v1::SOURCE_STATE_UNSPECIFIED:  // Register input: the coordinator sets it
    case v1::SOURCE_STATE_READY:
      r.state = SourceState::kReady;
      break;
    case v1::SOURCE_STATE_STALE:
      r.state = SourceState::kStale;
      break;
    default:
      return CorruptData(fmt::format("source '{}' has unknown state {}", in.source_id(), static_cast<int>(in.state())));
  }
  r.stale_reason = in.stale_reason();
  r.registered_unix_ms = in.registered_unix_ms();
  r.last_heartbeat_unix_ms = in.last_heartbeat_unix_ms();
  return r;
}

void ToProto(const JobMember& in, v1::JobMember* out) {
  out->set_member_id(in.member_id);
  out->set_role(in.role == JobRole::kPublisher ? v1::JOB_ROLE_PUBLISHER : v1::JOB_ROLE_SUBSCRIBER);
  out->set_group(in.group);
  out->set_rank(in.rank);
  out->set_world_size(in.world_size);
  out->set_layout(in.layout);
  out->set_metadata(ToString(in.metadata));
  AttributesToProto(in.attributes, out->mutable_attributes());
  out->set_committed_version(in.committed_version);
  out->set_joined_unix_ms(in.joined_unix_ms);
  out->set_last_heartbeat_unix_ms(in.last_heartbeat_unix_ms);
}

Result<JobMember> FromProto(const v1::JobMember& in) {
  JobMember m;
  m.member_id = in.member_id();
  switch (in.role()) {
    case v1::JOB_ROLE_PUBLISHER:
      m.role = JobRole::kPublisher;
      break;
    case v1::JOB_ROLE_SUBSCRIBER:
      m.role = JobRole::kSubscriber;
      break;
    default:
      return CorruptData(fmt::format("member '{}' has unknown role {}", in.member_id(), static_cast<int>(in.role())));
  }
  m.group = in.group();
  m.rank = in.rank();
  m.world_size = in.world_size();
  m.layout = in.layout();
  m.metadata = ToBytes(in.metadata());
  m.attributes = AttributesFromProto(in.attributes());
  m.committed_version = in.committed_version();
  m.joined_unix_ms = in.joined_unix_ms();
  m.last_heartbeat_unix_ms = in.last_heartbeat_unix_ms();
  return m;
}

void ToProto(const JobView& in, v1::JobView* out) {
  out->set_job(in.job);
  out->set_membership_epoch(in.membership_epoch);
  for (const auto& m : in.members) ToProto(m, out->add_members());
}

Result<JobView> FromProto(const v1::JobView& in) {
  JobView v;
  v.job = in.job();
  v.membership_epoch = in.membership_epoch();
  v.members.reserve(in.members_size());
  for (const auto& m : in.members()) {
    SW_ASSIGN_OR_RETURN(JobMember member, FromProto(m));
    v.members.push_back(std::move(member));
  }
  return v;
}

void ToProto(const SourceHeartbeat& in, v1::HeartbeatSourceResponse* out) {
  out->set_state(ToProto(std::optional<SourceState>(in.state)));
  out->set_stale_reason(in.stale_reason);
}

Result<SourceHeartbeat> FromProto(const v1::HeartbeatSourceResponse& in) {
  SourceHeartbeat h;
  // Unspecified: a coordinator older than the field. A state this client does not know (a
  // newer coordinator's) reads as READY too: the heartbeat did renew the lease, and failing
  // the call would make the source report failed heartbeats for ever.
  h.state = in.state() == v1::SOURCE_STATE_STALE ? SourceState::kStale : SourceState::kReady;
  if (Status s = ValidateReason(in.stale_reason()); !s.ok()) {
    return CorruptData(fmt::format("heartbeat reply: {}", s.message()));
  }
  h.stale_reason = in.stale_reason();
  return h;
}

v1::SourceState ToProto(std::optional<SourceState> state) {
  if (!state.has_value()) return v1::SOURCE_STATE_UNSPECIFIED;
  return *state == SourceState::kStale ? v1::SOURCE_STATE_STALE : v1::SOURCE_STATE_READY;
}

Result<std::optional<SourceState>> FromProto(v1::SourceState state) {
  switch (state) {
    case v1::SOURCE_STATE_UNSPECIFIED:
      return std::optional<SourceState>();
    case v1::SOURCE_STATE_READY:
      return std::optional<SourceState>(SourceState::kReady);
    case v1::SOURCE_STATE_STALE:
      return std::optional<SourceState>(SourceState::kStale);
    default:
      return InvalidArgument(fmt::format("unknown source state {} in the filter", static_cast<int>(state)));
  }
}

}  // namespace shardwire::control
