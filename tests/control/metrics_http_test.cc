// The /metrics endpoint (MetricsHttpServer) scraped with a real HTTP client (cpp-httplib's
// Client) on loopback, its typed errors (bad port, port in use), and the coordinator's metrics
// (requests by method and status code, sources by state) after real gRPC calls, with the state
// in memory and in a real redis-server. The expected values are the calls this test made.
#include <gtest/gtest.h>
#include <httplib.h>

#include <fmt/format.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <map>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>

#include "control/redis_fixture.h"
#include "shardwire/coordinator.h"
#include "shardwire/metrics.h"
#include "shardwire/metrics_http.h"

namespace shardwire {
namespace {

// Sample lines of a text-format scrape: "name{labels}" -> value. Comment lines must be HELP or TYPE.
std::map<std::string, double> ParseScrape(const std::string& body) {
  std::map<std::string, double> out;
  std::istringstream in(body);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    if (line[0] == '#') {
      EXPECT_TRUE(line.rfind("# HELP ", 0) == 0 || line.rfind("# TYPE ", 0) == 0) << line;
      continue;
    }
    const auto space = line.rfind(' ');
    EXPECT_NE(space, std::string::npos) << line;
    if (space == std::string::npos) continue;
    EXPECT_EQ(out.count(line.substr(0, space)), 0u) << "series twice: " << line;
    out[line.substr(0, space)] = std::stod(line.substr(space + 1));
  }
  return out;
}

// GET /metrics with cpp-httplib's client; checks status and content type.
std::map<std::string, double> Scrape(int port, std::string* raw = nullptr) {
  httplib::Client client("127.0.0.1", port);
  client.set_connection_timeout(5, 0);
  client.set_read_timeout(5, 0);
  auto res = client.Get("/metrics");
  EXPECT_TRUE(res) << "GET /metrics on port " << port << " failed: " << httplib::to_string(res.error());
  if (!res) return {};
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(res->get_header_value("Content-Type"), std::string(MetricsRegistry::kContentType));
  if (raw != nullptr) *raw = res->body;
  return ParseScrape(res->body);
}

TEST(MetricsHttp, ServesTheRegistryToARealHttpClient) {
  MetricsRegistry registry;
  auto c = registry.AddCounter("scrape_test_total", "Things.", {"kind"});
  ASSERT_TRUE(c.ok());
  (*c)->Labels({"a\"b"}).Increment(41);
  auto http = MetricsHttpServer::Start(registry, {.port = 0});
  ASSERT_TRUE(http.ok()) << http.status().ToString();
  const int port = (*http)->port();
  ASSERT_GT(port, 0);
  EXPECT_EQ((*http)->url(), "http://127.0.0.1:" + std::to_string(port) + "/metrics");
  std::string raw;
  auto m = Scrape(port, &raw);
  EXPECT_EQ(raw, registry.Render());
  EXPECT_EQ(m["scrape_test_total{kind=\"a\\\"b\"}"], 41);
  (*c)->Labels({"a\"b"}).Increment();
  m = Scrape(port);
  EXPECT_EQ(m["scrape_test_total{kind=\"a\\\"b\"}"], 42) << "a scrape renders the registry as it is now";
  httplib::Client client("127.0.0.1", port);
  auto other = client.Get("/other");
  ASSERT_TRUE(other);
  EXPECT_EQ(other->status, 404);
}

TEST(MetricsHttp, BadPortAndPortInUseAreTypedErrorsNamingThePort) {
  MetricsRegistry registry;
  auto bad = MetricsHttpServer::Start(registry, {.port = 70000});
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("70000"), std::string::npos) << bad.status().ToString();
  auto negative = MetricsHttpServer::Start(registry, {.port = -1});
  EXPECT_EQ(negative.status().code(), ErrorCode::kInvalidArgument);

  auto first = MetricsHttpServer::Start(registry, {.port = 0});
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  const int port = (*first)->port();
  auto second = MetricsHttpServer::Start(registry, {.port = port});
  ASSERT_FALSE(second.ok()) << "a second server bound port " << port << " that the first one listens on";
  EXPECT_EQ(second.status().code(), ErrorCode::kIoError);
  EXPECT_NE(second.status().message().find(std::to_string(port)), std::string::npos) << second.status().ToString();
  std::string raw = "unset";
  Scrape(port, &raw);  // the first still answers (an empty registry renders as "")
  EXPECT_EQ(raw, "");
  auto not_local = MetricsHttpServer::Start(registry, {.host = "203.0.113.7", .port = 0});
  EXPECT_EQ(not_local.status().code(), ErrorCode::kIoError) << not_local.status().ToString();
}

// A raw TCP connection to 127.0.0.1:port (the tests below need requests cpp-httplib's client
// would not send: a body never sent, a request that never ends). -1 on failure.
int ConnectRaw(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<std::uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd < 0 || ::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    if (fd >= 0) ::close(fd);
    return -1;
  }
  timeval tv{.tv_sec = 10, .tv_usec = 0};  // no read waits forever
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  return fd;
}

bool SendAll(int fd, std::string_view bytes) {
  return ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(bytes.size());
}

// Reads until the end of a response's header block (or EOF / the 10 s receive timeout).
std::string ReadResponseHead(int fd) {
  std::string got;
  char c = 0;
  while (got.find("\r\n\r\n") == std::string::npos && ::recv(fd, &c, 1, 0) == 1) got.push_back(c);
  return got;
}

TEST(MetricsHttp, OtherMethodsAreRefusedBeforeTheirBodyIsRead) {
  MetricsRegistry registry;
  auto http = MetricsHttpServer::Start(registry, {.port = 0});
  ASSERT_TRUE(http.ok()) << http.status().ToString();
  // A chunked POST whose body never comes: answered at once with 405; a server that read the
  // body first (all of it, unbounded, in cpp-httplib 0.11) would wait for it instead.
  for (const char* method : {"POST", "PUT", "DELETE"}) {
    const int fd = ConnectRaw((*http)->port());
    ASSERT_GE(fd, 0);
    ASSERT_TRUE(
        SendAll(fd, fmt::format("{} /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", method)));
    const std::string head = ReadResponseHead(fd);
    ::close(fd);
    EXPECT_EQ(head.rfind("HTTP/1.1 405", 0), 0u) << method << " got: " << head;
    EXPECT_NE(head.find("Allow: GET, HEAD"), std::string::npos) << head;
  }
  Scrape((*http)->port());  // GET still served
}

TEST(MetricsHttp, AClientTricklingARequestCannotHoldUpDestruction) {
  MetricsRegistry registry;
  auto http = MetricsHttpServer::Start(registry, {.port = 0});
  ASSERT_TRUE(http.ok()) << http.status().ToString();
  const int fd = ConnectRaw((*http)->port());
  ASSERT_GE(fd, 0);
  // One whole request first, so a worker owns the connection (keep-alive) before the trickle.
  ASSERT_TRUE(SendAll(fd, "HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n"));
  ASSERT_EQ(ReadResponseHead(fd).rfind("HTTP/1.1 200", 0), 0u);
  // Then a request that never ends: a header line every 200 ms, each well inside the server's
  // 5 s read timeout, until the server cuts the connection (or 60 s, when the test fails).
  std::atomic<bool> cut{false};
  std::thread trickle([&] {
    (void)SendAll(fd, "GET /metrics HTTP/1.1\r\n");
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (std::chrono::steady_clock::now() < give_up) {
      char c = 0;
      const ssize_t n = ::recv(fd, &c, 1, MSG_DONTWAIT);
      if (n == 0 || !SendAll(fd, "X-Slow: 1\r\n")) {
        cut = true;
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(500));  // a few lines in
  http->reset();  // returns once the trickling connection is shut down under its worker
  trickle.join();
  ::close(fd);
  EXPECT_TRUE(cut.load()) << "the destructor returned only after the client gave up";
}

SourceRecord Source(const std::string& instance, int rank) {
  SourceRecord r;
  r.model_identity = "identity-1";
  r.instance_id = instance;
  r.rank = rank;
  r.world_size = 2;
  r.layout = "tp=2";
  r.layout_fingerprint = "abc123";
  r.metadata = std::vector<std::byte>(64, std::byte{7});
  return r;
}

// Registers 3 sources, heartbeats one twice, marks one STALE and a missing one; the scrape must
// count exactly those calls and show 2 READY, 1 STALE.
void CheckCoordinatorMetrics(const std::string& redis_url) {
  MetricsRegistry registry;
  CoordinatorServerOptions so;
  so.redis_url = redis_url;
  so.metrics = &registry;
  so.source_stale_after_s = 600;  // only the marked source is STALE, however slowly the test runs
  so.source_delete_after_s = 1200;
  auto server = CoordinatorServer::Start(so);
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  auto http = MetricsHttpServer::Start(registry);
  ASSERT_TRUE(http.ok()) << http.status().ToString();
  CoordinatorClientOptions co;
  co.address = (*server)->address();
  auto client = CoordinatorClient::Connect(co);
  ASSERT_TRUE(client.ok()) << client.status().ToString();

  std::vector<std::string> ids;
  for (auto [instance, rank] : {std::pair{"i1", 0}, {"i1", 1}, {"i2", 0}}) {
    auto r = (*client)->RegisterSource(Source(instance, rank));
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    ids.push_back(r->source_id);
  }
  auto m = Scrape((*http)->port());
  EXPECT_EQ(m.at("shardwire_coordinator_sources{state=\"READY\"}"), 3);
  EXPECT_EQ(m.at("shardwire_coordinator_sources{state=\"STALE\"}"), 0);  // present, and 0

  ASSERT_TRUE((*client)->HeartbeatSource(ids[0]).ok());
  ASSERT_TRUE((*client)->HeartbeatSource(ids[0]).ok());
  ASSERT_TRUE((*client)->MarkSourceStale(ids[1], "test").ok());
  EXPECT_EQ((*client)->MarkSourceStale("src-00000000deadbeef", "test").code(), ErrorCode::kNotFound);
  auto listed = (*client)->ListSources("identity-1", std::nullopt);
  ASSERT_TRUE(listed.ok());

  m = Scrape((*http)->port());
  EXPECT_EQ(m["shardwire_coordinator_sources{state=\"READY\"}"], 2);
  EXPECT_EQ(m["shardwire_coordinator_sources{state=\"STALE\"}"], 1);
  EXPECT_EQ(m["shardwire_coordinator_requests_total{method=\"SourceRegistry/Register\",code=\"OK\"}"], 3);
  EXPECT_EQ(m["shardwire_coordinator_requests_total{method=\"SourceRegistry/Heartbeat\",code=\"OK\"}"], 2)
      << "the asynchronous heartbeat method is counted too";
  EXPECT_EQ(m["shardwire_coordinator_requests_total{method=\"SourceRegistry/MarkStale\",code=\"OK\"}"], 1);
  EXPECT_EQ(m["shardwire_coordinator_requests_total{method=\"SourceRegistry/MarkStale\",code=\"NOT_FOUND\"}"], 1);
  EXPECT_EQ(m["shardwire_coordinator_requests_total{method=\"SourceRegistry/List\",code=\"OK\"}"], 1);

  ASSERT_TRUE((*client)->DeregisterSource(ids[2]).ok());
  m = Scrape((*http)->port());
  EXPECT_EQ(m["shardwire_coordinator_sources{state=\"READY\"}"], 1);
  // The collector reads the server's state: it must be gone from the registry with the server.
  http->reset();
  server->reset();
  EXPECT_EQ(registry.Render().find("shardwire_coordinator_sources"), std::string::npos);
}

TEST(CoordinatorMetrics, RequestsAndSourcesByStateInMemory) { CheckCoordinatorMetrics(""); }

TEST(CoordinatorMetrics, RequestsAndSourcesByStateOnRedis) {
  if (!testing_util::RedisServer::Available()) GTEST_SKIP() << testing_util::RedisServer::SkipReason();
  std::string error;
  auto redis = testing_util::RedisServer::Start(&error);
  ASSERT_NE(redis, nullptr) << error;
  CheckCoordinatorMetrics(redis->url());
}

TEST(CoordinatorMetrics, NoRegistryMeansNoMetricsAndASecondCoordinatorIsRefused) {
  MetricsRegistry registry;
  CoordinatorServerOptions so;
  so.metrics = &registry;
  auto a = CoordinatorServer::Start(so);
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  auto b = CoordinatorServer::Start(so);
  EXPECT_EQ(b.status().code(), ErrorCode::kAlreadyExists) << "two coordinators would report one sources gauge";
  CoordinatorServerOptions plain;
  auto c = CoordinatorServer::Start(plain);
  ASSERT_TRUE(c.ok());
}

}  // namespace
}  // namespace shardwire
