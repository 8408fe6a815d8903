// The UCX backend's connections: its section of the metadata blob (a data and
// a message worker address per lane), endpoints per peer and lane (lane i
// connects to the peer's lane i mod its lane count, a data and a message
// endpoint; error handling mode from AgentOptions::ucx),
// rkeys and the mappings UCX offers for them (ucp_rkey_ptr), endpoint errors
// (PEER mode) and closing.
#include <cstring>

#include <fmt/format.h>

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

}  // namespace

namespace {

void PutAddresses(std::vector<std::byte>& out, const std::vector<std::vector<std::byte>>& addresses) {
  PutU32(out, static_cast<std::uint32_t>(addresses.size()));
  for (const auto& a : addresses) {
    PutU32(out, static_cast<std::uint32_t>(a.size()));
    out.insert(out.end(), a.begin(), a.end());
  }
}

// Reads a u32 count (at most kMaxLanes) and that many (u32 length, address)
// records; `what` names the list in errors.
Result<std::vector<std::vector<std::byte>>> GetAddresses(std::span<const std::byte> section, std::size_t& at,
                                                         std::string_view what) {
  std::uint32_t count = 0;
  if (!GetU32(section, at, count)) return CorruptData(fmt::format("UCX section: truncated (no {} count)", what));
  if (count > kMaxLanes)
    return CorruptData(fmt::format("UCX section: too many lanes ({} {}, at most {})", count, what, kMaxLanes));
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
  PutAddresses(out, section.data_workers);
  PutAddresses(out, section.message_workers);
  return out;
}

Result<UcxSection> DecodeUcxSection(std::span<const std::byte> section) {
  std::size_t at = 0;
  UcxSection out;
  SW_ASSIGN_OR_RETURN(out.data_workers, GetAddresses(section, at, "data worker"));
  if (out.data_workers.empty()) return CorruptData("UCX section: no worker address");
  SW_ASSIGN_OR_RETURN(out.message_workers, GetAddresses(section, at, "message worker"));
  if (at != section.size()) return CorruptData("UCX section: trailing bytes");
  return out;
}

std::vector<std::byte> UcxBackend::ConnectionInfo() {
  UcxSection section;
  for (const auto& l : lanes_) {
    const auto* a = static_cast<const std::byte*>(l->address.data());
    section.data_workers.emplace_back(a, a + l->address.size());
    if (l->message_worker) {
      const auto* m = static_cast<const std::byte*>(l->message_address.data());
      section.message_workers.emplace_back(m, m + l->message_address.size());
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
  p->section = std::move(section);
  p->regions.assign(request.regions.begin(), request.regions.end());
  p->region_keys.assign(request.region_keys.begin(), request.region_keys.end());
  p->links.resize(lanes_.size());
  return static_cast<void*>(p.get());
}

namespace {

// ucp_ep_create on `worker` to `address`, with the peer's error handling mode
// (PEER: `on_error(arg)` reports the failure).
Result<ucp_ep_h> CreateEndpoint(ucp_worker_h worker, const std::vector<std::byte>& address, bool peer_mode,
                                ucp_err_handler_cb_t on_error, void* arg) {
  ucp_ep_params_t ep{};
  ep.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
  ep.address = reinterpret_cast<const ucp_address_t*>(address.data());
  if (!peer_mode) {
    ep.err_mode = UCP_ERR_HANDLING_MODE_NONE;
  } else {
    ep.field_mask |= UCP_EP_PARAM_FIELD_ERR_HANDLER;
    ep.err_mode = UCP_ERR_HANDLING_MODE_PEER;
    ep.err_handler.cb = on_error;
    ep.err_handler.arg = arg;
  }
  ucp_ep_h raw_ep = nullptr;
  ucs_status_t st = ucp_ep_create(worker, &ep, &raw_ep);
  if (st != UCS_OK) return UcsError("ucp_ep_create", st);
  return raw_ep;
}

}  // namespace

Status UcxBackend::ConnectLane(std::uint32_t lane, void* peer, BackendLink& out) {
  auto* p = static_cast<Peer*>(peer);
  Lane& l = *lanes_[lane];
  Link& link = p->links[lane];
  link.peer = p;
  out.link = &link;
  const auto& data_workers = p->section.data_workers;
  SW_ASSIGN_OR_RETURN(ucp_ep_h raw_ep, CreateEndpoint(l.worker.get(), data_workers[lane % data_workers.size()],
                                                      p->peer_mode, &UcxBackend::OnEpError, p));
  link.ep = Endpoint(l.worker.get(), raw_ep);
  // Messages travel on the message workers when both ends have them.
  const auto& message_workers = p->section.message_workers;
  if (l.message_worker && !message_workers.empty()) {
    SW_ASSIGN_OR_RETURN(ucp_ep_h raw_message_ep,
                        CreateEndpoint(l.message_worker.get(), message_workers[lane % message_workers.size()],
                                       p->peer_mode, &UcxBackend::OnEpError, p));
    link.message_ep = Endpoint(l.message_worker.get(), raw_message_ep);
    if (lane == 0) p->message_transports = EndpointTransports(raw_message_ep);
    // Start the wire-up now (the first message then pays none) and learn when it
    // finished: CloseLink must not close the endpoint before (see there).
    ucp_request_param_t fp{};
    fp.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
    fp.cb.send = &UcxBackend::OnMessageEpWired;
    fp.user_data = &link;
    ucs_status_ptr_t req = ucp_ep_flush_nbx(raw_message_ep, &fp);
    if (req == nullptr) link.message_wired = true;
    if (UCS_PTR_IS_ERR(req)) return UcsError("ucp_ep_flush_nbx(message endpoint)", UCS_PTR_STATUS(req));
  }
  ucs_status_t st = UCS_OK;
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
  return Status::Ok();
}

BackendPeer UcxBackend::DescribePeer(void* peer) {
  const auto* p = static_cast<const Peer*>(peer);
  BackendPeer d;
  d.remote_lanes = static_cast<std::uint32_t>(p->section.data_workers.size());
  d.transports = p->transports;
  d.message_transports = p->message_transports;
  d.prefers_messages = OnlyTcp(p->transports);
  d.reports_failures = p->peer_mode;
  d.kernel_copy_ok = !p->transports.empty() && !OnlyTcp(p->transports);
  return d;
}

void UcxBackend::OnMessageEpWired(void* request, ucs_status_t status, void* user_data) {
  // An error means the endpoint failed, and UCX purged what was pending on it.
  static_cast<Link*>(user_data)->message_wired = true;
  (void)status;
  ucp_request_free(request);
}

bool UcxBackend::CloseLink(std::uint32_t /*lane*/, void* link, bool force, double timeout_s) {
  if (link == nullptr) return true;
  Link& lk = *static_cast<Link*>(link);
  const bool data_closed = lk.ep.Close(force, timeout_s);
  // UCX 1.13.1 aborts (an assertion in ucp_request_send_state_ff, reached from
  // uct_tcp_ep_pending_purge) when a TCP endpoint is closed while its wire-up
  // request is still queued: the peer stalled (SIGSTOP) before it answered. Such
  // an endpoint is left to the worker; StopLanes flushes the worker before
  // destroying it. Nothing is sent on a closed link, so the endpoint stays idle.
  if (lk.message_ep && !lk.message_wired) {
    lk.message_ep.Abandon();
    return data_closed;
  }
  const bool message_closed = lk.message_ep.Close(force, timeout_s);
  return data_closed && message_closed;
}

void UcxBackend::ReleaseKeys(std::uint32_t /*lane*/, void* link) {
  if (link != nullptr) static_cast<Link*>(link)->rkeys.clear();
}

void UcxBackend::OnEpError(void* arg, ucp_ep_h /*ep*/, ucs_status_t status) {
  auto* p = static_cast<Peer*>(arg);
  if (p->backend->events_ != nullptr)
    p->backend->events_->OnPeerFailed(p->token, fmt::format("UCX endpoint error: {}", ucs_status_string(status)));
}

}  // namespace shardwire::transport::ucx
