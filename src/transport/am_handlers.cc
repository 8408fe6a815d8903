// The receiving side of the agent's active-message protocol (am_protocol.h):
// notifications (eager or rendezvous), active-message writes placed into
// registered regions, fences and their acknowledgements, plus the send
// callbacks of messages that belong to no job. Handlers run inside
// ucp_worker_progress with their lane's mu held (agent_impl.h).
#include <cstring>

#include <spdlog/spdlog.h>

#include "transport/agent_impl.h"

namespace shardwire {

using transport::AmWriteHeader;
using transport::DecodeNotification;
using transport::kFenceAckAmId;

void Agent::Impl::OnMessageSent(void* request, ucs_status_t status, void* user_data) {
  auto* s = static_cast<PendingSend*>(user_data);
  s->done = true;
  if (status != UCS_OK) spdlog::debug("shardwire agent: message send failed: {}", ucs_status_string(status));
  ucp_request_free(request);
}

void Agent::Impl::OnRndvRecvDone(void* request, ucs_status_t status, std::size_t /*length*/, void* user_data) {
  auto* r = static_cast<RndvRecv*>(user_data);
  r->done = true;
  r->status = status;
  ucp_request_free(request);
}

void Agent::Impl::OnAmWriteReceived(void* request, ucs_status_t status, std::size_t /*length*/, void* user_data) {
  auto* lane = static_cast<Lane*>(user_data);
  --lane->am_receiving;
  if (status != UCS_OK)
    spdlog::warn("shardwire agent: receiving an active-message write failed: {}", ucs_status_string(status));
  ucp_request_free(request);
}

ucs_status_t Agent::Impl::OnNotification(void* arg, const void* /*header*/, std::size_t /*header_length*/, void* data,
                                   std::size_t length, const ucp_am_recv_param_t* param) {
  auto* lane = static_cast<Lane*>(arg);
  if ((param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0) {
    RndvRecv& r = lane->rndv_recvs.emplace_back();
    r.buffer.resize(length);
    ucp_request_param_t p{};
    p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
    p.cb.recv_am = &Impl::OnRndvRecvDone;
    p.user_data = &r;
    ucs_status_ptr_t req = ucp_am_recv_data_nbx(lane->worker.get(), data, r.buffer.data(), length, &p);
    if (req == nullptr) {
      r.done = true;
    } else if (UCS_PTR_IS_ERR(req)) {
      r.done = true;
      r.status = UCS_PTR_STATUS(req);
    }
    return UCS_INPROGRESS;
  }
  lane->impl->EnqueueNotification(static_cast<const std::byte*>(data), length);
  return UCS_OK;
}

ucs_status_t Agent::Impl::OnAmWrite(void* arg, const void* header, std::size_t header_length, void* data,
                              std::size_t length, const ucp_am_recv_param_t* param) {
  auto* lane = static_cast<Lane*>(arg);
  Impl& im = *lane->impl;
  const bool rndv = (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0;
  std::byte* dest = nullptr;
  if (header_length == sizeof(AmWriteHeader)) {
    AmWriteHeader h;
    std::memcpy(&h, header, sizeof(h));
    std::lock_guard<std::mutex> g(im.regions_mu);
    auto it = im.regions.find(h.region);
    if (it != im.regions.end() && h.offset <= it->second.length && length <= it->second.length - h.offset)
      dest = it->second.base + h.offset;
  }
  if (dest == nullptr) {
    spdlog::warn("shardwire agent {}: rejected an active-message write of {} bytes outside every region",
                 im.options.name, length);
    return rndv ? UCS_ERR_INVALID_PARAM : UCS_OK;
  }
  if (!rndv) {
    if (length > 0) std::memcpy(dest, data, length);
    return UCS_OK;
  }
  ucp_request_param_t p{};
  p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  p.cb.recv_am = &Impl::OnAmWriteReceived;
  p.user_data = lane;
  ucs_status_ptr_t req = ucp_am_recv_data_nbx(lane->worker.get(), data, dest, length, &p);
  if (UCS_PTR_IS_ERR(req)) {
    spdlog::warn("shardwire agent {}: ucp_am_recv_data_nbx failed: {}", im.options.name,
                 ucs_status_string(UCS_PTR_STATUS(req)));
  } else if (req != nullptr) {
    ++lane->am_receiving;
  }
  return UCS_INPROGRESS;
}

ucs_status_t Agent::Impl::OnFence(void* arg, const void* header, std::size_t header_length, void* /*data*/,
                            std::size_t /*length*/, const ucp_am_recv_param_t* param) {
  auto* lane = static_cast<Lane*>(arg);
  if (header_length != sizeof(std::uint64_t) || (param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) == 0)
    return UCS_OK;
  PendingAck a;
  std::memcpy(&a.token, header, sizeof(a.token));
  a.reply_ep = param->reply_ep;
  lane->acks.push_back(a);
  return UCS_OK;
}

ucs_status_t Agent::Impl::OnFenceAck(void* arg, const void* header, std::size_t header_length, void* /*data*/,
                               std::size_t /*length*/, const ucp_am_recv_param_t* /*param*/) {
  auto* lane = static_cast<Lane*>(arg);
  if (header_length != sizeof(std::uint64_t)) return UCS_OK;
  std::uint64_t token = 0;
  std::memcpy(&token, header, sizeof(token));
  auto it = lane->fences.find(token);
  if (it != lane->fences.end()) {
    it->second->fence_acked = true;
    lane->fences.erase(it);
  }
  return UCS_OK;
}

void Agent::Impl::EnqueueNotification(const std::byte* data, std::size_t length) {
  auto n = DecodeNotification(data, length);
  if (!n) {
    spdlog::warn("shardwire agent {}: dropped a malformed notification of {} bytes", options.name, length);
    return;
  }
  std::lock_guard<std::mutex> g(mu);
  notifications.push_back(std::move(*n));
  cv.notify_all();
}

bool Agent::Impl::ServeAcks(Lane& lane) {
  if (lane.acks.empty() || lane.am_receiving > 0) return false;
  while (!lane.acks.empty()) {
    PendingAck a = lane.acks.front();
    lane.acks.pop_front();
    PendingSend& s = lane.sends.emplace_back();
    s.header = a.token;
    ucp_request_param_t p{};
    p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
    p.flags = UCP_AM_SEND_FLAG_EAGER;
    p.cb.send = &Impl::OnMessageSent;
    p.user_data = &s;
    ucs_status_ptr_t req = ucp_am_send_nbx(a.reply_ep, kFenceAckAmId, &s.header, sizeof(s.header), nullptr, 0, &p);
    if (req == nullptr || UCS_PTR_IS_ERR(req)) s.done = true;
  }
  return true;
}

void Agent::Impl::CollectReceives(Lane& lane) {
  lane.sends.remove_if([](const PendingSend& s) { return s.done; });
  for (auto it = lane.rndv_recvs.begin(); it != lane.rndv_recvs.end();) {
    if (!it->done) {
      ++it;
      continue;
    }
    if (it->status == UCS_OK) {
      EnqueueNotification(it->buffer.data(), it->buffer.size());
    } else {
      spdlog::warn("shardwire agent {}: receiving a notification failed: {}", options.name,
                   ucs_status_string(it->status));
    }
    it = lane.rndv_recvs.erase(it);
  }
}

}  // namespace shardwire
