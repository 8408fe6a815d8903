// The UCX backend (TransportBackend over UCP, UCX 1.13.1): one data ucp_context
// (RMA | AM | WAKEUP, mt_workers_shared) and, unless UcxOptions::message_transports
// is empty, one message ucp_context (AM | WAKEUP) limited to those transports
// (default "tcp"); per lane one data ucp_worker and one message ucp_worker
// (UCS_THREAD_MODE_SERIALIZED), both progressed by the lane's thread; per peer and
// lane one data ucp_ep with one unpacked rkey per peer region, and one message
// ucp_ep that carries notifications and SendOwned messages.
//
// Why messages travel apart (docs/reliability.md, "A killed sender deafens a
// same-host receiver"): UCX's shared-memory transports (posix, sysv) deliver
// active messages through one FIFO per receiving worker that every same-host
// sender writes into. A sender reserves an element (an atomic increment of the
// FIFO head), writes it, then flips its owner bit; the receiver reads elements
// strictly in order. A sender SIGKILLed between the two steps leaves an element
// that never becomes ready, and the receiver hears nothing from anyone on that
// worker again (UCX 1.13.1 uct_mm_ep_am_common_send / uct_mm_iface_progress).
// TCP has one socket per connection: a dead sender closes only its own. Data
// (puts, gets, mapped regions, kernel copies) stays on the data context, which
// sends no active message to a same-host peer (WritePath::kActiveMessage aside).
//
// Its files, one concern each:
//   ucx_backend.cc   contexts and workers (Make), progress, arm, event fd, shutdown.
//   ucx_memory.cc    regions: ucp_mem_map of caller memory, UCX-allocated arenas, rkeys.
//   ucx_endpoint.cc  the blob section (worker addresses), endpoints, rkeys and their
//                    mappings (ucp_rkey_ptr), endpoint errors, closing.
//   ucx_ops.cc       puts, gets, active-message writes, flushes and fences, sends.
//   ucx_am.cc        the receiving side: active-message handlers (notifications,
//                    writes, fences) and fence acknowledgements.
//   ucx_raii.{h,cc}, endpoint_info.{h,cc}, capabilities.cc: UCX handle owners, an
//   endpoint's transports, the capability probe.
// Threads: everything naming a lane runs with the agent's Lane::mu held (backend.h);
// UCX callbacks run inside ucp_worker_progress of that lane. `regions` of the agent
// are reached through BackendEvents::Locate only.
// Internal header (src/transport/ucx); only the backend's files include it.
#pragma once

#include <cstdint>
#include <deque>
#include <list>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include <ucp/api/ucp.h>

#include "transport/backend.h"
#include "transport/ucx/ucx_raii.h"

namespace shardwire::transport::ucx {

/// The active-message protocol of the UCX backend (one handler each per worker;
/// all sent with ucp_am_send_nbx):
///   kNotifyAmId:   no header; data = an encoded notification (notification_codec.h).
///   kWriteAmId:    header = RemotePlace (raw bytes, host order: both ends run the
///                  same build); data = the bytes to place.
///   kFenceAmId:    header = u64 token (sent with UCP_AM_SEND_FLAG_REPLY).
///   kFenceAckAmId: header = u64 token (the reply to a fence).
inline constexpr unsigned kNotifyAmId = 17;   ///< a notification (payload: the encoded Notification)
inline constexpr unsigned kWriteAmId = 18;    ///< a WRITE row as a message (header: RemotePlace)
inline constexpr unsigned kFenceAmId = 19;    ///< a fence (header: u64 token; reply endpoint)
inline constexpr unsigned kFenceAckAmId = 20; ///< a fence's acknowledgement (header: the token)

/// What the UCX section of a metadata blob holds: the worker address
/// (ucp_worker_get_address) of each lane's data worker and of each lane's
/// message worker (none when the agent sends messages on its data workers).
struct UcxSection {
  std::vector<std::vector<std::byte>> data_workers;     ///< at least one, at most kMaxLanes
  std::vector<std::vector<std::byte>> message_workers;  ///< none, or at most kMaxLanes
  bool operator==(const UcxSection&) const = default;
};

/// Encodes the UCX section: u32 data worker count, per worker u32 length and
/// the address; then u32 message worker count (0 allowed), per worker u32
/// length and the address. Little-endian. Pure.
std::vector<std::byte> EncodeUcxSection(const UcxSection& section);
/// Decodes it. Errors: kCorruptData naming the check ("truncated", "no worker
/// address", "too many lanes", "overruns", "trailing bytes"). Pure.
Result<UcxSection> DecodeUcxSection(std::span<const std::byte> section);

class UcxBackend final : public TransportBackend {
 public:
  /// Creates the contexts and each lane's workers (AgentOptions::ucx, lanes).
  /// Errors: kInvalidArgument (ucx options), kTransportError from UCX (naming
  /// the message context when its transports are unavailable).
  static Result<std::unique_ptr<TransportBackend>> Make(const AgentOptions& options);
  ~UcxBackend() override;

  std::string_view name() const override { return "ucx"; }
  std::uint32_t lanes() const override { return static_cast<std::uint32_t>(lanes_.size()); }
  void SetEvents(BackendEvents* events) override { events_ = events; }

  Result<BackendRegion> RegisterRegion(void* addr, std::size_t length, std::string_view what) override;
  Result<BackendRegion> AllocateRegion(std::size_t length) override;
  void ReleaseRegion(void* key) override;

  std::vector<std::byte> ConnectionInfo() override;
  Result<void*> OpenPeer(const ConnectRequest& request) override;
  Status ConnectLane(std::uint32_t lane, void* peer, BackendLink& link) override;
  BackendPeer DescribePeer(void* peer) override;

  std::uint32_t PostOp(std::uint32_t lane, void* link, TransferOp op, bool as_message, const PreparedOp& o,
                       Completion* c, PostCounts& counts, Status& error) override;
  Status Flush(std::uint32_t lane, void* link, bool as_message, Completion* request, Completion* visible,
               std::uint32_t& pending) override;
  void ForgetAck(std::uint32_t lane, Completion* visible) override;
  Status Send(std::uint32_t lane, void* link, std::span<const std::byte> message, Completion* c,
              std::uint32_t& pending) override;
  Result<bool> SendOwned(std::uint32_t lane, void* link, std::vector<std::byte> message) override;
  bool SendsPending(std::uint32_t lane) override;
  bool CloseLink(std::uint32_t lane, void* link, bool force, double timeout_s) override;
  void ReleaseKeys(std::uint32_t lane, void* link) override;

  unsigned Progress(std::uint32_t lane) override;
  bool Service(std::uint32_t lane) override;
  int EventFd(std::uint32_t lane) override;
  ArmResult Arm(std::uint32_t lane, std::string& error) override;
  void StopLanes() override;

 private:
  struct Peer;

  /// One peer's endpoints and rkeys on one lane (BackendLink::link). Lane::mu.
  struct Link {
    Peer* peer = nullptr;
    Endpoint ep;
    Endpoint message_ep;      // on the lane's message worker; empty: messages use `ep`
    bool message_wired = false;  // a flush of message_ep completed: its wire-up finished
    std::vector<Rkey> rkeys;  // by region index; destroyed before ep closes
    /// Where messages (notifications, SendOwned) go.
    ucp_ep_h MessageEp() const { return message_ep ? message_ep.get() : ep.get(); }
  };

  /// The error-callback argument of a peer's endpoints and what connecting needs;
  /// kept until the backend is destroyed, so a late callback never reads freed memory.
  struct Peer {
    UcxBackend* backend = nullptr;
    std::uint64_t token = 0;
    std::string name;
    bool peer_mode = false;  // UCP_ERR_HANDLING_MODE_PEER (error callback)
    UcxSection section;
    std::vector<RegionRecord> regions;
    std::vector<std::vector<std::byte>> region_keys;  // packed rkeys, by region
    std::vector<std::string> transports;          // lane 0's data endpoint (ucp_ep_print_info)
    std::vector<std::string> message_transports;  // lane 0's message endpoint; empty: none
    std::vector<Link> links;                      // by lane
  };

  /// A message with no job (SendOwned, a fence acknowledgement) until UCX sent it.
  struct PendingSend {
    std::vector<std::byte> wire;
    std::uint64_t header = 0;
    bool done = false;
  };
  /// A notification arriving by rendezvous: its buffer until the receive completes.
  struct RndvRecv {
    std::vector<std::byte> buffer;
    bool done = false;
    ucs_status_t status = UCS_OK;
  };
  /// A fence to acknowledge once no active-message write is being received.
  struct PendingAck {
    ucp_ep_h reply_ep = nullptr;
    std::uint64_t token = 0;
  };
  struct Lane;
  /// The argument of a worker's active-message handlers: its lane, and the worker
  /// a rendezvous receive must name.
  struct HandlerArg {
    Lane* lane = nullptr;
    ucp_worker_h worker = nullptr;
  };
  /// A lane's workers and what they receive and owe; `fences`: the `visible`
  /// completion of each fence this lane sent, by token, until its acknowledgement
  /// comes. `efd` is the data worker's event fd, or an epoll fd over both workers'.
  struct Lane {
    UcxBackend* backend = nullptr;
    std::uint32_t index = 0;
    UcpWorker worker;
    UcpWorker message_worker;  // null: messages use `worker`
    int efd = -1;
    FileDescriptor epoll;      // both workers' event fds (when message_worker)
    WorkerAddress address;
    WorkerAddress message_address;
    HandlerArg data_arg;
    HandlerArg message_arg;
    std::unordered_map<std::uint64_t, Completion*> fences;
    std::uint64_t next_token = 1;
    std::list<PendingSend> sends;
    std::list<RndvRecv> rndv_recvs;
    std::uint32_t am_receiving = 0;  // active-message writes being received
    std::deque<PendingAck> acks;
  };

  UcxBackend() = default;
  /// Seconds StopLanes waits for a message worker's flush before it leaves the
  /// worker allocated (a peer stalled in its wire-up).
  static constexpr double kMessageFlushTimeoutS = 1.0;

  // UCX callbacks (ucx_ops.cc): user_data is the agent's Completion.
  static void OnPutDone(void* request, ucs_status_t status, void* user_data);
  static void OnGetDone(void* request, ucs_status_t status, void* user_data);
  static void OnAmWriteDone(void* request, ucs_status_t status, void* user_data);
  static void OnFlushDone(void* request, ucs_status_t status, void* user_data);
  static void OnFenceSent(void* request, ucs_status_t status, void* user_data);
  static void OnNotifySent(void* request, ucs_status_t status, void* user_data);
  static void OnMessageSent(void* request, ucs_status_t status, void* user_data);
  // Active-message handlers (ucx_am.cc); arg = the Lane.
  static void OnRndvRecvDone(void* request, ucs_status_t status, std::size_t length, void* user_data);
  static void OnAmWriteReceived(void* request, ucs_status_t status, std::size_t length, void* user_data);
  static ucs_status_t OnNotification(void* arg, const void* header, std::size_t header_length, void* data,
                                     std::size_t length, const ucp_am_recv_param_t* param);
  static ucs_status_t OnAmWrite(void* arg, const void* header, std::size_t header_length, void* data,
                                std::size_t length, const ucp_am_recv_param_t* param);
  static ucs_status_t OnFence(void* arg, const void* header, std::size_t header_length, void* data,
                              std::size_t length, const ucp_am_recv_param_t* param);
  static ucs_status_t OnFenceAck(void* arg, const void* header, std::size_t header_length, void* data,
                                 std::size_t length, const ucp_am_recv_param_t* param);
  /// Completion of the flush ConnectLane posts on a message endpoint (user_data =
  /// the Link): marks it wired (ucx_endpoint.cc).
  static void OnMessageEpWired(void* request, ucs_status_t status, void* user_data);
  /// Endpoint error callback (arg = the Peer): reports the peer failed (ucx_endpoint.cc).
  static void OnEpError(void* arg, ucp_ep_h ep, ucs_status_t status);
  /// Creates a worker of `context` for `lane` with the active-message handlers
  /// (argument `arg`), its event fd and its address (ucx_backend.cc).
  Status OpenWorker(ucp_context_h context, Lane& lane, HandlerArg& arg, UcpWorker& worker, int& efd,
                    WorkerAddress& address);
  /// Sends the queued fence acknowledgements once no active-message write is being
  /// received on the lane. Returns whether it sent any (ucx_am.cc).
  bool ServeAcks(Lane& lane);
  /// Drops finished sends and delivers the rendezvous notifications received (ucx_am.cc).
  void CollectReceives(Lane& lane);

  AgentOptions options_;
  UcpContext context_;
  UcpContext message_context_;  // null: messages travel on the data workers
  /// A message worker could not be flushed at shutdown (a peer stalled in the
  /// middle of its wire-up): it and the message context are left to the process
  /// instead of destroyed, which UCX 1.13.1 would abort on (StopLanes).
  bool message_context_leaked_ = false;
  std::vector<std::unique_ptr<Lane>> lanes_;
  std::deque<std::unique_ptr<Peer>> peers_;
  BackendEvents* events_ = nullptr;
};

}  // namespace shardwire::transport::ucx
