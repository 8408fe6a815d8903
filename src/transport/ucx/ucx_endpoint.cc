// The UCX backend's connections: its section of the metadata blob (a worker
// address and a local message channel address per lane), endpoints per peer and
// lane (lane i connects to the peer's lane i mod its lane count; error handling
// mode from AgentOptions::ucx) and, to a same-host peer, a local message link,
// rkeys and the mappings UCX offers for them (ucp_rkey_ptr), endpoint errors
// (PEER mode), hangups of the message links (a peer that closed its channel) and
// closing.
#include <sys/epoll.h>

#include <cerrno>
#include <cstring>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "transport/ucx/endpoint_info.h"
#include "transport/ucx/ucx_backend.h"

namespace shardwire::transport::ucx {

namespace {

void PutU32(std::vector<std::byte>& out, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<std::byte>((v >> (8 * i)) & 0xFF));
}

bool GetU32(std::span<const std::byte> in, std::size_t& at, std::uint32_t& v) {
  if (in.size() - at < 4) return false;
  v = 0;
  for (int i = 0; i < 4; ++i) v |= static_cast<std::uint32_t>(in[at + i]) << (8 * i);
  at += 4;
  return true;
}

void PutAddresses(std::vector<std::byte>& out, const std::vector<std::vector<std::byte>>& addresses) {
  PutU32(out, static_cast<std::uint32_t>(addresses.size()));
  for (const auto& a : addresses) {
    PutU32(out, static_cast<std::uint32_t>(a.size()));
    out.insert(out.end(), a.begin(), a.end());
  }
}

// Reads a u32 count (at most kMaxLanes) and that many (u32 length, bytes)
// records; `what` names the list in errors.
Result<std::vector<std::vector<std::byte>>> GetAddresses(std::span<const std::byte> section, std::size_t& at,
                                                         std::string_view what) {
  std::uint32_t count = 0;
  if (!GetU32(section, at, count)) return CorruptData(fmt::format("UCX section: truncated (no {} count)", what));
  if (count > kMaxLanes)
    return CorruptData(fmt::format("UCX section: too many lanes ({} {}s, at most {})", count, what, kMaxLanes));
  std::vector<std::vector<std::byte>> out(count);
  for (std::uint32_t i = 0; i < count; ++i) {
    std::uint32_t length = 0;
    if (!GetU32(section, at, length) || section.size() - at < length)
      return CorruptData(fmt::format("UCX section: {} address {} overruns the section", what, i));
    out[i].assign(section.begin() + static_cast<std::ptrdiff_t>(at),
                  section.begin() + static_cast<std::ptrdiff_t>(at + length));
    at += length;
  }
  return out;
}

}  // namespace

std::vector<std::byte> EncodeUcxSection(const UcxSection& section) {
  std::vector<std::byte> out;
  PutAddresses(out, section.workers);
  PutAddresses(out, section.message_channels);
  return out;
}

Result<UcxSection> DecodeUcxSection(std::span<const std::byte> section) {
  std::size_t at = 0;
  UcxSection out;
  SW_ASSIGN_OR_RETURN(out.workers, GetAddresses(section, at, "worker"));
  if (out.workers.empty()) return CorruptData("UCX section: no worker address");
  SW_ASSIGN_OR_RETURN(out.message_channels, GetAddresses(section, at, "message channel"));
  if (at != section.size()) return CorruptData("UCX section: trailing bytes");
  return out;
}

std::vector<std::byte> UcxBackend::ConnectionInfo() {
  UcxSection section;
  for (const auto& l : lanes_) {
    const auto* a = static_cast<const std::byte*>(l->address.data());
    section.workers.emplace_back(a, a + l->address.size());
    if (l->messages) {
      const auto channel = l->messages->Address();
      section.message_channels.emplace_back(channel.begin(), channel.end());
    }
  }
  return EncodeUcxSection(section);
}

Result<void*> UcxBackend::OpenPeer(const ConnectRequest& request) {
  SW_ASSIGN_OR_RETURN(auto section, DecodeUcxSection(request.connection));
  auto& p = peers_.emplace_back(std::make_unique<Peer>());
  p->backend = this;
  p->token = request.peer_token;
  p->name = std::string(request.peer_name);
  p->peer_mode = !(options_.ucx.failure_detection == PeerFailureDetection::kAuto && request.same_host);
  p->same_host = request.same_host;
  p->section = std::move(section);
  p->regions.assign(request.regions.begin(), request.regions.end());
  p->region_keys.assign(request.region_keys.begin(), request.region_keys.end());
  p->links.resize(lanes_.size());
  return static_cast<void*>(p.get());
}

Status UcxBackend::ConnectLane(std::uint32_t lane, void* peer, BackendLink& out) {
  auto* p = static_cast<Peer*>(peer);
  Lane& l = *lanes_[lane];
  Link& link = p->links[lane];
  link.peer = p;
  out.link = &link;
  ucp_ep_params_t ep{};
  ep.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
  ep.address = reinterpret_cast<const ucp_address_t*>(p->section.workers[lane % p->section.workers.size()].data());
  if (!p->peer_mode) {
    ep.err_mode = UCP_ERR_HANDLING_MODE_NONE;
  } else {
    ep.field_mask |= UCP_EP_PARAM_FIELD_ERR_HANDLER;
    ep.err_mode = UCP_ERR_HANDLING_MODE_PEER;
    ep.err_handler.cb = &UcxBackend::OnEpError;
    ep.err_handler.arg = p;
  }
  ucp_ep_h raw_ep = nullptr;
  ucs_status_t st = ucp_ep_create(l.worker.get(), &ep, &raw_ep);
  if (st != UCS_OK) return UcsError("ucp_ep_create", st);
  link.ep = Endpoint(l.worker.get(), raw_ep);
  link.rkeys.reserve(p->regions.size());
  for (std::size_t i = 0; i < p->regions.size(); ++i) {
    const RegionRecord& r = p->regions[i];
    ucp_rkey_h raw_rkey = nullptr;
    st = ucp_ep_rkey_unpack(raw_ep, p->region_keys[i].data(), &raw_rkey);
    if (st != UCS_OK) return UcsError(fmt::format("ucp_ep_rkey_unpack of region {}", r.id), st);
    link.rkeys.emplace_back(raw_rkey);
    void* mapped = nullptr;
    if (ucp_rkey_ptr(raw_rkey, r.base, &mapped) == UCS_OK && mapped != nullptr) {
      out.mapped_delta.emplace_back(reinterpret_cast<std::intptr_t>(mapped) - static_cast<std::intptr_t>(r.base));
    } else {
      out.mapped_delta.emplace_back(std::nullopt);
    }
  }
  if (lane == 0) p->transports = EndpointTransports(raw_ep);
  // Messages to a same-host peer go on its lane's local channel when both ends
  // have channels and the peer's is reachable (same network namespace).
  const auto& channels = p->section.message_channels;
  if (l.messages && p->same_host && !channels.empty()) {
    auto messages = LocalMessageLink::Connect(channels[lane % channels.size()]);
    if (messages.ok()) {
      SetMessageLink(l, link, std::move(*messages));
      if (lane == 0) p->message_transports = {"unix/seqpacket"};
    } else {
      spdlog::debug("shardwire agent {}: messages to {} on lane {} travel on the UCX endpoint: {}", options_.name,
                    p->name, lane, messages.status().ToString());
    }
  }
  return Status::Ok();
}

BackendPeer UcxBackend::DescribePeer(void* peer) {
  const auto* p = static_cast<const Peer*>(peer);
  BackendPeer d;
  d.remote_lanes = static_cast<std::uint32_t>(p->section.workers.size());
  d.transports = p->transports;
  d.message_transports = p->message_transports;
  d.prefers_messages = OnlyTcp(p->transports);
  d.reports_failures = p->peer_mode;
  d.kernel_copy_ok = !p->transports.empty() && !OnlyTcp(p->transports);
  return d;
}

bool UcxBackend::CloseLink(std::uint32_t lane, void* link, bool force, double timeout_s) {
  if (link == nullptr) return true;
  Link& lk = *static_cast<Link*>(link);
  if (lk.messages) {
    std::erase(lanes_[lane]->backlog, &lk);
    SetMessageLink(*lanes_[lane], lk, nullptr);  // queued messages fail (their completions run now)
  }
  // Fence acknowledgements owed through this endpoint (UCX may hand it as the fence's reply
  // endpoint) are dropped with it: ServeAcks would otherwise send on a closed endpoint. The
  // peer's fence then waits for its own timeout, as for any peer that forgot it.
  if (ucp_ep_h closing = lk.ep.get(); closing != nullptr) {
    std::erase_if(lanes_[lane]->acks, [closing](const PendingAck& a) { return a.reply_ep == closing; });
  }
  return lk.ep.Close(force, timeout_s);
}

void UcxBackend::ReleaseKeys(std::uint32_t /*lane*/, void* link) {
  if (link != nullptr) static_cast<Link*>(link)->rkeys.clear();
}

void UcxBackend::SetMessageLink(Lane& lane, Link& link, std::unique_ptr<LocalMessageLink> messages) {
  // Unwatched before it closes: a forked child holding a copy of the socket would keep
  // a closed fd's registration (and its pointer to `link`) alive in the epoll set.
  if (link.messages && link.messages->Socket() >= 0 && lane.hangups)
    (void)::epoll_ctl(lane.hangups.get(), EPOLL_CTL_DEL, link.messages->Socket(), nullptr);
  link.messages = std::move(messages);
  if (!link.messages || !lane.hangups || lane.index != 0) return;
  epoll_event ev{};
  ev.events = EPOLLRDHUP;  // EPOLLHUP and EPOLLERR are always reported; no data comes back on a link
  ev.data.ptr = &link;
  if (::epoll_ctl(lane.hangups.get(), EPOLL_CTL_ADD, link.messages->Socket(), &ev) != 0)
    spdlog::debug("shardwire agent {}: not watching the message link to {} for hangups: epoll_ctl: {}", options_.name,
                  link.peer != nullptr ? link.peer->name : "?", std::strerror(errno));
}

unsigned UcxBackend::DrainChannel(Lane& lane) {
  if (!lane.messages) return 0;
  unsigned delivered = 0;
  for (int i = 0; i < kDrainPolls; ++i) {
    const unsigned m = lane.messages->Poll(
        [&](const std::byte* data, std::size_t length) { events_->OnMessage(lane.index, data, length); });
    if (m == 0) break;
    delivered += m;
  }
  return delivered;
}

unsigned UcxBackend::DrainMessages(std::uint32_t lane) {
  Lane& l = *lanes_[lane];
  unsigned n = DrainChannel(l);
  // Active messages (other hosts' notifications) that UCX holds: progress until a round finds
  // none, then hand over the rendezvous receives that completed.
  for (int i = 0; i < kDrainPolls; ++i) {
    const unsigned m = ucp_worker_progress(l.worker.get());
    if (m == 0) break;
    n += m;
  }
  CollectReceives(l);
  return n;
}

unsigned UcxBackend::ReportHangups(Lane& lane) {
  if (!lane.hangups) return 0;
  epoll_event events[16];
  const int n = ::epoll_wait(lane.hangups.get(), events, 16, 0);
  // Messages first: a peer that sent DONE and exited hung up after the DONE reached this
  // process's socket buffers, which the last Poll may have missed.
  if (n > 0) DrainChannel(lane);
  for (int i = 0; i < n; ++i) {
    Link& link = *static_cast<Link*>(events[i].data.ptr);
    if (link.messages && link.messages->Socket() >= 0)
      (void)::epoll_ctl(lane.hangups.get(), EPOLL_CTL_DEL, link.messages->Socket(), nullptr);
    if (link.peer != nullptr && events_ != nullptr)
      events_->OnPeerFailed(
          link.peer->token,
          fmt::format("its message channel on lane {} closed (agent destroyed or process gone)", lane.index));
  }
  return n > 0 ? static_cast<unsigned>(n) : 0;
}

void UcxBackend::OnEpError(void* arg, ucp_ep_h /*ep*/, ucs_status_t status) {
  auto* p = static_cast<Peer*>(arg);
  if (p->backend->events_ != nullptr)
    p->backend->events_->OnPeerFailed(p->token, fmt::format("UCX endpoint error: {}", ucs_status_string(status)));
}

}  // namespace shardwire::transport::ucx
