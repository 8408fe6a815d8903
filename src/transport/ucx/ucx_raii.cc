#include "transport/ucx/ucx_raii.h"

#include <unistd.h>

#include <chrono>
#include <thread>

#include <fmt/format.h>

namespace shardwire::transport {

Status UcsError(std::string_view what, ucs_status_t s) {
  std::string m = fmt::format("{} failed: {}", what, ucs_status_string(s));
  switch (s) {
    case UCS_ERR_CONNECTION_RESET:
    case UCS_ERR_ENDPOINT_TIMEOUT:
    case UCS_ERR_UNREACHABLE:
    case UCS_ERR_NOT_CONNECTED:
    case UCS_ERR_CANCELED:
      return PeerDisconnected(std::move(m));
    case UCS_ERR_SHMEM_SEGMENT:
      // Attaching the peer's shared-memory segment failed: the segment is gone, which is what
      // a peer that exited (or was killed mid-transfer) leaves (UCX mm_sysv: shmat EINVAL).
      return PeerDisconnected(m + " (the peer's shared memory is gone: did its process exit?)");
    case UCS_ERR_TIMED_OUT:
      return TimedOut(std::move(m));
    default:
      return TransportError(std::move(m));
  }
}


bool Endpoint::Close(bool force, double timeout_s) {
  if (ep_ == nullptr) return true;
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
  param.flags = force ? UCP_EP_CLOSE_FLAG_FORCE : 0;
  ucs_status_ptr_t req = ucp_ep_close_nbx(ep_, &param);
  ep_ = nullptr;
  // NULL: closed; error pointer: closed with a transport error, resources
  // released anyway (ucp.h, ucp_ep_close_nbx).
  if (req == nullptr || UCS_PTR_IS_ERR(req)) return true;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  while (ucp_request_check_status(req) == UCS_INPROGRESS) {
    if (std::chrono::steady_clock::now() >= deadline) {
      ucp_request_free(req);  // UCX finishes or reclaims it (ucp_worker_destroy)
      return false;
    }
    if (ucp_worker_progress(worker_) == 0) std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  ucp_request_free(req);
  return true;
}

}  // namespace shardwire::transport
