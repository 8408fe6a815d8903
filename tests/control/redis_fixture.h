// A real redis-server (Debian's /usr/bin/redis-server) for tests: started on a
// free loopback port in its own temporary directory, answered PING before the
// test goes on (bounded), killed and reaped by the destructor. Nothing has to be
// started by hand, so `.ci/run` works on a fresh machine with the Debian
// package installed; without it, tests skip with a reason (RedisServer::Skip...).
//
// Persistence: "--save '' --appendonly no" unless `aof` is asked for (a test
// that restarts Redis itself and needs its data back).
//
// Thread-safety: one test thread drives the object.
#pragma once

#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "die_with_test_process.h"

namespace shardwire::testing_util {

inline constexpr const char* kRedisServerPath = "/usr/bin/redis-server";

/// A free TCP port on 127.0.0.1 (bound to port 0, then released).
inline int FreeLoopbackPort() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof(a);
  int port = -1;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0) {
    port = ntohs(a.sin_port);
  }
  ::close(fd);
  return port;
}

class RedisServer {
 public:
  /// True when the Debian redis-server binary is installed.
  static bool Available() { return ::access(kRedisServerPath, X_OK) == 0; }
  static std::string SkipReason() {
    return std::string(kRedisServerPath) + " is not installed (Debian package redis-server; scripts/install-deps.sh)";
  }

  /// Starts a server; nullptr with `*error` set when it did not answer PING
  /// within 10 s (three ports are tried).
  static std::unique_ptr<RedisServer> Start(std::string* error, bool aof = false) {
    std::unique_ptr<RedisServer> s(new RedisServer());
    s->aof_ = aof;
    char tmpl[] = "/tmp/shardwire-redis-XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) {
      *error = "mkdtemp failed";
      return nullptr;
    }
    s->dir_ = tmpl;
    for (int attempt = 0; attempt < 3; ++attempt) {
      s->port_ = FreeLoopbackPort();
      if (s->port_ > 0 && s->Launch() && s->WaitForPing(10.0)) return s;
      s->Kill();
    }
    *error =
        "redis-server did not answer PING on 127.0.0.1 within 10 s (log: " + s->dir_ + "/redis.log): " + s->LogTail();
    return nullptr;
  }

  ~RedisServer() {
    Kill();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  int port() const { return port_; }
  std::string url() const { return "redis://127.0.0.1:" + std::to_string(port_); }
  bool running() const { return pid_ > 0; }
  pid_t pid() const { return pid_; }

  /// SIGKILL and reap (idempotent).
  void Kill() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
  }

  /// Starts the server again on the same port (after Kill); false when it did
  /// not answer PING within 10 s.
  bool Restart() {
    Kill();
    for (int i = 0; i < 50; ++i) {  // the port may linger briefly after a kill
      if (Launch() && WaitForPing(10.0)) return true;
      Kill();
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return false;
  }

  /// Redis's clock (TIME), unix milliseconds; -1 when the command fails.
  long long TimeMs() const {
    timeval tv{5, 0};
    redisContext* c = redisConnectWithTimeout("127.0.0.1", port_, tv);
    long long ms = -1;
    if (c != nullptr && c->err == 0) {
      auto* r = static_cast<redisReply*>(redisCommand(c, "TIME"));
      if (r != nullptr && r->type == REDIS_REPLY_ARRAY && r->elements == 2)
        ms = std::stoll(std::string(r->element[0]->str, r->element[0]->len)) * 1000 +
             std::stoll(std::string(r->element[1]->str, r->element[1]->len)) / 1000;
      if (r != nullptr) freeReplyObject(r);
    }
    if (c != nullptr) redisFree(c);
    return ms;
  }

  /// Runs one command on a fresh connection (for tests that inject records);
  /// returns the reply as text ("(nil)", the string, the integer, or "ERR ...").
  std::string Command(const std::vector<std::string>& argv) const {
    timeval tv{5, 0};
    redisContext* c = redisConnectWithTimeout("127.0.0.1", port_, tv);
    if (c == nullptr || c->err != 0) {
      if (c != nullptr) redisFree(c);
      return "ERR connect";
    }
    redisSetTimeout(c, tv);
    std::vector<const char*> p;
    std::vector<size_t> l;
    for (const auto& a : argv) {
      p.push_back(a.data());
      l.push_back(a.size());
    }
    auto* r = static_cast<redisReply*>(redisCommandArgv(c, static_cast<int>(argv.size()), p.data(), l.data()));
    std::string out;
    if (r == nullptr) {
      out = "ERR io";
    } else {
      switch (r->type) {
        case REDIS_REPLY_NIL:
          out = "(nil)";
          break;
        case REDIS_REPLY_INTEGER:
          out = std::to_string(r->integer);
          break;
        case REDIS_REPLY_ERROR:
          out = "ERR " + std::string(r->str, r->len);
          break;
        case REDIS_REPLY_ARRAY:
          out = "(array " + std::to_string(r->elements) + ")";
          break;
        default:
          out = std::string(r->str, r->len);
      }
      freeReplyObject(r);
    }
    redisFree(c);
    return out;
  }

 private:
  RedisServer() = default;

  bool Launch() {
    std::vector<std::string> args = {kRedisServerPath,
                                     "--port",
                                     std::to_string(port_),
                                     "--bind",
                                     "127.0.0.1",
                                     "--save",
                                     "",
                                     "--appendonly",
                                     aof_ ? "yes" : "no",
                                     "--appendfsync",
                                     "always",
                                     "--dir",
                                     dir_,
                                     "--logfile",
                                     dir_ + "/redis.log",
                                     "--daemonize",
                                     "no"};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    // fork + exec rather than posix_spawn, for two things the child must do first: die
    // with the test process (die_with_test_process.h), and not hold the test's
    // stdout/stderr, which ctest reads to the end. Only async-signal-safe calls after fork.
    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    if (pid < 0) return false;
    if (pid == 0) {
      DieWithTestProcess(parent);
      const int devnull = ::open("/dev/null", O_RDWR);
      if (devnull >= 0) {
        ::dup2(devnull, STDIN_FILENO);
        ::dup2(devnull, STDOUT_FILENO);
        ::dup2(devnull, STDERR_FILENO);
      }
      ::execv(kRedisServerPath, argv.data());
      ::_exit(127);
    }
    pid_ = pid;
    return true;
  }

  bool WaitForPing(double seconds) const {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    while (std::chrono::steady_clock::now() < deadline) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        const_cast<RedisServer*>(this)->pid_ = -1;  // exited (port taken?)
        return false;
      }
      if (Command({"PING"}) == "PONG") return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  }

  std::string LogTail() const {
    std::ifstream in(dir_ + "/redis.log");
    std::stringstream ss;
    ss << in.rdbuf();
    std::string s = ss.str();
    return s.size() > 600 ? s.substr(s.size() - 600) : s;
  }

  std::string dir_;
  int port_ = -1;
  pid_t pid_ = -1;
  bool aof_ = false;
};

}  // namespace shardwire::testing_util
