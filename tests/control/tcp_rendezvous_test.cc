// TCP-specific behaviour: real processes, ports, server death, hostile peers.
#include "shardwire/tcp_rendezvous.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "control/test_util.h"
#include "shardwire/rendezvous.h"

namespace shardwire {
namespace {

using testing_util::BytesOf;
using testing_util::Pattern;

std::unique_ptr<TcpRendezvousServer> StartServer(std::uint16_t port = 0) {
  auto s = TcpRendezvousServer::Start("127.0.0.1", port);
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  return s.ok() ? std::move(s).value() : nullptr;
}

std::unique_ptr<TcpRendezvousClient> ConnectTo(std::uint16_t port) {
  auto c = TcpRendezvousClient::Connect("127.0.0.1", port, 10.0);
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  return c.ok() ? std::move(c).value() : nullptr;
}

// A port that was free a moment ago (a server bound it, then let it go).
std::uint16_t FreePort() {
  auto s = StartServer();
  if (!s) return 0;
  std::uint16_t port = s->port();
  s->Stop();
  return port;
}

// Waits for child `pid` and returns its exit code (or 100 + signal).
int WaitChild(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return -1;
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 100 + WTERMSIG(status);
  return -1;
}

TEST(TcpRendezvous, GetBlocksUntilAnotherProcessPuts) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  const std::uint16_t port = server->port();
  auto parent = ConnectTo(port);
  ASSERT_NE(parent, nullptr);
  const std::vector<std::byte> blob = Pattern(3000, 42);

  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    auto c = TcpRendezvousClient::Connect("127.0.0.1", port, 10.0);
    if (!c.ok()) ::_exit(2);
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    ::_exit((*c)->Put("from-child", blob).ok() ? 0 : 3);
  }
  auto got = parent->Get("from-child", 60);
  EXPECT_EQ(WaitChild(pid), 0);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(*got, blob);
}

TEST(TcpRendezvous, BarrierAcrossProcessesWithServerInParent) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  const std::uint16_t port = server->port();
  constexpr int kWorld = 4;

  std::vector<pid_t> pids;
  for (int rank = 0; rank < kWorld; ++rank) {
    pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      // Child: exit codes name the step that failed.
      auto c = TcpRendezvousClient::Connect("127.0.0.1", port, 30.0);
      if (!c.ok()) ::_exit(2);
      Rendezvous& rz = **c;
      for (int round = 0; round < 2; ++round) {
        const std::string base = "proc-round" + std::to_string(round) + "/rank";
        if (!PutString(rz, base + std::to_string(rank), std::to_string(::getpid())).ok()) ::_exit(3);
        if (!Barrier(rz, "proc-round" + std::to_string(round), rank, kWorld, 60).ok()) ::_exit(4);
        for (int peer = 0; peer < kWorld; ++peer) {
          if (!rz.Get(base + std::to_string(peer), 0).ok()) ::_exit(5);
        }
      }
      ::_exit(0);
    }
    pids.push_back(pid);
  }
  for (int rank = 0; rank < kWorld; ++rank) {
    EXPECT_EQ(WaitChild(pids[rank]), 0) << "rank " << rank;
  }
  // The parent sees each child's record, written by that child.
  auto client = ConnectTo(port);
  ASSERT_NE(client, nullptr);
  for (int rank = 0; rank < kWorld; ++rank) {
    auto v = GetString(*client, "proc-round1/rank" + std::to_string(rank), 0);
    ASSERT_TRUE(v.ok()) << v.status().ToString();
    EXPECT_EQ(*v, std::to_string(pids[rank]));
  }
}

TEST(TcpRendezvous, SecondServerOnTheSamePortFails) {
  auto first = StartServer();
  ASSERT_NE(first, nullptr);
  auto second = TcpRendezvousServer::Start("127.0.0.1", first->port());
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), ErrorCode::kIoError);
  const std::string expected = "port " + std::to_string(first->port()) + " is already in use";
  EXPECT_NE(second.status().message().find(expected), std::string::npos)
      << second.status().message();
  // The first server is unaffected.
  auto c = ConnectTo(first->port());
  ASSERT_NE(c, nullptr);
  EXPECT_TRUE(PutString(*c, "k", "v").ok());
}

TEST(TcpRendezvous, ClientCallsFailInsteadOfHangingAfterServerStops) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  auto client = ConnectTo(server->port());
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(PutString(*client, "before", "ok").ok());

  Result<std::vector<std::byte>> waiting = InvalidArgument("not run");
  std::thread getter([&] { waiting = client->Get("never-set", 600); });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  server->Stop();
  getter.join();
  ASSERT_FALSE(waiting.ok());
  EXPECT_EQ(waiting.status().code(), ErrorCode::kPeerDisconnected) << waiting.status().ToString();

  for (int i = 0; i < 3; ++i) {  // pooled (dead) connections, then fresh attempts
    Status put = PutString(*client, "after", "x");
    EXPECT_TRUE(put.code() == ErrorCode::kPeerDisconnected || put.code() == ErrorCode::kIoError)
        << put.ToString();
    auto get = client->Get("before", 600);
    EXPECT_TRUE(get.status().code() == ErrorCode::kPeerDisconnected ||
                get.status().code() == ErrorCode::kIoError)
        << get.status().ToString();
    auto add = client->Add("n", 1);
    EXPECT_TRUE(add.status().code() == ErrorCode::kPeerDisconnected ||
                add.status().code() == ErrorCode::kIoError)
        << add.status().ToString();
  }
}

TEST(TcpRendezvous, ClientNoticesARestartedServer) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  const std::uint16_t port = server->port();
  auto client = ConnectTo(port);
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(PutString(*client, "k", "v").ok());
  server->Stop();
  server = StartServer(port);
  ASSERT_NE(server, nullptr);
  // The pooled connection died with the old server; new ones reach a server with
  // another identity and empty state: both are reported, never silently used.
  Status first = PutString(*client, "k", "v2");
  EXPECT_EQ(first.code(), ErrorCode::kPeerDisconnected) << first.ToString();
  Status second = PutString(*client, "k", "v3");
  EXPECT_EQ(second.code(), ErrorCode::kPeerDisconnected) << second.ToString();
  EXPECT_NE(second.message().find("restarted"), std::string::npos) << second.message();
}

TEST(TcpRendezvous, ConnectRetriesUntilTheServerIsUp) {
  const std::uint16_t port = FreePort();
  ASSERT_NE(port, 0);
  std::unique_ptr<TcpRendezvousServer> late;
  std::thread starter([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    late = StartServer(port);
  });
  auto client = TcpRendezvousClient::Connect("127.0.0.1", port, 30.0);
  starter.join();
  ASSERT_NE(late, nullptr);
  ASSERT_TRUE(client.ok()) << client.status().ToString();
  ASSERT_TRUE(PutString(**client, "k", "late-server").ok());
  auto v = GetString(**client, "k", 5);
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(*v, "late-server");
}

TEST(TcpRendezvous, ConnectTimesOutWhenNoServerComes) {
  const std::uint16_t port = FreePort();
  ASSERT_NE(port, 0);
  auto client = TcpRendezvousClient::Connect("127.0.0.1", port, 0.3);
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), ErrorCode::kTimedOut);
  EXPECT_NE(client.status().message().find(std::to_string(port)), std::string::npos)
      << client.status().message();
}

// --- hostile peers -----------------------------------------------------------

int RawConnect(std::uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

void SendRaw(int fd, const std::vector<std::uint8_t>& bytes) {
  std::size_t off = 0;
  while (off < bytes.size()) {
    ssize_t n = ::send(fd, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // the server may already have closed on us
    off += static_cast<std::size_t>(n);
  }
}

// True when the server closed `fd` (EOF or reset) within 30 s.
bool ServerClosed(int fd) {
  std::array<char, 4096> buf{};
  while (true) {
    pollfd p{fd, POLLIN, 0};
    int r = ::poll(&p, 1, 30000);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    ssize_t n = ::recv(fd, buf.data(), buf.size(), 0);
    if (n == 0) return true;
    if (n < 0) return errno == ECONNRESET;
    // Bytes of a reply (e.g. to a valid request before the bad one): keep reading.
  }
}

std::vector<std::uint8_t> Le32(std::uint32_t v) {
  return {static_cast<std::uint8_t>(v), static_cast<std::uint8_t>(v >> 8),
          static_cast<std::uint8_t>(v >> 16), static_cast<std::uint8_t>(v >> 24)};
}
std::vector<std::uint8_t> Le64(std::uint64_t v) {
  std::vector<std::uint8_t> out;
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
  return out;
}
std::vector<std::uint8_t> Frame(std::uint8_t op, const std::string& key, std::uint64_t value_len,
                                std::size_t value_bytes_sent) {
  std::vector<std::uint8_t> f = {op};
  auto kl = Le32(static_cast<std::uint32_t>(key.size()));
  f.insert(f.end(), kl.begin(), kl.end());
  f.insert(f.end(), key.begin(), key.end());
  auto vl = Le64(value_len);
  f.insert(f.end(), vl.begin(), vl.end());
  f.insert(f.end(), value_bytes_sent, 0xAB);
  return f;
}

TEST(TcpRendezvous, MalformedFramesCloseOnlyThatConnection) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  const std::uint16_t port = server->port();
  auto before = ConnectTo(port);  // connected before the abuse
  ASSERT_NE(before, nullptr);
  ASSERT_TRUE(PutString(*before, "kept", "safe").ok());

  struct Case {
    const char* what;
    std::vector<std::uint8_t> bytes;
  };
  std::vector<std::uint8_t> garbage(1024);
  for (std::size_t i = 0; i < garbage.size(); ++i) garbage[i] = static_cast<std::uint8_t>(i * 37 + 11);
  std::vector<std::uint8_t> huge_key = {2};
  for (auto b : Le32(0xFFFFFFFFu)) huge_key.push_back(b);
  std::vector<std::uint8_t> get_then_put = Frame(3, "pending", 0, 0);
  auto put = Frame(2, "x", 1, 1);
  get_then_put.insert(get_then_put.end(), put.begin(), put.end());
  const std::vector<Case> cases = {
      {"unknown op", {0xFF, 0, 0, 0, 0}},
      {"op zero", {0x00, 1, 0, 0, 0}},
      {"key longer than 4 KiB", huge_key},
      {"empty key for PUT", Frame(2, "", 1, 1)},
      {"value longer than 64 MiB", Frame(2, "k", (64ull << 20) + 1, 16)},
      {"absurd value length", Frame(2, "k", ~0ull, 0)},
      {"GET with a value", Frame(3, "k", 5, 5)},
      {"ADD with a 3-byte delta", Frame(5, "k", 3, 3)},
      {"HELLO with a key", Frame(1, "k", 8, 8)},
      {"request while a GET is pending", get_then_put},
      {"random garbage", garbage},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    int fd = RawConnect(port);
    ASSERT_GE(fd, 0);
    SendRaw(fd, c.bytes);
    EXPECT_TRUE(ServerClosed(fd));
    ::close(fd);
  }
  // Truncated frames followed by the client vanishing.
  for (std::size_t cut : {1u, 3u, 7u, 12u}) {
    int fd = RawConnect(port);
    ASSERT_GE(fd, 0);
    auto f = Frame(2, "trunc", 100, 100);
    f.resize(cut);
    SendRaw(fd, f);
    ::close(fd);
  }

  // The server still serves the old client and new ones, with its state intact.
  ASSERT_TRUE(PutString(*before, "after", "still-alive").ok());
  auto fresh = ConnectTo(port);
  ASSERT_NE(fresh, nullptr);
  auto kept = GetString(*fresh, "kept", 5);
  ASSERT_TRUE(kept.ok()) << kept.status().ToString();
  EXPECT_EQ(*kept, "safe");
  auto after = GetString(*fresh, "after", 5);
  ASSERT_TRUE(after.ok()) << after.status().ToString();
  EXPECT_EQ(*after, "still-alive");
  // The abusive "pending" GET was dropped with its connection, and the rejected
  // PUTs stored nothing.
  EXPECT_EQ(fresh->Get("x", 0).status().code(), ErrorCode::kTimedOut);
  EXPECT_EQ(fresh->Get("k", 0).status().code(), ErrorCode::kTimedOut);
  ASSERT_TRUE(PutString(*fresh, "pending", "p").ok());
  auto p = GetString(*before, "pending", 5);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(*p, "p");
}

TEST(TcpRendezvous, ServerNeverAnsweringIsATimeoutNotAHang) {
  // A listener that accepts but never speaks (e.g. a hung process).
  int lfd = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(lfd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(lfd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(::listen(lfd, 4), 0);
  socklen_t len = sizeof addr;
  ASSERT_EQ(::getsockname(lfd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  auto c = TcpRendezvousClient::Connect("127.0.0.1", ntohs(addr.sin_port), 0.3, 0.3);
  ::close(lfd);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), ErrorCode::kTimedOut) << c.status().ToString();
}

}  // namespace
}  // namespace shardwire
