// P2P loading across hosts, simulated (issue 8 item 8): the coordinator (`shardwire
// serve`), a seed instance (`shardwire seed`, tp=2) and loaders (`shardwire load`,
// tp=4 and tp=1, --verify-against the checkpoint) each run in their own network
// namespace (`ip netns exec`), the three joined by veth pairs to one bridge that
// lives in a fourth namespace (nothing changes in the test's own namespace). UCX is
// limited to TCP on the veth device (UCX_TLS=tcp,self, UCX_NET_DEVICES), gRPC goes
// over the same veths. The loader exits 0 only when every byte it loaded equals its
// own independent read of the checkpoint.
//
// Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN for `ip netns exec`) and iproute2;
// otherwise GTEST_SKIP with the reason. Namespace and device names carry the
// test's pid (unique per run) and are deleted by the fixture's destructor.
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "cli/cli_process.h"
#include "shardwire/checkpoint_generator.h"
#include "shardwire/model_config.h"
#include "shardwire/model_description.h"

namespace shardwire {
namespace {

namespace fs = std::filesystem;
using testing::AwaitOutput;
using testing::Process;
using testing::Slurp;

constexpr const char* kLlama = R"({"model_type": "llama", "hidden_size": 256, "num_hidden_layers": 2,
    "num_attention_heads": 8, "num_key_value_heads": 8, "intermediate_size": 512, "vocab_size": 1024,
    "torch_dtype": "bfloat16"})";

int Shell(const std::string& cmd) { return std::system((cmd + " >/dev/null 2>&1").c_str()); }

// The first line `cmd` prints, as an unsigned number (0 when it prints none).
std::uint64_t ShellNumber(const std::string& cmd) {
  FILE* p = ::popen((cmd + " 2>/dev/null").c_str(), "r");
  if (p == nullptr) return 0;
  unsigned long long v = 0;
  if (std::fscanf(p, "%llu", &v) != 1) v = 0;
  ::pclose(p);
  return v;
}

// Namespaces <prefix>h (the bridge) and one per host, each host joined to the bridge
// by a veth pair; deleted on destruction (deleting a namespace deletes its veth ends).
class Hosts {
 public:
  explicit Hosts(const std::vector<std::string>& names) {
    const std::string id = std::to_string(::getpid() % 100000);
    prefix_ = "swp2p" + id;
    subnet_ = fmt::format("10.233.{}.", ::getpid() % 250 + 1);
    hub_ = prefix_ + "h";
    if (Shell("ip netns add " + hub_) != 0) {
      error = "`ip netns add` failed (needs root / CAP_NET_ADMIN and iproute2)";
      return;
    }
    namespaces_.push_back(hub_);
    std::vector<std::string> steps = {"ip -n " + hub_ + " link add swbr type bridge",
                                      "ip -n " + hub_ + " link set swbr up"};
    for (std::size_t i = 0; i < names.size(); ++i) {
      Host h;
      h.ns = prefix_ + names[i];
      h.dev = fmt::format("swv{}{}", i, id);  // at most 15 characters
      h.ip = subnet_ + std::to_string(i + 1);
      const std::string peer = fmt::format("swp{}{}", i, id);
      if (Shell("ip netns add " + h.ns) != 0) {
        error = "`ip netns add " + h.ns + "` failed";
        return;
      }
      namespaces_.push_back(h.ns);
      steps.insert(steps.end(), {
                                    "ip link add " + h.dev + " type veth peer name " + peer,
                                    "ip link set " + h.dev + " netns " + h.ns,
                                    "ip link set " + peer + " netns " + hub_,
                                    "ip -n " + hub_ + " link set " + peer + " master swbr",
                                    "ip -n " + hub_ + " link set " + peer + " up",
                                    "ip -n " + h.ns + " addr add " + h.ip + "/24 dev " + h.dev,
                                    "ip -n " + h.ns + " link set " + h.dev + " up",
                                    "ip -n " + h.ns + " link set lo up",
                                });
      hosts[names[i]] = h;
    }
    for (const auto& s : steps) {
      if (Shell(s) != 0) {
        error = "`" + s + "` failed";
        return;
      }
    }
  }
  ~Hosts() {
    for (const auto& ns : namespaces_) Shell("ip netns del " + ns);
  }
  Hosts(const Hosts&) = delete;
  Hosts& operator=(const Hosts&) = delete;

  struct Host {
    std::string ns, dev, ip;
  };
  std::map<std::string, Host> hosts;
  std::string error;

  // Bytes received so far on `host`'s veth (its rx counter inside its namespace).
  std::uint64_t ReceivedBytes(const std::string& host) const {
    const Host& h = hosts.at(host);
    return ShellNumber("ip netns exec " + h.ns + " cat /sys/class/net/" + h.dev + "/statistics/rx_bytes");
  }

  // The command line running `shardwire args...` inside `host`'s namespace, UCX on
  // TCP over its veth only, no proxy for gRPC.
  std::vector<std::string> Exec(const std::string& host, const std::vector<std::string>& args) const {
    const Host& h = hosts.at(host);
    std::vector<std::string> argv = {"netns",
                                     "exec",
                                     h.ns,
                                     "env",
                                     "-u",
                                     "http_proxy",
                                     "-u",
                                     "https_proxy",
                                     "-u",
                                     "grpc_proxy",
                                     "UCX_TLS=tcp,self",
                                     "UCX_NET_DEVICES=" + h.dev,
                                     SHARDWIRE_BIN};
    argv.insert(argv.end(), args.begin(), args.end());
    return argv;
  }

 private:
  std::string prefix_, subnet_, hub_;
  std::vector<std::string> namespaces_;
};

TEST(P2pAcrossHosts, CoordinatorSeedAndLoadersInThreeNamespacesLoadMixedTpByteForByte) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) to create network namespaces";
  if (Shell("ip -V") != 0) GTEST_SKIP() << "iproute2's `ip` is not installed";
  if (Shell("ip netns list") != 0) GTEST_SKIP() << "`ip netns` is not available";
  const fs::path dir = fs::path(SHARDWIRE_TEST_WORK_DIR) / fmt::format("p2p-netns-{}", ::getpid());
  fs::create_directories(dir);
  auto config = ParseModelConfig(kLlama, "test");
  ASSERT_TRUE(config.ok());
  auto model = DescribeModel(*config);
  ASSERT_TRUE(model.ok());
  const std::string ckpt = (dir / "ckpt").string();
  ASSERT_TRUE(GenerateCheckpointDirectory(*model, ckpt, {.seed = 5}).ok());
  auto out = [&](const std::string& name) { return (dir / (name + ".out")).string(); };

  bool failed = false;
  {
    Hosts net({"c", "s", "l"});
    if (!net.error.empty()) GTEST_SKIP() << "cannot build the namespaces here: " << net.error;
    const std::string coordinator = net.hosts.at("c").ip + ":50551";
    Process serve("ip", net.Exec("c", {"serve", "--host", net.hosts.at("c").ip, "--port", "50551"}), out("serve"));
    ASSERT_TRUE(AwaitOutput(out("serve"), "listening on", serve, 30)) << Slurp(out("serve"));
    Process seed("ip",
                 net.Exec("s", {"seed", "--coordinator", coordinator, "--checkpoint", ckpt, "--layout", "tp=2",
                                "--instance-id", "seed"}),
                 out("seed"));
    ASSERT_TRUE(AwaitOutput(out("seed"), "SEED READY", seed, 60)) << Slurp(out("seed"));
    for (const char* layout : {"tp=4", "tp=1"}) {
      const std::string id = std::string("new-") + (layout + 3);
      const std::uint64_t rx_before = net.ReceivedBytes("l");
      Process load("ip",
                   net.Exec("l", {"load", "--coordinator", coordinator, "--config", ckpt + "/config.json", "--layout",
                                  layout, "--instance-id", id, "--verify-against", ckpt}),
                   out(id));
      const auto rc = load.Wait(120);
      const std::string text = Slurp(out(id));
      ASSERT_TRUE(rc.has_value()) << id << " did not finish: " << text;
      EXPECT_EQ(*rc, 0) << text;
      EXPECT_NE(text.find("verified=byte-for-byte"), std::string::npos) << text;
      // Every byte came from the seed in the other namespace (no disk fallback).
      EXPECT_NE(text.find("sources=seed:"), std::string::npos) << text;
      EXPECT_NE(text.find("disk_bytes=0 "), std::string::npos) << text;
      // ... and crossed the loader's veth: it received at least the bytes loaded.
      const auto at = text.find(" bytes=");
      ASSERT_NE(at, std::string::npos) << text;
      const std::uint64_t loaded = std::stoull(text.substr(at + 7));
      EXPECT_GT(loaded, 1000000u) << text;
      EXPECT_GE(net.ReceivedBytes("l") - rx_before, loaded) << "the loader's veth received fewer bytes than it loaded";
    }
    seed.Signal(SIGTERM);
    EXPECT_EQ(seed.Wait(30).value_or(-1), 0) << Slurp(out("seed"));
    serve.Signal(SIGTERM);
    EXPECT_EQ(serve.Wait(30).value_or(-1), 0) << Slurp(out("serve"));
    failed = HasFailure();
  }
  if (failed || std::getenv("SW_P2P_KEEP")) {
    for (const char* name : {"serve", "seed", "new-4", "new-1"})
      std::fprintf(stderr, "--- %s\n%s", name, Slurp(out(name)).c_str());
  }
  std::error_code ec;
  fs::remove_all(dir, ec);
}

}  // namespace
}  // namespace shardwire
