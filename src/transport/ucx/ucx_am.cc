// The UCX backend's receiving side: active-message handlers for notifications
// (eager or rendezvous, delivered to BackendEvents::OnMessage), WRITEs as
// messages (placed where BackendEvents::Locate says, after checking the
// destination lies inside a registered region), fences and their
// acknowledgements. Handlers run inside ucp_worker_progress with the lane's
// mutex held (ucx_backend.h).
#include <cstring>

#include <spdlog/spdlog.h>

#include "transport/ucx/ucx_backend.h"

namespace shardwire::transport::ucx {

void UcxBackend::OnRndvRecvDone(void* request, ucs_status_t status, std::size_t /*length*/, void* user_data) {
  auto* r = static_cast<RndvRecv*>(user_data);
  r->done = true;
  r->status = status;
  ucp_request_free(request);
}

void UcxBackend::OnAmWriteReceived(void* request, ucs_status_t status, std::size_t /*length*/, void* user_data) {
  auto* lane = static_cast<Lane*>(user_data);
  --lane->am_receiving;
  if (status != UCS_OK)
    spdlog::warn("shardwire agent: receiving an active-message write failed: {}", ucs_status_string(status));
  ucp_request_free(request);
}

ucs_status_t UcxBackend::OnNotification(void* arg, const void* /*header*/, std::size_t /*header_length*/, void* data,
                                        std::size_t length, const ucp_am_recv_param_t* param) {
  auto* lane = static_cast<Lane*>(arg);
  if ((param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0) {
    RndvRecv& r = lane->rndv_recvs.emplace_back();
    r.buffer.resize(length);
    ucp_request_param_t p{};
    p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
    p.cb.recv_am = &UcxBackend::OnRndvRecvDone;
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
  lane->backend->events_->OnMessage(lane->index, static_cast<const std::byte*>(data), length);
  return UCS_OK;
}

ucs_status_t UcxBackend::OnAmWrite(void* arg, const void* header, std::size_t header_length, void* data,
                                   std::size_t length, const ucp_am_recv_param_t* param) {
  auto* lane = static_cast<Lane*>(arg);
  UcxBackend& b = *lane->backend;
  const bool rndv = (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0;
  std::byte* dest = nullptr;
  if (header_length == sizeof(RemotePlace)) {
    RemotePlace h;
    std::memcpy(&h, header, sizeof(h));
    dest = b.events_->Locate(h, length);
  }
  if (dest == nullptr) {
    spdlog::warn("shardwire agent {}: rejected an active-message write of {} bytes outside every region",
                 b.options_.name, length);
    return rndv ? UCS_ERR_INVALID_PARAM : UCS_OK;
  }
  if (!rndv) {
    if (length > 0) std::memcpy(dest, data, length);
    return UCS_OK;
  }
  ucp_request_param_t p{};
  p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  p.cb.recv_am = &UcxBackend::OnAmWriteReceived;
  p.user_data = lane;
  ucs_status_ptr_t req = ucp_am_recv_data_nbx(lane->worker.get(), data, dest, length, &p);
  if (UCS_PTR_IS_ERR(req)) {
    spdlog::warn("shardwire agent {}: ucp_am_recv_data_nbx failed: {}", b.options_.name,
                 ucs_status_string(UCS_PTR_STATUS(req)));
  } else if (req != nullptr) {
    ++lane->am_receiving;
  }
  return UCS_INPROGRESS;
}

ucs_status_t UcxBackend::OnFence(void* arg, const void* header, std::size_t header_length, void* /*data*/,
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

ucs_status_t UcxBackend::OnFenceAck(void* arg, const void* header, std::size_t header_length, void* /*data*/,
                                    std::size_t /*length*/, const ucp_am_recv_param_t* /*param*/) {
  auto* lane = static_cast<Lane*>(arg);
  if (header_length != sizeof(std::uint64_t)) return UCS_OK;
  std::uint64_t token = 0;
  std::memcpy(&token, header, sizeof(token));
  auto it = lane->fences.find(token);
  if (it != lane->fences.end()) {
    Completion* visible = it->second;
    lane->fences.erase(it);
    visible->done(visible, nullptr);
  }
  return UCS_OK;
}

bool UcxBackend::ServeAcks(Lane& lane) {
  if (lane.acks.empty() || lane.am_receiving > 0) return false;
  while (!lane.acks.empty()) {
    PendingAck a = lane.acks.front();
    lane.acks.pop_front();
    PendingSend& s = lane.sends.emplace_back();
    s.header = a.token;
    ucp_request_param_t p{};
    p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
    p.flags = UCP_AM_SEND_FLAG_EAGER;
    p.cb.send = &UcxBackend::OnMessageSent;
    p.user_data = &s;
    ucs_status_ptr_t req = ucp_am_send_nbx(a.reply_ep, kFenceAckAmId, &s.header, sizeof(s.header), nullptr, 0, &p);
    if (req == nullptr || UCS_PTR_IS_ERR(req)) s.done = true;
  }
  return true;
}

void UcxBackend::CollectReceives(Lane& lane) {
  lane.sends.remove_if([](const PendingSend& s) { return s.done; });
  for (auto it = lane.rndv_recvs.begin(); it != lane.rndv_recvs.end();) {
    if (!it->done) {
      ++it;
      continue;
    }
    if (it->status == UCS_OK) {
      events_->OnMessage(lane.index, it->buffer.data(), it->buffer.size());
    } else {
      spdlog::warn("shardwire agent {}: receiving a notification failed: {}", options_.name,
                   ucs_status_string(it->status));
    }
    it = lane.rndv_recvs.erase(it);
  }
}

}  // namespace shardwire::transport::ucx
