// The UCX backend's sending side: one op becomes one request per row
// (ucp_put_nbx, ucp_get_nbx, or ucp_am_send_nbx with the row's RemotePlace for
// WRITEs as messages); a flush is ucp_ep_flush_nbx, or on the message path a
// fence the target acknowledges once everything before it is placed; sends go on
// a same-host peer's local message channel (ucx_backend.h: why), else they are
// eager active messages. Completions go to the agent's Completion (user_data).
#include <algorithm>

#include <spdlog/spdlog.h>

#include "transport/ucx/ucx_backend.h"

namespace shardwire::transport::ucx {

namespace {

// Signals `c` with UCX `status` (the request `what` names on error) and frees the request.
inline void Complete(void* request, ucs_status_t status, void* user_data, const char* what) {
  auto* c = static_cast<Completion*>(user_data);
  if (status == UCS_OK) {
    c->done(c, nullptr);
  } else {
    const Status s = UcsError(what, status);
    c->done(c, &s);
  }
  ucp_request_free(request);
}

}  // namespace

void UcxBackend::OnPutDone(void* request, ucs_status_t status, void* user_data) {
  Complete(request, status, user_data, "ucp_put_nbx");
}
void UcxBackend::OnGetDone(void* request, ucs_status_t status, void* user_data) {
  Complete(request, status, user_data, "ucp_get_nbx");
}
void UcxBackend::OnAmWriteDone(void* request, ucs_status_t status, void* user_data) {
  Complete(request, status, user_data, "ucp_am_send_nbx(write)");
}
void UcxBackend::OnNotifySent(void* request, ucs_status_t status, void* user_data) {
  Complete(request, status, user_data, "ucp_am_send_nbx(notification)");
}

namespace {
// A flush in flight: its request and visible completions (ucp_ep_flush_nbx's user_data).
struct FlushPair {
  Completion* request;
  Completion* visible;
};

// A fence being sent: its request completion and the token (the message header,
// kept until UCX completed the send).
struct FenceSend {
  Completion* request;
  std::uint64_t token;
};
}  // namespace

void UcxBackend::OnFenceSent(void* request, ucs_status_t status, void* user_data) {
  auto* f = static_cast<FenceSend*>(user_data);
  Completion* c = f->request;
  delete f;
  Complete(request, status, c, "ucp_am_send_nbx(fence)");
}

void UcxBackend::OnFlushDone(void* request, ucs_status_t status, void* user_data) {
  // Visible first, then the request (the agent counts the request as outstanding).
  auto* pair = static_cast<FlushPair*>(user_data);
  Completion* req = pair->request;
  Completion* vis = pair->visible;
  delete pair;
  if (status == UCS_OK) {
    vis->done(vis, nullptr);
    req->done(req, nullptr);
  } else {
    const Status s = UcsError("ucp_ep_flush_nbx", status);
    vis->done(vis, &s);
    req->done(req, &s);
  }
  ucp_request_free(request);
}

std::uint32_t UcxBackend::PostOp(std::uint32_t /*lane*/, void* link, TransferOp op, bool as_message,
                                 const PreparedOp& o, Completion* c, PostCounts& counts, Status& error) {
  Link& lk = *static_cast<Link*>(link);
  ucp_request_param_t p{};
  p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  p.user_data = c;
  if (op == TransferOp::kRead) {
    p.cb.send = &UcxBackend::OnGetDone;
  } else if (as_message) {
    p.cb.send = &UcxBackend::OnAmWriteDone;
  } else {
    p.cb.send = &UcxBackend::OnPutDone;
  }
  if (!as_message) {
    p.op_attr_mask |= UCP_OP_ATTR_FIELD_MEMH;
    p.memh = static_cast<ucp_mem_h>(o.local_key);
  }
  std::uint32_t pending = 0;
  // One request per row (WRITEs as messages always have one row per op).
  for (std::uint64_t r = 0; r < o.count; ++r) {
    std::byte* local = o.local + r * o.local_stride;
    const std::uint64_t remote = o.remote_addr + r * o.remote_stride;
    ucs_status_ptr_t req;
    if (op == TransferOp::kRead) {
      req = ucp_get_nbx(lk.ep.get(), local, o.length, remote, lk.rkeys[o.rkey_index].get(), &p);
    } else if (as_message) {
      req = ucp_am_send_nbx(lk.ep.get(), kWriteAmId, &o.place, sizeof(o.place), local, o.length, &p);
    } else {
      req = ucp_put_nbx(lk.ep.get(), local, o.length, remote, lk.rkeys[o.rkey_index].get(), &p);
    }
    ++counts.requests;
    counts.bytes += o.length;
    if (UCS_PTR_IS_ERR(req)) {
      error = UcsError(op == TransferOp::kRead ? "ucp_get_nbx" : (as_message ? "ucp_am_send_nbx" : "ucp_put_nbx"),
                       UCS_PTR_STATUS(req));
      break;
    }
    if (req != nullptr) ++pending;
  }
  return pending;
}

Status UcxBackend::Flush(std::uint32_t lane, void* link, bool as_message, Completion* request, Completion* visible,
                         std::uint32_t& pending) {
  Link& lk = *static_cast<Link*>(link);
  pending = 0;
  if (as_message) {
    Lane& l = *lanes_[lane];
    auto* f = new FenceSend{request, l.next_token++};
    const std::uint64_t token = f->token;
    l.fences[token] = visible;
    ucp_request_param_t p{};
    p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
    p.flags = UCP_AM_SEND_FLAG_REPLY | UCP_AM_SEND_FLAG_EAGER;
    p.cb.send = &UcxBackend::OnFenceSent;
    p.user_data = f;
    ucs_status_ptr_t req = ucp_am_send_nbx(lk.ep.get(), kFenceAmId, &f->token, sizeof(f->token), nullptr, 0, &p);
    if (req == nullptr || UCS_PTR_IS_ERR(req)) delete f;
    if (UCS_PTR_IS_ERR(req)) {
      l.fences.erase(token);
      return UcsError("ucp_am_send_nbx(fence)", UCS_PTR_STATUS(req));
    }
    if (req != nullptr) pending = 1;
    return Status::Ok();
  }
  auto* pair = new FlushPair{request, visible};
  ucp_request_param_t p{};
  p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  p.cb.send = &UcxBackend::OnFlushDone;
  p.user_data = pair;
  ucs_status_ptr_t req = ucp_ep_flush_nbx(lk.ep.get(), &p);
  if (req == nullptr) {
    delete pair;
    visible->done(visible, nullptr);
  } else if (UCS_PTR_IS_ERR(req)) {
    delete pair;
    return UcsError("ucp_ep_flush_nbx", UCS_PTR_STATUS(req));
  } else {
    pending = 1;
  }
  return Status::Ok();
}

void UcxBackend::ForgetAck(std::uint32_t lane, Completion* visible) {
  auto& fences = lanes_[lane]->fences;
  for (auto it = fences.begin(); it != fences.end(); ++it) {
    if (it->second == visible) {
      fences.erase(it);
      return;
    }
  }
}

Status UcxBackend::Send(std::uint32_t lane, void* link, std::span<const std::byte> message, Completion* c,
                        std::uint32_t& pending) {
  Link& lk = *static_cast<Link*>(link);
  pending = 0;
  if (lk.messages && !message.empty() && message.size() <= kMaxLocalMessageBytes) {  // ucx_backend.h: why
    Lane& l = *lanes_[lane];
    l.messages_due = true;
    auto sent = lk.messages->Send(std::vector<std::byte>(message.begin(), message.end()),
                                  [c](const Status* error) { c->done(c, error); });
    if (!sent.ok()) return sent.status().WithContext("notification");
    if (!*sent) {
      pending = 1;
      if (std::find(l.backlog.begin(), l.backlog.end(), &lk) == l.backlog.end()) l.backlog.push_back(&lk);
    }
    return Status::Ok();
  }
  ucp_request_param_t p{};
  p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
  p.flags = UCP_AM_SEND_FLAG_EAGER;
  p.cb.send = &UcxBackend::OnNotifySent;
  p.user_data = c;
  ucs_status_ptr_t req = ucp_am_send_nbx(lk.ep.get(), kNotifyAmId, nullptr, 0, message.data(), message.size(), &p);
  if (UCS_PTR_IS_ERR(req)) return UcsError("ucp_am_send_nbx(notification)", UCS_PTR_STATUS(req));
  if (req != nullptr) pending = 1;
  return Status::Ok();
}

void UcxBackend::OnMessageSent(void* request, ucs_status_t status, void* user_data) {
  auto* s = static_cast<PendingSend*>(user_data);
  s->done = true;
  if (status != UCS_OK) spdlog::debug("shardwire agent: message send failed: {}", ucs_status_string(status));
  ucp_request_free(request);
}

Result<bool> UcxBackend::SendOwned(std::uint32_t lane, void* link, std::vector<std::byte> message) {
  Link& lk = *static_cast<Link*>(link);
  Lane& l = *lanes_[lane];
  if (lk.messages && !message.empty() && message.size() <= kMaxLocalMessageBytes) {
    l.messages_due = true;
    auto sent = lk.messages->Send(std::move(message), nullptr);
    if (!sent.ok() && sent.status().code() == ErrorCode::kPeerDisconnected) {
      // The peer's channel closed: its process is gone or its agent was destroyed.
      // As with an active message into a dead peer's FIFO, the message is lost and
      // the send is not an error here; the peer is reported failed (for a live
      // process whose agent is gone the /proc liveness check never would).
      spdlog::debug("shardwire agent {}: message to {} dropped: {}", options_.name, lk.peer->name,
                    sent.status().ToString());
      if (events_ != nullptr)
        events_->OnPeerFailed(lk.peer->token, "its message channel closed (agent destroyed or process gone)");
      return false;
    }
    if (!sent.ok()) return sent.status();
    if (*sent) return false;  // in the peer's socket: nothing left for the lane thread
    if (std::find(l.backlog.begin(), l.backlog.end(), &lk) == l.backlog.end()) l.backlog.push_back(&lk);
    return true;
  }
  PendingSend& s = l.sends.emplace_back();
  s.wire = std::move(message);
  ucp_request_param_t p{};
  p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
  p.flags = UCP_AM_SEND_FLAG_EAGER;
  p.cb.send = &UcxBackend::OnMessageSent;
  p.user_data = &s;
  ucs_status_ptr_t req = ucp_am_send_nbx(lk.ep.get(), kNotifyAmId, nullptr, 0, s.wire.data(), s.wire.size(), &p);
  if (req == nullptr) {
    // Completed at once: on a shared-memory endpoint nothing is left for the
    // lane thread, so do not wake it (it would compete for the lane's mutex and
    // the CPU). TCP endpoints may keep unsent bytes that need progress.
    l.sends.pop_back();
    const auto& tr = lk.peer->transports;
    const bool any_tcp =
        std::any_of(tr.begin(), tr.end(), [](const std::string& t) { return t.rfind("tcp/", 0) == 0; });
    return tr.empty() || any_tcp;
  }
  if (UCS_PTR_IS_ERR(req)) {
    l.sends.pop_back();
    return UcsError("ucp_am_send_nbx", UCS_PTR_STATUS(req));
  }
  return true;
}

bool UcxBackend::SendsPending(std::uint32_t lane) {
  Lane& l = *lanes_[lane];
  l.sends.remove_if([](const PendingSend& s) { return s.done; });
  return !l.sends.empty() || !l.backlog.empty();
}

}  // namespace shardwire::transport::ucx
