// Messages between processes of one host over Unix-domain SOCK_SEQPACKET sockets
// (unix(7)): the path a backend gives notifications and standalone messages to a
// same-host peer, instead of a shared-memory FIFO that a killed sender can wedge.
//
// Why: UCX's shared-memory transports deliver every same-host sender's active
// messages through one in-order FIFO per receiving worker. A sender SIGKILLed
// between reserving an element and marking it written leaves the receiver unable
// to read any later message from anyone (UCX 1.13.1, uct_mm_ep_am_common_send;
// docs/transport.md, "Messages travel apart from data"). A socket connection is
// the kernel's: each message is queued whole or not at all, and a dead sender
// closes only its own connection. (UCX's TCP transport was tried first: UCX
// 1.13.1 aborts when a peer dies while a TCP endpoint's wire-up request is
// queued, which a test that kills engines at random hit in 7 of 300 runs.)
//
// Model. Each lane owns one channel: a listening socket bound to an abstract
// address ("\0shardwire-<pid>-<serial>-<lane>", per network namespace) plus the
// connections peers opened to it; a sender opens one connection per peer lane
// (Connect). Messages are SOCK_SEQPACKET records (boundaries kept, in order per
// connection): a message travels as one or more records of at most
// kMaxLocalRecordBytes, each led by one byte (kLastRecord on a message's last
// record, 0 on the others), so messages of any size up to kMaxLocalMessageBytes
// keep their order. Nothing blocks: a full connection queues records in the link
// until Flush sends them.
//
// Thread-safety: none; the owner serialises every call on a channel and its
// links (the UCX backend holds the lane's mutex).
// Internal header (src/transport); not part of the public API.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "shardwire/status.h"
#include "transport/file_descriptor.h"

namespace shardwire::transport {

/// Largest record on a connection, bytes, its leading byte included (a Unix
/// socket's default send buffer is 208 KiB; a SOCK_SEQPACKET record cannot
/// exceed it).
inline constexpr std::size_t kMaxLocalRecordBytes = std::size_t{64} << 10;
/// Largest message, bytes (as Agent::SendMessage's bound, 2^31).
inline constexpr std::size_t kMaxLocalMessageBytes = std::size_t{1} << 31;
/// The leading byte of a message's last record.
inline constexpr std::byte kLastRecord{1};

/// One connection to a peer's channel. Owned by the sender's backend.
class LocalMessageLink {
 public:
  /// Called once a queued message left (error null) or was dropped (error set).
  using Done = std::function<void(const Status* error)>;

  /// Connects to the channel at `address` (LocalMessageChannel::Address of a peer
  /// in this network namespace). Errors: kPeerDisconnected when nothing listens
  /// there (another network namespace, a process gone), naming the address and
  /// errno; kInternal when a socket cannot be made.
  static Result<std::unique_ptr<LocalMessageLink>> Connect(std::span<const std::byte> address);

  /// Sends `message` (1 to kMaxLocalMessageBytes bytes; as records, see above)
  /// or queues what the connection does not take. Returns true when it left at once (`done` not called),
  /// false when queued (`done` runs from a later Flush or Close). Errors:
  /// kInvalidArgument for an empty or oversized message; kPeerDisconnected when
  /// the peer closed its end (EPIPE, ECONNRESET, ENOTCONN); kInternal for another
  /// send error of this host (EMSGSIZE, ENOBUFS, ENOMEM) (`done` not called).
  Result<bool> Send(std::vector<std::byte> message, Done done);
  /// Sends what is queued, as far as the connection takes it. Returns whether
  /// anything is still queued. A peer that went away fails every queued message.
  bool Flush();
  /// Whether messages wait in the queue.
  bool Queued() const { return !queue_.empty(); }
  /// The connection's socket, for watching it (epoll EPOLLRDHUP: the peer closed
  /// its channel); -1 after Close. The link keeps owning it.
  int Socket() const { return fd_.get(); }
  /// Closes the connection; queued messages fail with kPeerDisconnected.
  void Close();
  ~LocalMessageLink() { Close(); }

 private:
  /// A record not yet sent; `done` on a message's last record.
  struct Pending {
    std::vector<std::byte> record;
    Done done;
  };
  explicit LocalMessageLink(FileDescriptor fd) : fd_(std::move(fd)) {}
  void FailQueued(const Status& why);
  /// Sends the queue's first record without blocking. Returns true when it
  /// left whole, false when the connection is full (the record stays queued).
  /// Errors: kPeerDisconnected when the peer closed the connection (or a short
  /// record, which SOCK_SEQPACKET never produces for a live peer); kInternal
  /// naming errno for another send error.
  Result<bool> SendFront();
  FileDescriptor fd_;
  std::deque<Pending> queue_;
};

/// A lane's receiving end: a listening socket and the connections peers opened.
class LocalMessageChannel {
 public:
  /// Binds and listens at a fresh abstract address named after this process,
  /// `serial` (unique per channel in the process) and `lane`. Errors: kInternal
  /// naming the call and errno.
  static Result<std::unique_ptr<LocalMessageChannel>> Open(std::uint64_t serial, std::uint32_t lane);

  /// The address peers pass to LocalMessageLink::Connect (the abstract name's bytes).
  std::span<const std::byte> Address() const { return address_; }
  /// An epoll fd that is readable when a connection arrives or a message does.
  int EventFd() const { return epoll_.get(); }
  /// Accepts new connections and hands every message that arrived whole to
  /// `deliver` (in order per connection); drops connections their senders closed
  /// (with any partial message). A record larger than kMaxLocalRecordBytes, an
  /// empty one or a message above kMaxLocalMessageBytes (a sender of another
  /// build) closes its connection with a warning. Returns how many messages it delivered plus how
  /// many connections it accepted or closed (0: nothing happened).
  unsigned Poll(const std::function<void(const std::byte* data, std::size_t length)>& deliver);

 private:
  LocalMessageChannel() = default;
  unsigned Accept();  // returns the connections accepted
  std::vector<std::byte> address_;
  FileDescriptor listener_;
  FileDescriptor epoll_;
  struct Connection {
    FileDescriptor fd;
    std::vector<std::byte> partial;  // the records of an unfinished message, leading bytes dropped
  };
  std::unordered_map<int, Connection> connections_;  // by fd
  std::vector<std::byte> buffer_;                    // one record
};

}  // namespace shardwire::transport
