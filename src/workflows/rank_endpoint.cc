#include "workflows/rank_endpoint.h"

#include <algorithm>
#include <charconv>
#include <chrono>

#include <fmt/format.h>

#include "workflows/sync_messages.h"

namespace shardwire::sync {

Result<RankEndpoint> OpenRankEndpoint(Rendezvous& rendezvous, const std::string& job, const std::string& role, int rank,
                                      std::uint64_t buffer_bytes, std::span<std::byte> caller_buffer) {
  RankEndpoint endpoint;
  const std::string key = MetadataKey(job, role, rank);
  SW_ASSIGN_OR_RETURN(endpoint.agent, Agent::Create(AgentOptions{.name = key}));
  if (!caller_buffer.empty()) {
    if (caller_buffer.size() < buffer_bytes) {
      return InvalidArgument(fmt::format("{}: the caller's buffer has {} bytes, its layout needs {}", key,
                                         caller_buffer.size(), buffer_bytes));
    }
    SW_ASSIGN_OR_RETURN(endpoint.region, endpoint.agent->RegisterMemory(caller_buffer.data(), caller_buffer.size()));
    endpoint.weights = caller_buffer.first(buffer_bytes);
  } else {
    // A rank that holds nothing still registers a minimal region so that its peers'
    // bookkeeping has no special case.
    const std::size_t bytes = std::max<std::uint64_t>(buffer_bytes, 64);
    SW_ASSIGN_OR_RETURN(endpoint.region, endpoint.agent->AllocateArena(bytes));
    endpoint.weights = endpoint.agent->RegionBytes(endpoint.region).first(buffer_bytes);
  }
  SW_ASSIGN_OR_RETURN(const std::vector<std::byte> blob, endpoint.agent->ExportMetadata());
  SW_RETURN_IF_ERROR(PutString(rendezvous, key + "/region", std::to_string(endpoint.region)));
  SW_RETURN_IF_ERROR(rendezvous.Put(key + "/metadata", blob));
  return endpoint;
}

Result<PeerRank> ImportPeerRank(Rendezvous& rendezvous, Agent& agent, const std::string& job, const std::string& role,
                                int rank, double timeout_s, const std::function<Status()>& interrupt, double poll_s) {
  const std::string key = MetadataKey(job, role, rank);
  std::vector<std::byte> blob;
  if (!interrupt) {
    SW_ASSIGN_OR_RETURN(blob, rendezvous.Get(key + "/metadata", timeout_s));
  } else {
    // Wait in slices so the caller's interrupt hook runs between them.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
    while (true) {
      const double left = std::chrono::duration<double>(deadline - std::chrono::steady_clock::now()).count();
      auto got = rendezvous.Get(key + "/metadata", std::clamp(left, 0.0, poll_s));
      if (got.ok()) {
        blob = std::move(*got);
        break;
      }
      if (got.status().code() != ErrorCode::kTimedOut || left <= poll_s) {
        return got.status().code() == ErrorCode::kTimedOut
                   ? TimedOut(fmt::format("rendezvous key {}/metadata did not appear within {} s", key, timeout_s))
                   : got.status();
      }
      SW_RETURN_IF_ERROR(interrupt());  // only after a slice in which the key did not appear
    }
  }
  SW_ASSIGN_OR_RETURN(const std::string region_text, GetString(rendezvous, key + "/region", timeout_s));
  PeerRank peer;
  const auto [end, ec] = std::from_chars(region_text.data(), region_text.data() + region_text.size(), peer.region);
  if (ec != std::errc() || end != region_text.data() + region_text.size()) {
    return CorruptData(fmt::format("rendezvous key {}/region holds \"{}\", not a region id", key, region_text));
  }
  auto imported = agent.ImportMetadata(blob);
  if (!imported.ok()) return imported.status().WithContext("importing " + key);
  peer.name = *imported;
  if (peer.name != key) {
    return CorruptData(fmt::format("rendezvous key {} holds the metadata of agent {}", key, peer.name));
  }
  return peer;
}

}  // namespace shardwire::sync
