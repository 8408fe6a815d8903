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
#include <httplib.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

#include "cli/cli_process.h"
#include "shardwire/checkpoint.h"
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

// Qwen3-MoE shapes, 2 layers, 4 routed experts. Every weight dimension TP splits is a
// multiple of 512, so the FP8 128x128 block scales of each shard are whole blocks for
// tp <= 4 (tp = 8 is a layout the FP8 checkpoint cannot take).
constexpr const char* kQwen3Moe = R"({"model_type": "qwen3_moe", "architectures": ["Qwen3MoeForCausalLM"],
    "hidden_size": 512, "intermediate_size": 1024, "moe_intermediate_size": 512, "num_hidden_layers": 2,
    "num_attention_heads": 8, "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 1024, "num_experts": 4,
    "num_experts_per_tok": 2, "decoder_sparse_step": 1, "mlp_only_layers": [], "attention_bias": false,
    "tie_word_embeddings": false, "torch_dtype": "bfloat16"})";

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
    // Far away: a source a loader failed is STALE because the loader marked it, and a seed killed
    // or stopped before a slow loader listed the sources is still listed (and so still tried).
    so.source_stale_after_s = 60;
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

  std::string Ckpt() const { return ckpt_.empty() ? (dir_ / "ckpt").string() : ckpt_; }
  std::string Coordinator() const { return coordinator_.empty() ? server_->address() : coordinator_; }

  // Generates a checkpoint of `config_json` in dir_/name (config.json beside it).
  std::string Generate(const char* config_json, const std::string& name) {
    auto config = ParseModelConfig(config_json, name);
    EXPECT_TRUE(config.ok()) << config.status().ToString();
    if (!config.ok()) return "";
    auto model = DescribeModel(*config);
    EXPECT_TRUE(model.ok()) << model.status().ToString();
    if (!model.ok()) return "";
    const std::string path = (dir_ / name).string();
    Status st = GenerateCheckpointDirectory(*model, path, {.seed = 11});
    EXPECT_TRUE(st.ok()) << st.ToString();
    return path;
  }

  // Runs a CLI command to completion; returns its output (expects exit 0).
  std::string Run(const std::string& name, const std::vector<std::string>& args) {
    Process p(SHARDWIRE_BIN, args, Out(name));
    const auto rc = p.Wait(120);
    EXPECT_EQ(rc.value_or(-1), 0) << Slurp(Out(name));
    return Slurp(Out(name));
  }
  std::string Out(const std::string& name) const { return (dir_ / (name + ".out")).string(); }

  Process& Seed(const std::string& id, const std::string& layout, double bandwidth = 0) {
    std::vector<std::string> args = {
        "seed", "--coordinator", Coordinator(), "--checkpoint", Ckpt(), "--layout", layout, "--instance-id", id};
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

  // `stall_timeout`: --stall-timeout, seconds; long enough by default that no healthy (capped)
  // seed under ASan on a loaded CI machine is taken for a stalled one.
  Process& Load(const std::string& id, const std::string& layout, std::vector<std::string> extra = {},
                const std::string& stall_timeout = "5") {
    std::vector<std::string> args = {"load",
                                     "--coordinator",
                                     Coordinator(),
                                     "--config",
                                     Ckpt() + "/config.json",
                                     "--layout",
                                     layout,
                                     "--instance-id",
                                     id,
                                     "--verify-against",
                                     Ckpt(),
                                     "--stall-timeout",
                                     stall_timeout};
    args.insert(args.end(), extra.begin(), extra.end());
    processes_.push_back(std::make_unique<Process>(SHARDWIRE_BIN, args, Out(id)));
    return *processes_.back();
  }

  // Returns once the load `id` (started with --metrics-port 0) has completed a READ from a
  // source: its agent's shardwire_transport_transfers_total{op="READ"}, scraped from the
  // endpoint it printed, is at least 1. By then it has listed its sources and shaken hands
  // with them, and (sources being capped) most of its moves still wait for leases. A test
  // that disturbs a load mid-way waits for this instead of sleeping for a guess of how long
  // the loader takes to start. Fails the test after 60 s.
  // Waits, through the load's metrics endpoint (--metrics-port 0), until its ranks
  // 0..listed_ranks-1 each know at least one source instance (their first listing is
  // done) and it has completed at least one READ.
  void AwaitReading(Process& load, const std::string& id, int listed_ranks = 0) {
    ASSERT_TRUE(testing::AwaitOutput(Out(id), "shardwire metrics on ", load, 60)) << Slurp(Out(id));
    const std::string printed = Slurp(Out(id));
    std::smatch port;
    ASSERT_TRUE(std::regex_search(printed, port, std::regex(R"(shardwire metrics on http://127\.0\.0\.1:(\d+)/)")))
        << printed;
    httplib::Client http("127.0.0.1", std::stoi(port[1]));
    http.set_read_timeout(5, 0);
    const auto deadline = Clock::now() + std::chrono::seconds(60);
    while (Clock::now() < deadline) {
      if (auto res = http.Get("/metrics"); res && res->status == 200) {
        std::istringstream lines(res->body);
        double reads = 0;
        int listed = 0;
        for (std::string line; std::getline(lines, line);) {
          auto value = [&] { return std::stod(line.substr(line.rfind(' ') + 1)); };
          if (line.rfind("shardwire_transport_transfers_total{", 0) == 0 &&
              line.find("op=\"READ\"") != std::string::npos) {
            reads += value();
          }
          if (line.rfind("shardwire_load_source_instances{", 0) == 0 && value() >= 1) ++listed;
        }
        if (reads >= 1 && listed >= listed_ranks) return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    FAIL() << id << " never completed a READ with " << listed_ranks << " ranks listed: " << Slurp(Out(id));
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
  // Runs `load` of tp=1 against a coordinator address where nothing listens (port 1) with
  // `extra` arguments, expects a non-zero exit, and returns its output (stdout and stderr).
  std::string LoadRefusedBeforeAnythingRuns(const std::vector<std::string>& extra, const std::string& name) {
    std::vector<std::string> args = {"load",     "--coordinator", "127.0.0.1:1", "--config", Ckpt() + "/config.json",
                                     "--layout", "tp=1"};
    args.insert(args.end(), extra.begin(), extra.end());
    Process p(SHARDWIRE_BIN, args, Out(name));
    const auto rc = p.Wait(60);
    EXPECT_TRUE(rc.has_value());
    EXPECT_NE(rc.value_or(0), 0);
    return Slurp(Out(name));
  }

  std::string ckpt_;         // the checkpoint seeds serve and loads verify against (default dir_/ckpt)
  std::string coordinator_;  // HOST:PORT of a coordinator process (default: the in-process server_)
  std::unique_ptr<CoordinatorServer> server_;
  std::unique_ptr<CoordinatorClient> client_;
  std::vector<std::unique_ptr<Process>> processes_;
};

// `load --bandwidth` caps what the loaded instance serves, which only --serve does: alone it was
// accepted and ignored in silence. Refused before anything runs (no coordinator is dialled).
TEST_F(P2pLoadProcessTest, ABandwidthCapWithoutServeIsRefused) {
  const std::string out = LoadRefusedBeforeAnythingRuns({"--bandwidth", "5"}, "bandwidth-alone");
  EXPECT_NE(out.find("--bandwidth requires --serve"), std::string::npos) << out;
}

// A stall bound below kMinStallTimeoutSeconds marked healthy seeds STALE for every loader; it is
// refused at the parse, naming the floor, before a coordinator is dialled (port 1: nothing there).
TEST_F(P2pLoadProcessTest, AStallTimeoutBelowTheFloorIsRefusedBeforeAnythingRuns) {
  const std::string out = LoadRefusedBeforeAnythingRuns({"--stall-timeout", "0.000001"}, "tiny-stall");
  EXPECT_NE(out.find("--stall-timeout: must be a number >= 0.1, got 0.000001"), std::string::npos) << out;
  EXPECT_EQ(out.find("unavailable"), std::string::npos) << "no coordinator call: " << out;
}

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

// --stall-timeout of the two tests below, which stop or kill one seed while the healthy one must
// carry the load: 10 s, twice the default of these tests. With 5 s a healthy seed's READ was
// taken for a stalled one in 3 full ctest runs under load (session 35's cold59, session 37's
// local run and cold66; never in 40 runs of these tests alone or paired): the cause is not found
// (docs/reliability.md, "Session 37"). The stopped seed is found after 10 s instead of 5.
constexpr const char* kHealthySeedStallTimeout = "10";

TEST_F(P2pLoadProcessTest, SourceKilledMidLoadIsReplacedByTheOthers) {
  Seed("a-victim", "tp=2", 300e3);  // its share (~1.8 MB) takes ~3 s at 300 KB/s per rank
  Seed("b-healthy", "tp=1");
  AwaitReady("a-victim", 2);
  AwaitReady("b-healthy", 1);
  Process& load = Load("new", "tp=4", {"--metrics-port", "0"}, kHealthySeedStallTimeout);
  AwaitReading(load, "new");
  processes_[0]->Signal(SIGKILL);
  const std::string out = ExpectLoaded(load, "new");
  EXPECT_EQ(out.find("failed=0 "), std::string::npos) << out;  // the failure was seen and handled
  // The victim is STALE (marked by the loader, or by its lease) and never READY again.
  auto list = client_->ListSources("", SourceState::kReady);
  ASSERT_TRUE(list.ok());
  for (const auto& r : *list) EXPECT_NE(r.instance_id, "a-victim");
}

TEST_F(P2pLoadProcessTest, SourceStoppedMidLoadIsReplacedByTheOthers) {
  // Capped low enough that the second loader rank of each source rank still waits for its
  // lease when the source stops (with 300 KB/s both could be granted, read and verified
  // before the stop, leaving nothing to fail over).
  Seed("a-stopped", "tp=2", 100e3);
  Seed("b-healthy", "tp=2");
  AwaitReady("a-stopped", 2);
  AwaitReady("b-healthy", 2);
  Process& load = Load("new", "tp=4", {"--metrics-port", "0"}, kHealthySeedStallTimeout);
  AwaitReading(load, "new");
  processes_[0]->Signal(SIGSTOP);
  const std::string out = ExpectLoaded(load, "new");
  EXPECT_EQ(out.find("failed=0 "), std::string::npos) << out;
  processes_[0]->Signal(SIGCONT);
}

// A seed stopped before the load starts (hung, yet READY until its lease ends): every loader
// rank says HELLO to it and reads from the healthy seed at the same time, so each READ from the
// healthy seed is posted beside a silent peer of the same agent (the moment the flaky test above
// fails at, here at every rank). The load completes from the healthy seed.
TEST_F(P2pLoadProcessTest, ASourceStoppedBeforeTheLoadIsReplacedByTheOthers) {
  Seed("a-stopped", "tp=2", 100e3);
  Seed("b-healthy", "tp=2");
  AwaitReady("a-stopped", 2);
  AwaitReady("b-healthy", 2);
  processes_[0]->Signal(SIGSTOP);
  Process& load = Load("new", "tp=4", {}, kHealthySeedStallTimeout);
  const std::string out = ExpectLoaded(load, "new");
  EXPECT_EQ(out.find("failed=0 "), std::string::npos) << out;
  EXPECT_NE(out.find("b-healthy:"), std::string::npos) << out;
  processes_[0]->Signal(SIGCONT);
}

// The loader itself stopped (SIGSTOP) for 4 s, four times its stall timeout, while its moves
// wait for bandwidth leases from two healthy seeds: when it runs again it must not blame
// them. Before the fix the deadlines that passed during the stop failed the seeds at the
// first look ("lease request not answered within 1.0 s (dead or stalled)"), re-read their
// bytes from disk and marked them STALE (fault injection `p2p-loader-stop`).
TEST_F(P2pLoadProcessTest, ALoaderStoppedMidLoadBlamesNoSource) {
  Seed("a-healthy", "tp=2", 300e3);  // ~7 MB over 4 seed ranks at 300 KB/s: ~6 s of reading
  Seed("b-healthy", "tp=2", 300e3);
  AwaitReady("a-healthy", 2);
  AwaitReady("b-healthy", 2);
  Process& load = Load("new", "tp=4", {"--checkpoint", Ckpt(), "--metrics-port", "0"}, "1");
  AwaitReading(load, "new");  // reading, most moves queued for leases
  load.Signal(SIGSTOP);
  std::this_thread::sleep_for(std::chrono::seconds(4));
  load.Signal(SIGCONT);
  const std::string out = ExpectLoaded(load, "new");
  EXPECT_NE(out.find("failed=0 "), std::string::npos) << out;
  EXPECT_NE(out.find("disk_bytes=0 "), std::string::npos) << out;
  EXPECT_EQ(out.find("paused_seconds=0.00"), std::string::npos) << "the stop was not seen: " << out;
  auto list = client_->ListSources("", SourceState::kReady);
  ASSERT_TRUE(list.ok());
  EXPECT_EQ(list->size(), 4u) << "a healthy seed rank was marked STALE";
}

// SIGINT or SIGTERM during a load stops it (the loader's interrupt hook): the command exits
// non-zero, names the signal and prints no LOADED line. It ignored both, finished the load and
// exited 0. A --report that cannot be written fails the command (it was silently skipped).
TEST_F(P2pLoadProcessTest, ASignalStopsALoadAndAnUnwritableReportFailsIt) {
  Process& seed = Seed("slow", "tp=1", 100e3);  // ~7 MB at 100 KB/s: a minute of reading
  AwaitReady("slow", 1);
  for (int signal : {SIGINT, SIGTERM}) {
    const std::string id = signal == SIGINT ? "int" : "term";
    Process& load = Load(id, "tp=1", {"--metrics-port", "0"}, "20");
    AwaitReading(load, id);
    load.Signal(signal);
    const auto rc = load.Wait(60);  // a bound, not a timing assertion: the load alone takes a minute
    const std::string out = Slurp(Out(id));
    ASSERT_TRUE(rc.has_value()) << "the load did not stop for the signal: " << out;
    EXPECT_NE(*rc, 0) << out;
    EXPECT_NE(out.find("interrupted by SIGINT or SIGTERM"), std::string::npos) << out;
    EXPECT_EQ(out.find("LOADED"), std::string::npos) << out;
  }
  seed.Signal(SIGTERM);  // deregisters: the next load reads the checkpoint
  ASSERT_TRUE(seed.Wait(60).has_value());
  Process& unwritable =
      Load("report", "tp=2", {"--checkpoint", Ckpt(), "--report", (dir_ / "no-such-dir" / "r.txt").string()});
  const auto rc = unwritable.Wait(120);
  ASSERT_TRUE(rc.has_value());
  EXPECT_NE(*rc, 0) << Slurp(Out("report"));
  EXPECT_NE(Slurp(Out("report")).find("--report"), std::string::npos) << Slurp(Out("report"));
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

// A config without torch_dtype (the real tiny-qwen3-f32's) is described in BF16 by the loader,
// while the seed described the model from its F32 checkpoint: the loader found "no READY
// source" and left the user to guess why. It now names the dtype the sources serve.
TEST_F(P2pLoadProcessTest, AConfigWithoutADtypeNamesTheDtypeTheSourcesServe) {
  const char* shared = std::getenv("SHARDWIRE_SHARED_DIR");
  const std::string dir = std::string(shared ? shared : "") + "/models/tiny-qwen3-f32";
  if (shared == nullptr || !fs::exists(dir + "/tiny_qwen3.safetensors")) GTEST_SKIP() << "no tiny-qwen3-f32";
  ckpt_ = dir;
  Seed("f32-seed", "tp=1");
  AwaitReady("f32-seed", 1);
  Process load(SHARDWIRE_BIN,
               {"load", "--coordinator", Coordinator(), "--config", dir + "/tiny_qwen3_config.json", "--layout", "tp=1",
                "--instance-id", "bf16-guess"},
               Out("bf16-guess"));
  const auto rc = load.Wait(60);
  ASSERT_TRUE(rc.has_value());
  EXPECT_EQ(*rc, 1);
  const std::string out = Slurp(Out("bf16-guess"));
  EXPECT_NE(out.find("the config names no torch_dtype, so BF16 was assumed; READY sources serve this model in F32"),
            std::string::npos)
      << out;
}

// MoE: a tp=2,ep=2 seed (whole experts per rank) serves tp=4,ep=4, tp=1 and tp=4 (experts
// split by TP: gate/up on dim 0, down_proj row-parallel on dim 1); a loaded tp=4,ep=4
// instance then serves a tp=2 load together with the seed.
TEST_F(P2pLoadProcessTest, MoeWithExpertParallelismAcrossTpSizes) {
  ckpt_ = Generate(kQwen3Moe, "moe");
  ASSERT_FALSE(ckpt_.empty());
  Seed("moe-seed", "tp=2,ep=2");
  AwaitReady("moe-seed", 2);
  for (const char* layout : {"tp=1", "tp=4"}) {
    const std::string id = std::string("moe-") + (layout + 3);
    const std::string out = ExpectLoaded(Load(id, layout), id);
    EXPECT_NE(out.find("sources=moe-seed:"), std::string::npos) << out;
    EXPECT_NE(out.find("disk_bytes=0 "), std::string::npos) << out;
  }
  Process& ep4 = Load("moe-ep4", "tp=4,ep=4", {"--serve"});
  AwaitReady("moe-ep4", 4);
  const std::string out = ExpectLoaded(Load("moe-tp2", "tp=2"), "moe-tp2");
  EXPECT_NE(out.find("moe-seed:"), std::string::npos) << out;
  EXPECT_NE(out.find("moe-ep4:"), std::string::npos) << out;
  ep4.Signal(SIGTERM);
  EXPECT_EQ(ep4.Wait(30).value_or(-1), 0);
}

// FP8 block-scale checkpoint (`shardwire convert --format fp8-block128`): E4M3 weights
// with their F32 128x128 block scales, column- and row-parallel, dense and expert.
// A tp=2 seed serves tp=4, tp=1 and tp=4,ep=4, every byte (weights and scales)
// verified against the FP8 checkpoint; tp=8 would split a scale block: a typed error
// naming the tensor, before anything is read.
TEST_F(P2pLoadProcessTest, Fp8BlockScaleCheckpointAcrossTpSizes) {
  const std::string bf16 = Generate(kQwen3Moe, "moe-bf16");
  ASSERT_FALSE(bf16.empty());
  ckpt_ = (dir_ / "moe-fp8").string();
  Run("convert", {"convert", "--checkpoint", bf16, "--out", ckpt_, "--format", "fp8-block128"});
  {  // The converted checkpoint holds FP8 weights and their scales, row-parallel ones included.
    auto ck = Checkpoint::Open(ckpt_);
    ASSERT_TRUE(ck.ok()) << ck.status().ToString();
    int fp8 = 0, scales = 0;
    bool row_scale = false;
    for (const TensorSpec& t : ck->tensors()) {
      fp8 += t.dtype == DType::kF8E4M3;
      const bool scale = t.name.ends_with("weight_scale_inv");
      scales += scale;
      row_scale |= scale && t.name.find("down_proj") != std::string::npos;
    }
    EXPECT_GE(fp8, 20);
    EXPECT_EQ(fp8, scales);
    EXPECT_TRUE(row_scale);
  }
  Seed("fp8-seed", "tp=2");
  AwaitReady("fp8-seed", 2);
  for (const char* layout : {"tp=4", "tp=1", "tp=4,ep=4"}) {
    const std::string id = fmt::format("fp8-{}", layout + 3);
    const std::string out = ExpectLoaded(Load(id, layout), id);
    EXPECT_NE(out.find("sources=fp8-seed:"), std::string::npos) << out;
    EXPECT_NE(out.find("disk_bytes=0 "), std::string::npos) << out;
  }
  Process& bad = Load("fp8-tp8", "tp=8");
  ASSERT_EQ(bad.Wait(60).value_or(-1), 1) << Slurp(Out("fp8-tp8"));
  const std::string err = Slurp(Out("fp8-tp8"));
  EXPECT_NE(err.find("invalid argument"), std::string::npos) << err;
  EXPECT_NE(err.find("weight_scale_inv"), std::string::npos) << err;
}

// The coordinator is killed (SIGKILL) while a load is under way: the loader already
// knows its sources and finishes from them, verified, without waiting for the
// coordinator (its re-listing runs off the transfer loop and is given up after the
// first failure); the seed keeps serving.
TEST_F(P2pLoadProcessTest, CoordinatorGoesAwayMidLoad) {
  Process serve(SHARDWIRE_BIN, {"serve", "--host", "127.0.0.1", "--port", "0"}, Out("serve"));
  ASSERT_TRUE(testing::AwaitOutput(Out("serve"), "listening on ", serve, 30)) << Slurp(Out("serve"));
  const std::string text = Slurp(Out("serve"));
  const auto at = text.find("listening on ") + 13;
  coordinator_ = text.substr(at, text.find(' ', at) - at);
  // Each source rank serves two loader ranks of ~0.9 MB at 300 KB/s (~6 s in all): the
  // coordinator dies once every loader rank has listed its sources and one has read from the
  // seed, while the second rank per source rank still waits for its lease (and re-lists).
  // (Were the coordinator gone before a rank's first listing, the load would fail with
  // kUnavailable naming it after the client's retry window.)
  Process& seed = Seed("seed", "tp=2", 300e3);
  ASSERT_TRUE(testing::AwaitOutput(Out("seed"), "SEED READY", seed, 60)) << Slurp(Out("seed"));
  Process& load = Load("new", "tp=4", {"--metrics-port", "0"});
  AwaitReading(load, "new", 4);
  serve.Signal(SIGKILL);
  ASSERT_EQ(serve.Wait(10).value_or(0), -SIGKILL);
  // The LOADED line is printed only after every byte was compared with the checkpoint. The
  // process then exits once its last re-listing gives up (up to the coordinator client's 15 s
  // retry window later) with success: the load did not need the coordinator.
  ASSERT_TRUE(testing::AwaitOutput(Out("new"), "verified=byte-for-byte", load, 60)) << Slurp(Out("new"));
  EXPECT_EQ(load.Wait(60).value_or(-1), 0) << Slurp(Out("new"));
  const std::string out = Slurp(Out("new"));
  EXPECT_NE(out.find("sources=seed:3680256 "), std::string::npos) << out;
  EXPECT_NE(out.find("disk_bytes=0 "), std::string::npos) << out;
  EXPECT_NE(out.find("failed=0 "), std::string::npos) << out;  // the seed was never given up
}

}  // namespace
}  // namespace shardwire
