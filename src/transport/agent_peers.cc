// The agent's peers: import a metadata blob (one endpoint and the rkeys per
// lane, the peer's transports, write path and kernel-copy handle), invalidate
// a peer, describe it, and map one of its regions (MappedRegion).
#include <algorithm>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include "transport/agent_impl.h"
#include "transport/endpoint_info.h"
#include "transport/peer_liveness.h"

namespace shardwire {

using transport::EndpointTransports;
using transport::OnlyTcp;
using transport::ProcessGone;
using transport::WritesMayKernelCopy;

Result<std::string> Agent::ImportMetadata(std::span<const std::byte> blob) {
  SW_ASSIGN_OR_RETURN(AgentMetadata m, DecodeAgentMetadata(blob));
  Impl& im = *impl_;
  const std::string ctx = "ImportMetadata of peer " + m.name;
  auto existing = im.peers.find(m.name);
  if (existing != im.peers.end() && !existing->second->failed.load()) {
    std::lock_guard<std::mutex> g(im.mu);
    for (TransferCore* t : im.active)
      if (t->peer_serial == existing->second->serial && t->state == TransferState::kRunning)
        return InvalidArgument(fmt::format(
            "ImportMetadata: peer {} still has transfers in flight; Wait for them or InvalidatePeer first", m.name));
  }

  auto peer = std::make_shared<Impl::PeerState>();
  peer->name = m.name;
  peer->serial = im.next_peer_serial++;
  peer->process = m.process;
  peer->remote_lanes = static_cast<std::uint32_t>(m.worker_addresses.size());
  peer->same_host = !m.process.host.empty() && m.process.host == im.self.host && m.process.pid != 0;
  peer->liveness_checked = im.options.failure_detection == PeerFailureDetection::kAuto && peer->same_host;
  peer->ucx_error_handling = !peer->liveness_checked;
  for (const RegionRecord& r : m.regions) {
    peer->region_index[r.id] = static_cast<std::uint32_t>(peer->regions.size());
    peer->regions.push_back({r.id, r.base, r.length});
  }
  peer->lanes.resize(im.lanes.size());
  auto& ep_ctx = im.ep_contexts.emplace_back(std::make_unique<Impl::EpContext>());
  ep_ctx->impl = &im;
  ep_ctx->peer_serial = peer->serial;

  Status failure;
  for (auto& lp : im.lanes) {
    Impl::Lane& lane = *lp;
    std::lock_guard<std::mutex> g(lane.mu);
    LaneEp& lep = peer->lanes[lane.index];
    ucp_ep_params_t ep{};
    ep.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
    ep.address =
        reinterpret_cast<const ucp_address_t*>(m.worker_addresses[lane.index % m.worker_addresses.size()].data());
    if (peer->liveness_checked) {
      ep.err_mode = UCP_ERR_HANDLING_MODE_NONE;
    } else {
      ep.field_mask |= UCP_EP_PARAM_FIELD_ERR_HANDLER;
      ep.err_mode = UCP_ERR_HANDLING_MODE_PEER;
      ep.err_handler.cb = &Impl::OnEpError;
      ep.err_handler.arg = ep_ctx.get();
    }
    ucp_ep_h raw_ep = nullptr;
    ucs_status_t st = ucp_ep_create(lane.worker.get(), &ep, &raw_ep);
    if (st != UCS_OK) {
      failure = UcsError("ucp_ep_create", st).WithContext(ctx);
      break;
    }
    lep.ep = Endpoint(lane.worker.get(), raw_ep);
    lep.rkeys.reserve(m.regions.size());
    for (const RegionRecord& r : m.regions) {
      ucp_rkey_h raw_rkey = nullptr;
      st = ucp_ep_rkey_unpack(raw_ep, r.packed_rkey.data(), &raw_rkey);
      if (st != UCS_OK) {
        failure = UcsError(fmt::format("ucp_ep_rkey_unpack of region {}", r.id), st).WithContext(ctx);
        break;
      }
      lep.rkeys.emplace_back(raw_rkey);
      void* mapped = nullptr;
      if (ucp_rkey_ptr(raw_rkey, r.base, &mapped) == UCS_OK && mapped != nullptr) {
        lep.mapped_delta.emplace_back(reinterpret_cast<std::intptr_t>(mapped) - static_cast<std::intptr_t>(r.base));
      } else {
        lep.mapped_delta.emplace_back(std::nullopt);
      }
      if (lane.index == 0) peer->region_mapped.push_back(lep.mapped_delta.back().has_value());
    }
    if (!failure.ok()) break;
    if (lane.index == 0) peer->transports = EndpointTransports(raw_ep);
  }
  if (!failure.ok()) {
    for (auto& lp : im.lanes) {
      std::lock_guard<std::mutex> g(lp->mu);
      peer->lanes[lp->index].mapped_delta.clear();
      peer->lanes[lp->index].rkeys.clear();
      peer->lanes[lp->index].ep.Close(/*force=*/true, Endpoint::kDefaultCloseTimeoutS);
    }
    return failure;
  }
  switch (im.options.write_path) {
    case WritePath::kAuto:
    case WritePath::kKernelCopy:  // UCX's path for what is not a kernel copy, as kAuto
      peer->write_path = OnlyTcp(peer->transports) ? WritePath::kActiveMessage : WritePath::kPut;
      break;
    case WritePath::kPut:
    case WritePath::kActiveMessage:
      peer->write_path = im.options.write_path;
      break;
  }
  if ((im.options.read_path != ReadPath::kMapped || WritesMayKernelCopy(im.options.write_path)) && peer->same_host && !peer->transports.empty() &&
      !OnlyTcp(peer->transports)) {
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
    if (!lep.ep) return PeerDisconnected(fmt::format("MapPeerRegion: the connection to peer {} is closed", peer));
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
