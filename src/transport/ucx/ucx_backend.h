// The UCX backend (TransportBackend over UCP, UCX 1.13.1): one ucp_context
// (RMA | AM | WAKEUP, mt_workers_shared), one ucp_worker per lane
// (UCS_THREAD_MODE_SERIALIZED), per peer and lane one ucp_ep and one unpacked
// rkey per peer region.
//
// Messages (notifications, SendOwned) to a same-host peer travel on a
// LocalMessageChannel (a Unix-domain SOCK_SEQPACKET socket per lane,
// transport/local_message_channel.h) unless UcxOptions::local_message_sockets is
// off: UCX's shared-memory active messages share one FIFO per receiving worker
// that a sender killed mid-send wedges for everyone. Messages to other hosts (and
// empty ones) travel as active messages on the endpoint.
//
// Its files, one concern each:
//   ucx_backend.cc   context, workers and message channels (Make), progress, arm,
//                    event fd (an epoll fd over a lane's worker and channel), shutdown.
//   ucx_memory.cc    regions: ucp_mem_map of caller memory, UCX-allocated arenas, rkeys.
//   ucx_endpoint.cc  the blob section (worker and message channel addresses),
//                    endpoints and message links, rkeys and their mappings
//                    (ucp_rkey_ptr), endpoint errors, closing.
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
#include "transport/file_descriptor.h"
#include "transport/local_message_channel.h"
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

/// What the UCX section of a metadata blob holds: each lane's worker address
/// (ucp_worker_get_address) and each lane's local message channel address
/// (LocalMessageChannel::Address; none when the agent has no channels).
struct UcxSection {
  std::vector<std::vector<std::byte>> workers;           ///< at least one, at most kMaxLanes
  std::vector<std::vector<std::byte>> message_channels;  ///< none, or at most kMaxLanes
  bool operator==(const UcxSection&) const = default;
};

/// Encodes the UCX section: u32 worker count, per worker u32 length and the
/// address; then u32 channel count (0 allowed), per channel u32 length and the
/// address. Little-endian. Pure.
std::vector<std::byte> EncodeUcxSection(const UcxSection& section);
/// Decodes it. Errors: kCorruptData naming the check ("truncated", "no worker
/// address", "too many lanes", "overruns", "trailing bytes"). Pure.
Result<UcxSection> DecodeUcxSection(std::span<const std::byte> section);

class UcxBackend final : public TransportBackend {
 public:
  /// Creates the context and one worker per lane (AgentOptions::ucx, lanes).
  /// Errors: kInvalidArgument (ucx options), kTransportError from UCX.
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
  unsigned DrainMessages(std::uint32_t lane) override;
  bool Service(std::uint32_t lane) override;
  int EventFd(std::uint32_t lane) override;
  ArmResult Arm(std::uint32_t lane, std::string& error) override;
  void StopLanes() override;

 private:
  struct Peer;

  /// One peer's endpoint and rkeys on one lane (BackendLink::link). Lane::mu.
  struct Link {
    Peer* peer = nullptr;
    Endpoint ep;
    std::vector<Rkey> rkeys;  // by region index; destroyed before ep closes
    std::unique_ptr<LocalMessageLink> messages;  // same-host peers' channel; null: messages use `ep`
  };

  /// The error-callback argument of a peer's endpoints and what connecting needs;
  /// kept until the backend is destroyed, so a late callback never reads freed memory.
  struct Peer {
    UcxBackend* backend = nullptr;
    std::uint64_t token = 0;
    std::string name;
    bool peer_mode = false;  // UCP_ERR_HANDLING_MODE_PEER (error callback)
    UcxSection section;
    bool same_host = false;
    std::vector<RegionRecord> regions;
    std::vector<std::vector<std::byte>> region_keys;  // packed rkeys, by region
    std::vector<std::string> transports;  // lane 0's endpoint (ucp_ep_print_info)
    std::vector<std::string> message_transports;  // {"unix/seqpacket"} when lane 0 has a message link
    std::vector<Link> links;              // by lane
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
  /// One worker and what it receives and owes; `fences`: the `visible` completion
  /// of each fence this lane sent, by token, until its acknowledgement comes.
  struct Lane {
    UcxBackend* backend = nullptr;
    std::uint32_t index = 0;
    UcpWorker worker;
    int efd = -1;
    WorkerAddress address;
    std::unique_ptr<LocalMessageChannel> messages;  // null: local_message_sockets off
    FileDescriptor epoll;                           // the worker's efd, the channel's and `hangups` (with `messages`)
    FileDescriptor hangups;          // epoll over this lane's message links (EPOLLRDHUP): a peer closed its channel
    std::vector<Link*> backlog;      // links whose message link queued messages
    bool messages_due = true;        // Progress polls the channel next time
    std::uint32_t progress_calls = 0;  // the channel's turn: every kChannelPollEvery-th call
    std::unordered_map<std::uint64_t, Completion*> fences;
    std::uint64_t next_token = 1;
    std::list<PendingSend> sends;
    std::list<RndvRecv> rndv_recvs;
    std::uint32_t am_receiving = 0;  // active-message writes being received
    std::deque<PendingAck> acks;
  };

  UcxBackend() = default;
  /// Progress polls a lane's message channel (a system call) at least every this
  /// many calls, and at once after Arm or a send.
  static constexpr std::uint32_t kChannelPollEvery = 8;
  /// A busy lane looks for hang-ups of its message links every this many calls (a multiple of
  /// kChannelPollEvery), and after every wake-up.
  static constexpr std::uint32_t kHangupPollEvery = 64;
  /// Most channel polls (and UCX progress calls) of one DrainMessages: what arrived before
  /// it is delivered in a few.
  static constexpr int kDrainPolls = 64;

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
  /// Endpoint error callback (arg = the Peer): reports the peer failed (ucx_endpoint.cc).
  static void OnEpError(void* arg, ucp_ep_h ep, ucs_status_t status);
  /// Sends the queued fence acknowledgements once no active-message write is being
  /// received on the lane. Returns whether it sent any (ucx_am.cc).
  bool ServeAcks(Lane& lane);
  /// Drops finished sends and delivers the rendezvous notifications received (ucx_am.cc).
  void CollectReceives(Lane& lane);
  /// Gives `link` its message link `messages` (null: none), watching it for the
  /// peer's hangup in lane.hangups when `lane` is lane 0 (the lane messages travel on; a
  /// peer's agent closes every lane's channel at once, so lane 0 sees each hangup); a link
  /// it replaces is unwatched and closed (its queued messages fail). Lane::mu
  /// (ucx_endpoint.cc).
  void SetMessageLink(Lane& lane, Link& link, std::unique_ptr<LocalMessageLink> messages);
  /// Reports as failed (BackendEvents::OnPeerFailed) every peer whose end of a
  /// message link on this lane hung up, and stops watching those links; returns
  /// how many. A hangup means the peer's channel closed: its agent was destroyed
  /// or its process died, which the /proc liveness check sees only for the
  /// latter (ucx_endpoint.cc). Before reporting, the lane's channel is drained: what
  /// the peer sent before it closed (a DONE, then exit) is in this process's socket
  /// buffers by then and is delivered first, so a wait for that message never sees the
  /// failure instead.
  unsigned ReportHangups(Lane& lane);
  /// Polls the lane's message channel until a poll finds nothing (at most kDrainPolls calls,
  /// each draining up to 16 ready connections); returns the messages delivered plus the
  /// connections accepted or closed (LocalMessageChannel::Poll's count).
  unsigned DrainChannel(Lane& lane);

  AgentOptions options_;
  UcpContext context_;
  std::vector<std::unique_ptr<Lane>> lanes_;
  std::deque<std::unique_ptr<Peer>> peers_;
  BackendEvents* events_ = nullptr;
};

}  // namespace shardwire::transport::ucx
