#include "workflows/rank_endpoint.h"

#include <algorithm>
#include <charconv>
#include <chrono>
#include <vector>

#include <fmt/format.h>

#include "shardwire/model_identity.h"
#include "workflows/sync_messages.h"

namespace shardwire::workflows {

namespace {

// Registers the caller's buffer in place, or allocates an arena (a rank that holds nothing
// still registers a minimal region so that its peers' bookkeeping has no special case).
Status OpenBuffer(Agent& agent, const std::string& key, std::uint64_t buffer_bytes, std::span<std::byte> caller,
                  RegionId* region, std::span<std::byte>* weights, ArenaMemory memory = ArenaMemory::kShared) {
  if (!caller.empty()) {
    if (caller.size() < buffer_bytes) {
      return InvalidArgument(
          fmt::format("{}: the caller's buffer has {} bytes, its layout needs {}", key, caller.size(), buffer_bytes));
    }
    SW_ASSIGN_OR_RETURN(*region, agent.RegisterMemory(caller.data(), caller.size()));
    *weights = caller.first(buffer_bytes);
    return Status::Ok();
  }
  const std::size_t bytes = std::max<std::uint64_t>(buffer_bytes, 64);
  SW_ASSIGN_OR_RETURN(*region, agent.AllocateArena(bytes, memory));
  *weights = agent.RegionBytes(*region).first(buffer_bytes);
  return Status::Ok();
}

Result<RegionId> ParseRegion(const std::string& key, const std::string& text) {
  RegionId region = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), region);
  if (ec != std::errc() || end != text.data() + text.size()) {
    return CorruptData(fmt::format("rendezvous key {} holds \"{}\", not a region id", key, text));
  }
  return region;
}

}  // namespace

Result<RankEndpoint> OpenRankEndpoint(Rendezvous& rendezvous, const std::string& job, const std::string& role, int rank,
                                      std::uint64_t buffer_bytes, std::span<std::byte> caller_buffer,
                                      bool double_buffered, std::span<std::byte> second_caller_buffer,
                                      std::uint64_t scratch_bytes, ArenaMemory memory, MetricsRegistry* metrics,
                                      std::uint64_t incarnation, std::uint32_t lanes) {
  RankEndpoint endpoint;
  const std::string key = MetadataKey(job, role, rank);
  SW_ASSIGN_OR_RETURN(endpoint.agent, Agent::Create(AgentOptions{.name = key, .lanes = lanes, .metrics = metrics}));
  SW_RETURN_IF_ERROR(
      OpenBuffer(*endpoint.agent, key, buffer_bytes, caller_buffer, &endpoint.region, &endpoint.weights, memory));
  if (double_buffered) {
    SW_RETURN_IF_ERROR(OpenBuffer(*endpoint.agent, key, buffer_bytes, second_caller_buffer, &endpoint.second_region,
                                  &endpoint.second_weights, memory));
  }
  if (scratch_bytes > 0) {
    SW_RETURN_IF_ERROR(
        OpenBuffer(*endpoint.agent, key, scratch_bytes, {}, &endpoint.scratch_region, &endpoint.scratch));
  }
  SW_ASSIGN_OR_RETURN(const std::vector<std::byte> blob, endpoint.agent->ExportMetadata());
  // The incarnation's own keys first, then the rank's (the newest incarnation's); within each,
  // the metadata last, so that a peer that finds it finds the region ids.
  std::vector<std::string> bases;
  if (incarnation != 0) bases.push_back(IncarnationMetadataKey(job, role, rank, incarnation));
  bases.push_back(key);
  for (const std::string& base : bases) {
    SW_RETURN_IF_ERROR(PutString(rendezvous, base + "/region", std::to_string(endpoint.region)));
    SW_RETURN_IF_ERROR(PutString(rendezvous, base + "/region1", std::to_string(endpoint.second_region)));
    SW_RETURN_IF_ERROR(PutString(rendezvous, base + "/scratch", std::to_string(endpoint.scratch_region)));
    SW_RETURN_IF_ERROR(rendezvous.Put(base + "/metadata", blob));
  }
  return endpoint;
}

std::string IncarnationMetadataKey(const std::string& job, const std::string& role, int rank,
                                   std::uint64_t incarnation) {
  const std::string key = MetadataKey(job, role, rank);
  return incarnation == 0 ? key : fmt::format("{}/incarnation-{}", key, incarnation);
}

std::string SyncPlanSignature(const Layout& trainer_layout, const Layout& engine_layout,
                              const WeightSyncOptions& options) {
  const PushConversionOptions& c = options.conversion;
  return fmt::format(
      "{} ({} -> {}; K {}{}; fp8 blocks {}x{}, scale format {}, arithmetic {}; staging {} B in {} slots{})",
      LayoutFingerprintOf({LayoutFingerprint(trainer_layout), LayoutFingerprint(engine_layout)}),
      trainer_layout.description(), engine_layout.description(), options.max_concurrency,
      options.relay_broadcasts ? ", engine-to-engine relays" : "", c.fp8.block_rows,
      c.fp8.block_cols, static_cast<int>(c.fp8.scale_format), static_cast<int>(c.fp8.arithmetic), c.staging_bytes,
      c.staging_slots, options.verify_digests ? "; with digests" : "");
}

Status PublishPlanSignature(Rendezvous& rendezvous, const std::string& job, const std::string& role, int rank,
                            const std::string& signature) {
  return PutString(rendezvous, MetadataKey(job, role, rank) + "/plan", signature);
}

Status CheckPeerPlanSignature(Rendezvous& rendezvous, const std::string& job, const std::string& role, int rank,
                              const std::string& expected, double timeout_s) {
  const std::string key = MetadataKey(job, role, rank);
  SW_ASSIGN_OR_RETURN(const std::string theirs, GetString(rendezvous, key + "/plan", timeout_s));
  if (theirs != expected) {
    return LayoutMismatch(
        fmt::format("{} {} of job {} plans for layouts {}, this rank for {}: their transfers would "
                    "not meet",
                    role, rank, job, theirs, expected));
  }
  return Status::Ok();
}

Result<PeerRank> ImportPeerRank(Rendezvous& rendezvous, Agent& agent, const std::string& job, const std::string& role,
                                int rank, double timeout_s, const std::function<Status()>& interrupt, double poll_s,
                                std::uint64_t incarnation) {
  const std::string name = MetadataKey(job, role, rank);  // the agent's name, whatever the incarnation
  const std::string key = IncarnationMetadataKey(job, role, rank, incarnation);
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
  SW_ASSIGN_OR_RETURN(const std::string second_text, GetString(rendezvous, key + "/region1", timeout_s));
  SW_ASSIGN_OR_RETURN(const std::string scratch_text, GetString(rendezvous, key + "/scratch", timeout_s));
  PeerRank peer;
  SW_ASSIGN_OR_RETURN(peer.region, ParseRegion(key + "/region", region_text));
  SW_ASSIGN_OR_RETURN(peer.second_region, ParseRegion(key + "/region1", second_text));
  SW_ASSIGN_OR_RETURN(peer.scratch_region, ParseRegion(key + "/scratch", scratch_text));
  auto imported = agent.ImportMetadata(blob);
  if (!imported.ok()) return imported.status().WithContext("importing " + key);
  peer.name = *imported;
  if (peer.name != name) {
    return CorruptData(fmt::format("rendezvous key {}/metadata holds the metadata of agent {}, not {}", key, peer.name,
                                   name));
  }
  return peer;
}

}  // namespace shardwire::workflows
