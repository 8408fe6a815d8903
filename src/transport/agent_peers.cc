// The agent's peers: import a metadata blob (the backend connects one link per
// lane; the peer's transports, write path and kernel-copy handle), invalidate a
// peer, describe it, and map one of its regions (MappedRegion).
#include <algorithm>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include "transport/agent_impl.h"
#include "transport/peer_liveness.h"

namespace shardwire {

using transport::ProcessGone;
using transport::WritesMayKernelCopy;

Result<std::string> Agent::ImportMetadata(std::span<const std::byte> blob, std::string_view expected_name) {
  SW_ASSIGN_OR_RETURN(transport::AgentMetadata m, transport::DecodeAgentMetadata(blob));
  if (m.name != expected_name) {
    return InvalidArgument(fmt::format("ImportMetadata: the blob names agent '{}', expected '{}'; nothing imported",
                                       m.name, expected_name));
  }
  return ImportMetadata(blob);
}

Result<std::string> Agent::ImportMetadata(std::span<const std::byte> blob) {
  SW_ASSIGN_OR_RETURN(transport::AgentMetadata m, transport::DecodeAgentMetadata(blob));
  Impl& im = *impl_;
  const std::string ctx = "ImportMetadata of peer " + m.name;
  const std::string_view backend_name = im.backend->name();
  const transport::BackendSection* section = nullptr;
  for (const transport::BackendSection& s : m.sections)
    if (s.backend == backend_name) section = &s;
  if (section == nullptr) {
    std::vector<std::string> offered;
    for (const transport::BackendSection& s : m.sections) offered.push_back(s.backend);
    return Unsupported(fmt::format(
        "ImportMetadata: peer {} exported a blob for backend(s) [{}]; this agent uses backend {}", m.name,
        fmt::join(offered, ", "), backend_name));
  }
  auto existing = im.peers.find(m.name);
  if (existing != im.peers.end() && !existing->second->failed.load()) {
    std::lock_guard<std::mutex> g(im.mu);
    for (TransferCore* t : im.active)
      if (t->peer_serial == existing->second->serial && t->state == TransferState::kRunning)
        return InvalidArgument(fmt::format(
            "ImportMetadata: peer {} still has transfers in flight; Wait for them or InvalidatePeer first", m.name));
  }

  // A same-host peer whose process is gone (a blob left behind by a killed process) is refused
  // before any endpoint is created: UCX would try to attach the dead process's shared memory.
  const bool same_host = !m.process.host.empty() && m.process.host == im.self.host && m.process.pid != 0;
  if (same_host) {
    if (const std::string gone = ProcessGone(m.process); !gone.empty()) {
      return PeerDisconnected(fmt::format("{}: its process is gone ({})", ctx, gone));
    }
  }

  auto peer = std::make_shared<Impl::PeerState>();
  peer->name = m.name;
  peer->serial = im.next_peer_serial++;
  peer->process = m.process;
  peer->same_host = same_host;
  for (const transport::RegionRecord& r : m.regions) {
    peer->region_index[r.id] = static_cast<std::uint32_t>(peer->regions.size());
    peer->regions.push_back({r.id, r.base, r.length});
  }
  peer->lanes.resize(im.lanes.size());
  transport::ConnectRequest request;
  request.peer_name = m.name;
  request.connection = section->connection;
  request.regions = m.regions;
  request.region_keys = section->region_keys;
  request.process = &m.process;
  request.same_host = peer->same_host;
  request.peer_token = peer->serial;
  auto opened_peer = im.backend->OpenPeer(request);
  if (!opened_peer.ok()) return opened_peer.status().WithContext(ctx);
  peer->handle = *opened_peer;

  Status failure;
  for (auto& lp : im.lanes) {
    Impl::Lane& lane = *lp;
    std::lock_guard<std::mutex> g(lane.mu);
    LaneEp& lep = peer->lanes[lane.index];
    failure = im.backend->ConnectLane(lane.index, peer->handle, lep);
    if (!failure.ok()) {
      failure = failure.WithContext(ctx);
      break;
    }
    lep.open = true;
    if (lane.index == 0)
      for (const auto& d : lep.mapped_delta) peer->region_mapped.push_back(d.has_value());
  }
  if (!failure.ok()) {
    for (auto& lp : im.lanes) {
      std::lock_guard<std::mutex> g(lp->mu);
      LaneEp& lep = peer->lanes[lp->index];
      lep.mapped_delta.clear();
      im.backend->ReleaseKeys(lp->index, lep.link);
      lep.open = false;
      im.backend->CloseLink(lp->index, lep.link, /*force=*/true, transport::kForceCloseTimeoutS);
    }
    return failure;
  }
  transport::BackendPeer described;
  {
    std::lock_guard<std::mutex> g(im.lanes[0]->mu);
    described = im.backend->DescribePeer(peer->handle);
  }
  peer->remote_lanes = described.remote_lanes;
  peer->transports = std::move(described.transports);
  peer->message_transports = std::move(described.message_transports);
  peer->ucx_error_handling = described.reports_failures;
  peer->liveness_checked = peer->same_host && !described.reports_failures;
  switch (im.options.write_path) {
    case WritePath::kAuto:
    case WritePath::kKernelCopy:  // UCX's path for what is not a kernel copy, as kAuto
      peer->write_path = described.prefers_messages ? WritePath::kActiveMessage : WritePath::kPut;
      break;
    case WritePath::kPut:
    case WritePath::kActiveMessage:
      peer->write_path = im.options.write_path;
      break;
  }
  if ((im.options.read_path != ReadPath::kMapped || WritesMayKernelCopy(im.options.write_path)) && peer->same_host &&
      described.kernel_copy_ok) {
    std::uint64_t probe = 0;
    for (const RemoteRegion& r : peer->regions) {
      if (r.length > 0) {
        probe = r.base;
        break;
      }
    }
    auto opened = transport::PeerProcess::Open(static_cast<pid_t>(m.process.pid), probe);
    // Opened first, then the start time compared: the pidfd names the process
    // whose identity the blob carries, even if the pid is reused later.
    if (opened.ok() && ProcessGone(m.process).empty()) {
      peer->kernel_copy = std::move(*opened);
    } else {
      spdlog::debug("shardwire agent {}: no kernel copy from peer {}: {}", im.options.name, m.name,
                    opened.ok() ? ProcessGone(m.process) : opened.status().ToString());
    }
  }
  spdlog::debug("shardwire agent {}: peer {} via [{}], write path {}, kernel copy {}", im.options.name, m.name,
                fmt::join(peer->transports, ", "), WritePathName(peer->write_path), peer->kernel_copy.valid());

  if (existing != im.peers.end()) {
    std::shared_ptr<Impl::PeerState> old = existing->second;
    existing->second = peer;
    im.TeardownPeer(old, /*force=*/old->failed.load(), PeerDisconnected("peer " + m.name + " was re-imported"));
  } else {
    im.peers.emplace(m.name, peer);
  }
  {
    std::lock_guard<std::mutex> g(im.mu);
    im.peers_by_serial[peer->serial] = peer;
  }
  for (auto& lp : im.lanes) {
    std::lock_guard<std::mutex> g(lp->mu);
    lp->peers.push_back(peer);
  }
  return m.name;
}

Status Agent::InvalidatePeer(const std::string& peer) {
  Impl& im = *impl_;
  auto it = im.peers.find(peer);
  if (it == im.peers.end()) return NotFound(fmt::format("InvalidatePeer: peer {} is not imported", peer));
  std::shared_ptr<Impl::PeerState> p = it->second;
  im.peers.erase(it);
  im.TeardownPeer(p, /*force=*/true, PeerDisconnected("peer " + peer + " was invalidated"));
  return Status::Ok();
}

Result<PeerInfo> Agent::DescribePeer(const std::string& peer) const {
  auto it = impl_->peers.find(peer);
  if (it == impl_->peers.end()) return NotFound(fmt::format("DescribePeer: peer {} is not imported", peer));
  const Impl::PeerState& p = *it->second;
  PeerInfo info;
  info.name = p.name;
  info.remote_lanes = p.remote_lanes;
  info.same_host = p.same_host;
  info.ucx_error_handling = p.ucx_error_handling;
  info.write_path = p.write_path;
  info.kernel_copy = p.kernel_copy.valid() && impl_->options.read_path != ReadPath::kMapped;
  info.kernel_copy_writes = p.kernel_copy.valid() && WritesMayKernelCopy(impl_->options.write_path);
  info.transports = p.transports;
  info.message_transports = p.message_transports;
  {
    std::lock_guard<std::mutex> g(impl_->lanes[0]->mu);
    const LaneEp& lep = p.lanes[0];
    for (std::size_t i = 0; i < lep.mapped_delta.size() && i < p.regions.size(); ++i)
      if (lep.mapped_delta[i]) info.mapped_regions.push_back(p.regions[i].id);
  }
  std::sort(info.mapped_regions.begin(), info.mapped_regions.end());
  return info;
}

Result<MappedRegion> Agent::MapPeerRegion(const std::string& peer, RegionId region) {
  Impl& im = *impl_;
  auto it = im.peers.find(peer);
  if (it == im.peers.end()) return NotFound(fmt::format("MapPeerRegion: peer {} is not imported", peer));
  Impl::PeerState& p = *it->second;
  if (p.failed.load()) {
    std::lock_guard<std::mutex> g(im.mu);
    return p.failure.WithContext("MapPeerRegion");
  }
  auto rit = p.region_index.find(region);
  if (rit == p.region_index.end())
    return NotFound(fmt::format("MapPeerRegion: peer {} exported no region {}", peer, region));
  const std::uint32_t index = rit->second;
  std::byte* base = nullptr;
  {
    std::lock_guard<std::mutex> g(im.lanes[0]->mu);
    const LaneEp& lep = p.lanes[0];
    if (!lep.open) return PeerDisconnected(fmt::format("MapPeerRegion: the connection to peer {} is closed", peer));
    if (index >= lep.mapped_delta.size() || !lep.mapped_delta[index]) {
      return Unsupported(fmt::format(
          "MapPeerRegion: region {} of peer {} cannot be mapped into this process (transports [{}]; a mapping "
          "needs a same-host arena in shared memory)",
          region, peer, fmt::join(p.transports, ", ")));
    }
    base = reinterpret_cast<std::byte*>(static_cast<std::intptr_t>(p.regions[index].base) + *lep.mapped_delta[index]);
  }
  std::lock_guard<std::mutex> g(p.leases_mu);
  if (p.leases.size() < p.regions.size()) p.leases.resize(p.regions.size());
  std::shared_ptr<MappedRegion::Lease>& lease = p.leases[index];
  if (!lease) {
    lease = std::make_shared<MappedRegion::Lease>();
    lease->peer = peer;
    lease->region = region;
    lease->base = base;
    lease->length = p.regions[index].length;
    lease->prefaulted_pages = &im.counters.prefaulted_pages;
    lease->prefault_ns = &im.counters.prefault_ns;
  }
  return MappedRegion(lease);
}

std::vector<std::string> Agent::FailedPeers() const {
  std::vector<std::string> out;
  for (const auto& [name, p] : impl_->peers)
    if (p->failed.load()) out.push_back(name);
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace shardwire
