// TCP implementation of Rendezvous: one process (usually rank 0 or a launcher) runs
// a TcpRendezvousServer; every process talks to it through a TcpRendezvousClient.
// Prior art: torch.distributed's TCPStore; this is an independent design and wire
// format.
//
// Wire protocol (all integers little-endian, one TCP connection carries one request
// at a time, each request gets exactly one reply unless noted):
//
//   request : op      u8      1 HELLO, 2 PUT, 3 GET, 4 CANCEL_GET, 5 ADD
//             key_len u32     0 for HELLO, 1..4096 otherwise
//             key     key_len bytes
//             val_len u64     HELLO 8, PUT 0..64 MiB, GET 0, CANCEL_GET 0, ADD 8
//             value   val_len bytes
//   reply   : status  u8      0 OK, 1 NOT_READY, 2 INVALID_ARGUMENT, 3 UNSUPPORTED
//             len     u64     payload length
//             payload len bytes
//
//   HELLO      value = protocol magic "SWRDZV" 0x00 0x01; OK payload = the server's
//              u64 instance id (random per server start; lets a client notice a
//              restarted server, whose state is gone).
//   PUT        stores value under key; OK, empty payload.
//   GET        OK with the value once the key exists. The server holds the request
//              (no reply) until a PUT/ADD of the key; the client waits with poll()
//              for its own timeout and then sends CANCEL_GET.
//   CANCEL_GET if a GET of the same key is still held, the server answers that GET
//              with NOT_READY; if the GET was already answered, CANCEL_GET gets no
//              reply. Either way the client reads exactly one reply for its GET.
//   ADD        value = i64 delta; OK payload = i64 new value; INVALID_ARGUMENT
//              (payload = message) if the key holds a non-counter or overflows.
//
// A frame that breaks these rules (unknown op, oversized key or value, wrong value
// length for the op, a second request while a GET is held) makes the server log a
// warning and close that connection; the server and other clients carry on.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "shardwire/rendezvous.h"
#include "shardwire/status.h"

namespace shardwire {

/// The store behind TcpRendezvousClient: a listening socket plus one server thread
/// running a poll()-based event loop that holds all keys, counters and waiting GETs
/// in memory. RAII: the destructor stops the thread and closes every connection.
/// Thread-safety: port() and Stop() may be called from any thread.
class TcpRendezvousServer {
 public:
  /// Binds `bind_host` ("" = all interfaces, "127.0.0.1", "::1", a host name) and
  /// `port` (0 = an ephemeral port chosen by the OS; read it back with port()), and
  /// starts the server thread. SO_REUSEADDR is set, so a port in TIME_WAIT is
  /// reusable, but a port another socket is listening on is not.
  /// Errors: kIoError "... port 29500 is already in use" when the port is taken;
  /// kIoError for other socket failures; kInvalidArgument if `bind_host` does not
  /// resolve.
  static Result<std::unique_ptr<TcpRendezvousServer>> Start(const std::string& bind_host,
                                                            std::uint16_t port);

  ~TcpRendezvousServer();
  TcpRendezvousServer(const TcpRendezvousServer&) = delete;
  TcpRendezvousServer& operator=(const TcpRendezvousServer&) = delete;

  /// The TCP port the server listens on (the real one when started with port 0).
  std::uint16_t port() const;

  /// Stops the server thread, closes the listening socket and every client
  /// connection (their pending and later calls fail with kPeerDisconnected or
  /// kIoError), and discards the stored data. Idempotent; blocks until the thread
  /// has exited.
  void Stop();


 private:
  class Impl;
  explicit TcpRendezvousServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

/// A Rendezvous backed by a TcpRendezvousServer.
/// Keeps a small pool of connections to the server: each call borrows one (opening a
/// new one when all are busy), so a thread blocked in Get never delays other threads'
/// Put/Add. Every connection checks the server's instance id, so a client never
/// silently continues against a restarted (empty) server.
/// Errors of every call, besides those listed on Rendezvous:
///   kPeerDisconnected  the server closed the connection, died, or was restarted;
///   kIoError           another socket failure;
///   kTimedOut          the server did not answer a Put/Add within
///                      `request_timeout_s` (a hung server), or a Get key timed out;
///   kCorruptData       the peer does not speak this protocol.
/// Calls never hang on a dead server: its closed socket wakes any waiting call.
/// Thread-safety: fully thread-safe; destroy only when no call is in flight.
class TcpRendezvousClient : public Rendezvous {
 public:
  /// Connects to the server at `host`:`port`, retrying (with backoff up to 200 ms)
  /// while the server is not up yet, for at most `timeout_s` seconds.
  /// `request_timeout_s` (seconds) bounds each later Put/Add exchange, the reply to a
  /// timed-out Get's cancellation, and opening extra pooled connections.
  /// Errors: kTimedOut (no server answered within `timeout_s`, with the last socket
  /// error); kInvalidArgument (bad timeouts); kCorruptData / kUnsupported (the peer
  /// is not a compatible rendezvous server).
  static Result<std::unique_ptr<TcpRendezvousClient>> Connect(const std::string& host,
                                                              std::uint16_t port,
                                                              double timeout_s,
                                                              double request_timeout_s = 60.0);

  ~TcpRendezvousClient() override;
  TcpRendezvousClient(const TcpRendezvousClient&) = delete;
  TcpRendezvousClient& operator=(const TcpRendezvousClient&) = delete;

  Status Put(const std::string& key, std::span<const std::byte> value) override;
  Result<std::vector<std::byte>> Get(const std::string& key, double timeout_s) override;
  Result<std::int64_t> Add(const std::string& key, std::int64_t delta) override;

  /// The server address this client was connected to.
  const std::string& host() const;
  std::uint16_t port() const;


 private:
  class Impl;
  explicit TcpRendezvousClient(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace shardwire
