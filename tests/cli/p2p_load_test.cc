// P2P model loading across real processes: the real coordinator (gRPC on loopback)
// in the test process, `shardwire seed` and `shardwire load` processes talking UCX.
// Every load runs with --verify-against: the loader compares every byte with its own
// independent read of the checkpoint (LoadShardsFromCheckpoint) and exits non-zero
// on any difference.
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fcntl.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "cli/cli_process.h"
#include "shardwire/checkpoint_generator.h"
#include "shardwire/coordinator.h"
#include "shardwire/model_config.h"
#include "shardwire/model_description.h"

#include <fmt/format.h>

namespace shardwire {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using testing::Process;
using testing::Slurp;

// 8 heads and dims divisible by 8, so tp = 1, 2, 4, 8 all apply.
constexpr const char* kLlama = R"({"model_type": "llama", "hidden_size": 256, "num_hidden_layers": 2,
    "num_attention_heads": 8, "num_key_value_heads": 8, "intermediate_size": 512, "vocab_size": 1024,
    "torch_dtype": "bfloat16"})";

class P2pLoadProcessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(SHARDWIRE_TEST_WORK_DIR) / fmt::format("p2p-{}-{}", ::getpid(), counter_++);
    fs::create_directories(dir_);
    auto config = ParseModelConfig(kLlama, "test");
    ASSERT_TRUE(config.ok());
    auto model = DescribeModel(*config);
    ASSERT_TRUE(model.ok());
    ASSERT_TRUE(GenerateCheckpointDirectory(*model, (dir_ / "ckpt").string(), {.seed = 3}).ok());
    CoordinatorServerOptions so;
    so.source_stale_after_s = 5;
    auto server = CoordinatorServer::Start(so);
    ASSERT_TRUE(server.ok()) << server.status().ToString();
    server_ = std::move(*server);
    CoordinatorClientOptions co;
    co.address = server_->address();
    auto client = CoordinatorClient::Connect(co);
    ASSERT_TRUE(client.ok());
    client_ = std::move(*client);
  }
  void TearDown() override {
    if (HasFailure() || std::getenv("SW_P2P_KEEP")) {
      for (const auto& e : fs::directory_iterator(dir_)) {
        if (e.path().extension() == ".out")
          std::fprintf(stderr, "--- %s\n%s", e.path().c_str(), Slurp(e.path()).c_str());
      }
    }
    processes_.clear();
    server_.reset();
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  std::string Ckpt() const { return (dir_ / "ckpt").string(); }
  std::string Out(const std::string& name) const { return (dir_ / (name + ".out")).string(); }

  Process& Seed(const std::string& id, const std::string& layout, double bandwidth = 0) {
    std::vector<std::string> args = {
        "seed", "--coordinator", server_->address(), "--checkpoint", Ckpt(), "--layout", layout, "--instance-id", id};
    if (bandwidth > 0) args.insert(args.end(), {"--bandwidth", fmt::format("{:.0f}", bandwidth)});
    processes_.push_back(std::make_unique<Process>(SHARDWIRE_BIN, args, Out(id)));
    return *processes_.back();
  }

  void AwaitReady(const std::string& id, int world) {
    const auto deadline = Clock::now() + std::chrono::seconds(60);
    while (Clock::now() < deadline) {
      auto list = client_->ListSources("", SourceState::kReady);
      ASSERT_TRUE(list.ok());
      int n = 0;
      for (const auto& r : *list) n += r.instance_id == id;
      if (n == world) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    FAIL() << id << " never became READY: " << Slurp(Out(id));
  }

  Process& Load(const std::string& id, const std::string& layout, std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {"load",
                                     "--coordinator",
                                     server_->address(),
                                     "--config",
                                     Ckpt() + "/config.json",
                                     "--layout",
                                     layout,
                                     "--instance-id",
                                     id,
                                     "--verify-against",
                                     Ckpt(),
                                     "--stall-timeout",
                                     "1"};
    args.insert(args.end(), extra.begin(), extra.end());
    processes_.push_back(std::make_unique<Process>(SHARDWIRE_BIN, args, Out(id)));
    return *processes_.back();
  }

  // Waits for a load to exit 0 with a verified LOADED line; returns its output.
  std::string ExpectLoaded(Process& p, const std::string& id) {
    const auto rc = p.Wait(120);
    const std::string out = Slurp(Out(id));
    EXPECT_TRUE(rc.has_value()) << id << " did not finish: " << out;
    EXPECT_EQ(rc.value_or(-1), 0) << out;
    EXPECT_NE(out.find("verified=byte-for-byte"), std::string::npos) << out;
    return out;
  }

  static inline int counter_ = 0;
  fs::path dir_;
  std::unique_ptr<CoordinatorServer> server_;
  std::unique_ptr<CoordinatorClient> client_;
  std::vector<std::unique_ptr<Process>> processes_;
};

TEST_F(P2pLoadProcessTest, MixedTpLoadsFromRealProcesses) {
  Seed("seed", "tp=2");
  AwaitReady("seed", 2);
  for (const char* layout : {"tp=4", "tp=1", "tp=8"}) {
    const std::string id = std::string("new-") + (layout + 3);
    const std::string out = ExpectLoaded(Load(id, layout), id);
    EXPECT_NE(out.find("sources=seed:"), std::string::npos) << out;
    EXPECT_NE(out.find("disk_bytes=0 "), std::string::npos) << out;
  }
}

TEST_F(P2pLoadProcessTest, Tp4SourceToTp2AndLoadedInstanceServes) {
  Seed("a-seed", "tp=4");
  AwaitReady("a-seed", 4);
  Process& first = Load("b-first", "tp=1", {"--serve"});
  AwaitReady("b-first", 1);
  const std::string out = ExpectLoaded(Load("c-second", "tp=2"), "c-second");
  // Both the seed and the loaded instance served the second load.
  EXPECT_NE(out.find("a-seed:"), std::string::npos) << out;
  EXPECT_NE(out.find("b-first:"), std::string::npos) << out;
  first.Signal(SIGTERM);
  EXPECT_EQ(first.Wait(30).value_or(-1), 0);
}

TEST_F(P2pLoadProcessTest, SourceKilledMidLoadIsReplacedByTheOthers) {
  Seed("a-victim", "tp=2", 300e3);  // its share (~1.8 MB) takes ~3 s at 300 KB/s per rank
  Seed("b-healthy", "tp=1");
  AwaitReady("a-victim", 2);
  AwaitReady("b-healthy", 1);
  Process& load = Load("new", "tp=4");
  std::this_thread::sleep_for(std::chrono::milliseconds(2500));
  processes_[0]->Signal(SIGKILL);
  const std::string out = ExpectLoaded(load, "new");
  EXPECT_EQ(out.find("failed=0 "), std::string::npos) << out;  // the failure was seen and handled
  // The victim is STALE (marked by the loader, or by its lease) and never READY again.
  auto list = client_->ListSources("", SourceState::kReady);
  ASSERT_TRUE(list.ok());
  for (const auto& r : *list) EXPECT_NE(r.instance_id, "a-victim");
}

TEST_F(P2pLoadProcessTest, SourceStoppedMidLoadIsReplacedByTheOthers) {
  Seed("a-stopped", "tp=2", 300e3);
  Seed("b-healthy", "tp=2");
  AwaitReady("a-stopped", 2);
  AwaitReady("b-healthy", 2);
  Process& load = Load("new", "tp=4");
  std::this_thread::sleep_for(std::chrono::milliseconds(2500));
  processes_[0]->Signal(SIGSTOP);
  const std::string out = ExpectLoaded(load, "new");
  EXPECT_EQ(out.find("failed=0 "), std::string::npos) << out;
  processes_[0]->Signal(SIGCONT);
}

TEST_F(P2pLoadProcessTest, NoSourceFallsBackToDiskAndNoCheckpointFails) {
  const std::string out = ExpectLoaded(Load("new", "tp=2", {"--checkpoint", Ckpt()}), "new");
  EXPECT_NE(out.find("sources=- "), std::string::npos) << out;
  Process& fail = Load("new2", "tp=2");
  const auto rc = fail.Wait(60);
  ASSERT_TRUE(rc.has_value());
  EXPECT_EQ(*rc, 1);
  EXPECT_NE(Slurp(Out("new2")).find("not found"), std::string::npos) << Slurp(Out("new2"));
}

}  // namespace
}  // namespace shardwire
