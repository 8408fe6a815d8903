#include "cli/serve_command.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <csignal>
#include <optional>

#include <sys/stat.h>

#include "cli/metrics_option.h"
#include "cli/option_checks.h"
#include "control/bearer_token.h"
#include "core/regular_file.h"
#include "shardwire/coordinator.h"

namespace shardwire::cli {
namespace {

struct ServeArgs {
  std::string host = "127.0.0.1";
  int port = kDefaultCoordinatorPort;
  std::string redis_url;
  std::string token_file;
  std::string tls_cert;
  std::string tls_key;
  std::optional<int> metrics_port;  // --metrics-port: serve /metrics (none: no metrics)
  CoordinatorServerOptions defaults;
};

// Largest token file read, bytes: the token and surrounding whitespace.
constexpr std::uint64_t kMaxTokenFileBytes = 64 << 10;

// The token from --token-file, else SHARDWIRE_TOKEN, else none; surrounding whitespace (a
// trailing newline, Windows line endings) removed. What a token may hold is checked by
// CoordinatorServer::Start. A token file others can read is warned about (README: chmod 600).
Result<std::string> LoadToken(const std::string& path) {
  if (path.empty()) return control::TokenFromEnvironment();
  // A regular file only (a FIFO would block the open with SIGINT/SIGTERM already blocked), and a
  // small one: a longer token is refused anyway (control::kMaxBearerTokenBytes).
  std::string text;
  if (Status s = ReadRegularFile(path, &text, kMaxTokenFileBytes); !s.ok()) {
    return InvalidArgument(fmt::format("cannot read the token file: {}", s.message()));
  }
  std::string t = control::TrimTokenText(text);
  if (t.empty()) return InvalidArgument(fmt::format("the token file '{}' is empty", path));
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0 && (st.st_mode & (S_IRWXG | S_IRWXO)) != 0) {
    // Through the logger, so --log-format json writes it as JSON like every other log line.
    spdlog::warn("shardwire serve: the token file '{}' is readable by others (mode {:03o}); chmod 600 it", path,
                 st.st_mode & 0777);
  }
  return t;
}

int Serve(const ServeArgs& a) {
  // SIGINT/SIGTERM are blocked before gRPC starts its threads (they inherit the
  // mask) and collected here with sigwait.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  CoordinatorServerOptions o = a.defaults;
  const bool v6 = a.host.find(':') != std::string::npos;
  o.listen_address = v6 ? fmt::format("[{}]:{}", a.host, a.port) : fmt::format("{}:{}", a.host, a.port);
  o.redis_url = a.redis_url;
  o.tls_cert_file = a.tls_cert;
  o.tls_key_file = a.tls_key;
  auto token = LoadToken(a.token_file);
  if (!token.ok()) {
    fmt::print(stderr, "shardwire serve: {}\n", token.status().ToString());
    return 1;
  }
  o.token = *token;
  // Declared before the server: the registry outlives it and the endpoint serving it.
  MetricsRegistry registry;
  if (a.metrics_port) o.metrics = &registry;
  auto metrics_http = StartMetricsEndpoint(a.metrics_port, registry, a.host, /*quiet=*/true);
  if (!metrics_http.ok()) {
    fmt::print(stderr, "shardwire serve: {}\n", metrics_http.status().ToString());
    return 1;
  }
  auto server = CoordinatorServer::Start(o);
  if (!server.ok()) {
    fmt::print(stderr, "shardwire serve: {}\n", server.status().ToString());
    return 1;
  }
  if (*metrics_http) fmt::print("shardwire metrics on {}\n", (*metrics_http)->url());
  fmt::print("shardwire coordinator listening on {} ({} state {}, {}, {})\n", (*server)->address(),
             o.redis_url.empty() ? "in-memory" : "redis", (*server)->state_id(),
             o.tls_cert_file.empty() ? "plaintext" : "TLS", o.token.empty() ? "no token" : "token required");
  std::fflush(stdout);
  int sig = 0;
  sigwait(&signals, &sig);
  fmt::print("shardwire coordinator: signal {}, shutting down\n", sig);
  std::fflush(stdout);
  (*server)->Shutdown(1);
  return 0;
}

}  // namespace

void AddServeCommand(CLI::App& app, int* exit_code) {
  auto args = std::make_shared<ServeArgs>();
  CLI::App* cmd = app.add_subcommand(
      "serve", "run a coordinator (rendezvous, weight-source registry, RL jobs) until SIGINT/SIGTERM");
  cmd->add_option("--host", args->host, "address to listen on (0.0.0.0 or :: for every interface)")
      ->capture_default_str();
  cmd->add_option("--port", args->port, "TCP port (0: pick a free one)")
      ->check(CLI::Range(0, 65535))
      ->capture_default_str();
  cmd->add_option("--redis", args->redis_url, "keep state in Redis, redis://host:port[/db] (default: in memory)")
      ->check(NonEmpty("redis://host:port[/db]"));
  cmd->add_option("--token-file", args->token_file,
                  "file holding the bearer token every call must carry (default: SHARDWIRE_TOKEN, else none)");
  cmd->add_option("--tls-cert", args->tls_cert, "PEM certificate chain (TLS; needs --tls-key)");
  cmd->add_option("--tls-key", args->tls_key, "PEM private key (TLS; needs --tls-cert)");
  cmd->add_option("--stale-after", args->defaults.source_stale_after_s,
                  "seconds without heartbeat after which a source is STALE")
      ->capture_default_str()
      ->check(PositiveNumber());
  cmd->add_option("--delete-after", args->defaults.source_delete_after_s,
                  "seconds without heartbeat after which a source is deleted")
      ->capture_default_str()
      ->check(PositiveNumber());
  cmd->add_option("--mark-hold", args->defaults.source_mark_hold_s,
                  "seconds a source a loader marked STALE with hold (it reported its own bytes bad) stays STALE "
                  "however it heartbeats (0: no hold)")
      ->capture_default_str()
      ->check(NonNegativeNumber());
  cmd->add_option("--member-expire-after", args->defaults.member_expire_after_s,
                  "seconds without heartbeat after which a job member leaves its job")
      ->capture_default_str()
      ->check(PositiveNumber());
  AddMetricsPortOption(cmd, &args->metrics_port);
  cmd->add_option("--reaper-interval", args->defaults.reaper_interval_s, "seconds between reaper passes")
      ->capture_default_str()
      ->check(PositiveNumber());
  cmd->callback([args, exit_code] { *exit_code = Serve(*args); });
}

}  // namespace shardwire::cli
