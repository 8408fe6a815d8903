// Owners for UCX handles. Each type releases exactly one UCX resource with the
// matching UCX call (ucp.h, UCX 1.13.1):
//
//   UcpConfig      ucp_config_read        -> ucp_config_release
//   UcpContext     ucp_init               -> ucp_cleanup
//   UcpWorker      ucp_worker_create      -> ucp_worker_destroy
//   WorkerAddress  ucp_worker_get_address -> ucp_worker_release_address
//   MemHandle      ucp_mem_map            -> ucp_mem_unmap
//   RkeyBuffer     ucp_rkey_pack          -> ucp_rkey_buffer_release
//   Rkey           ucp_ep_rkey_unpack     -> ucp_rkey_destroy
//   Endpoint       ucp_ep_create          -> ucp_ep_close_nbx (+ progress until done)
//
// Destruction order is the owner's business: rkeys before their endpoint,
// endpoints and addresses before their worker, memory handles and workers
// before their context (ucp.h, ucp_rkey_destroy and ucp_cleanup notes).
//
// Internal header (src/transport); not part of the public API.
#pragma once

#include <ucp/api/ucp.h>

#include <memory>
#include <string>
#include <utility>

#include "shardwire/status.h"
#include "transport/file_descriptor.h"

namespace shardwire::transport {

/// "ucp_xxx failed: <ucs_status_string>" as a Status of the code matching `s`:
/// connection-loss statuses and UCS_ERR_SHMEM_SEGMENT (a peer's shared-memory
/// segment that cannot be attached: the peer exited) map to kPeerDisconnected,
/// UCS_ERR_TIMED_OUT to kTimedOut, everything else to kTransportError.
Status UcsError(std::string_view what, ucs_status_t s);

struct ConfigDeleter {
  void operator()(ucp_config_t* c) const { ucp_config_release(c); }
};
using UcpConfig = std::unique_ptr<ucp_config_t, ConfigDeleter>;

struct ContextDeleter {
  void operator()(ucp_context* c) const { ucp_cleanup(c); }
};
using UcpContext = std::unique_ptr<ucp_context, ContextDeleter>;

struct WorkerDeleter {
  void operator()(ucp_worker* w) const { ucp_worker_destroy(w); }
};
using UcpWorker = std::unique_ptr<ucp_worker, WorkerDeleter>;

struct RkeyBufferDeleter {
  void operator()(void* b) const { ucp_rkey_buffer_release(b); }
};
using RkeyBuffer = std::unique_ptr<void, RkeyBufferDeleter>;

struct RkeyDeleter {
  void operator()(ucp_rkey* r) const { ucp_rkey_destroy(r); }
};
using Rkey = std::unique_ptr<ucp_rkey, RkeyDeleter>;

/// The worker's packed address; released with the worker that produced it.
class WorkerAddress {
 public:
  WorkerAddress() = default;
  WorkerAddress(ucp_worker_h worker, ucp_address_t* addr, std::size_t length)
      : worker_(worker), addr_(addr), length_(length) {}
  WorkerAddress(WorkerAddress&& o) noexcept { *this = std::move(o); }
  WorkerAddress& operator=(WorkerAddress&& o) noexcept {
    if (this != &o) {
      Reset();
      worker_ = std::exchange(o.worker_, nullptr);
      addr_ = std::exchange(o.addr_, nullptr);
      length_ = std::exchange(o.length_, 0);
    }
    return *this;
  }
  ~WorkerAddress() { Reset(); }
  const void* data() const { return addr_; }
  std::size_t size() const { return length_; }

 private:
  void Reset() {
    if (addr_ != nullptr) ucp_worker_release_address(worker_, addr_);
    addr_ = nullptr;
  }
  ucp_worker_h worker_ = nullptr;
  ucp_address_t* addr_ = nullptr;
  std::size_t length_ = 0;
};

/// A registered (or UCX-allocated) memory region.
class MemHandle {
 public:
  MemHandle() = default;
  MemHandle(ucp_context_h ctx, ucp_mem_h memh) : ctx_(ctx), memh_(memh) {}
  MemHandle(MemHandle&& o) noexcept { *this = std::move(o); }
  MemHandle& operator=(MemHandle&& o) noexcept {
    if (this != &o) {
      Reset();
      ctx_ = std::exchange(o.ctx_, nullptr);
      memh_ = std::exchange(o.memh_, nullptr);
    }
    return *this;
  }
  ~MemHandle() { Reset(); }
  ucp_mem_h get() const { return memh_; }
  /// Gives up ownership: the caller unmaps the handle (e.g. by wrapping it again).
  ucp_mem_h release() { return std::exchange(memh_, nullptr); }

 private:
  void Reset() {
    if (memh_ != nullptr) ucp_mem_unmap(ctx_, memh_);
    memh_ = nullptr;
  }
  ucp_context_h ctx_ = nullptr;
  ucp_mem_h memh_ = nullptr;
};

/// An endpoint. Close() runs ucp_ep_close_nbx and progresses the worker until
/// the close request completes or the timeout passes (then the request is left
/// to UCX, which finishes it or cleans it up in ucp_worker_destroy). The
/// destructor force-closes with a short bound.
class Endpoint {
 public:
  Endpoint() = default;
  Endpoint(ucp_worker_h worker, ucp_ep_h ep) : worker_(worker), ep_(ep) {}
  Endpoint(Endpoint&& o) noexcept { *this = std::move(o); }
  Endpoint& operator=(Endpoint&& o) noexcept {
    if (this != &o) {
      Close(/*force=*/true, kDefaultCloseTimeoutS);
      worker_ = std::exchange(o.worker_, nullptr);
      ep_ = std::exchange(o.ep_, nullptr);
    }
    return *this;
  }
  ~Endpoint() { Close(/*force=*/true, kDefaultCloseTimeoutS); }
  ucp_ep_h get() const { return ep_; }
  explicit operator bool() const { return ep_ != nullptr; }

  /// Closes the endpoint (no-op if already closed). `force` selects
  /// UCP_EP_CLOSE_FLAG_FORCE (no handshake; outstanding requests complete with
  /// UCS_ERR_CANCELED) over a flushing close. Returns false on timeout.
  bool Close(bool force, double timeout_s);

  static constexpr double kDefaultCloseTimeoutS = 2.0;

 private:
  ucp_worker_h worker_ = nullptr;
  ucp_ep_h ep_ = nullptr;
};

}  // namespace shardwire::transport
