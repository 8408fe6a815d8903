// End-to-end tests of `shardwire demo rl-sync`: real processes, real UCX, byte-for-byte
// verification inside every engine rank, and the failure paths (bad input, a corrupted
// push, a dying trainer) ending in a clear error, a non-zero exit and no orphans.
#include <dirent.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "die_with_test_process.h"

#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

namespace {

struct RunResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr
};

// Job name of this test process's demo runs: tests may run concurrently (ctest -j).
std::string JobName() { return "demo-test-" + std::to_string(getpid()); }

RunResult RunDemo(const std::string& args, const std::string& env = "") {
  const std::string cmd = env + " " SHARDWIRE_BIN " demo rl-sync " + args + " --job " + JobName() +
                          " --work-dir " SHARDWIRE_TEST_WORK_DIR " 2>&1";
  RunResult r;
  FILE* pipe = popen(cmd.c_str(), "r");
  if (pipe == nullptr) return r;
  std::array<char, 4096> buf{};
  while (fgets(buf.data(), buf.size(), pipe) != nullptr) r.output += buf.data();
  const int status = pclose(pipe);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

std::string SharedModels() {
  const char* env = std::getenv("SHARDWIRE_SHARED_DIR");
  return env ? std::string(env) + "/models" : "";
}

// A small checkpoint for the failure-path tests: the real tiny Llama from ../shared, or,
// on a machine without it, `--generate` from a small Llama config written here.
std::string SmallModelArgs() {
  const std::string real = SharedModels() + "/tiny-llama3-bf16";
  if (!SharedModels().empty() && std::filesystem::exists(real)) return "--checkpoint " + real;
  const std::string dir = std::string(SHARDWIRE_TEST_WORK_DIR) + "/small-llama";
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/config.json") << R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
    "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
    "num_hidden_layers": 2, "vocab_size": 256, "torch_dtype": "bfloat16"})";
  return "--generate " + dir + "/config.json";
}

// Processes still alive that are workers of this test process's demo runs.
int CountWorkers() {
  const std::string job = std::string("--job") + '\0' + JobName() + '\0';
  int count = 0;
  DIR* proc = opendir("/proc");
  while (dirent* e = readdir(proc)) {
    // A process may exit between the open and the read: the read then fails (ESRCH). The
    // stream insertion below turns that into a failed stream and an empty or partial
    // string, where an istreambuf_iterator would throw from basic_filebuf::underflow.
    std::ifstream f(std::string("/proc/") + e->d_name + "/cmdline");
    std::ostringstream read;
    if (f) read << f.rdbuf();
    const std::string cmdline = read.str();
    if (cmdline.find(std::string("worker") + '\0' + "--role") != std::string::npos &&
        cmdline.find(job) != std::string::npos) {
      ++count;
    }
  }
  closedir(proc);
  return count;
}

TEST(RlSyncDemo, RealTinyLlamaCheckpointVerifiesEveryStep) {
  const std::string model = SharedModels() + "/tiny-llama3-bf16";
  if (!std::filesystem::exists(model)) GTEST_SKIP() << "no ../shared/models/tiny-llama3-bf16 here";
  const RunResult r = RunDemo("--checkpoint " + model + " --steps 3");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("step 3/3"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("verified 4/4 engine ranks byte for byte"), std::string::npos) << r.output;
  EXPECT_EQ(CountWorkers(), 0);
}

TEST(RlSyncDemo, OtherLayoutsAndShardedF32Checkpoint) {
  const std::string model = SharedModels() + "/tiny-llama-f32-sharded/tiny_llama.safetensors.index.json";
  if (!std::filesystem::exists(model)) GTEST_SKIP() << "no ../shared/models here";
  const std::string config = SharedModels() + "/tiny-llama-f32-sharded/tiny_llama_config.json";
  const RunResult r =
      RunDemo("--checkpoint " + model + " --config " + config + " --trainers 3 --engines 1 --tp 1 --steps 2");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("verified 1/1 engine ranks"), std::string::npos) << r.output;
  // 3 trainers share this host's cores: 1 lane each unless the host has 6 or more cores.
  EXPECT_TRUE(r.output.find("1 transport lane(s) each (automatic") != std::string::npos ||
              std::thread::hardware_concurrency() >= 6)
      << r.output;
  const RunResult three_lanes = RunDemo("--checkpoint " + model + " --config " + config +
                                        " --trainers 3 --engines 1 --tp 1 --steps 1 --trainer-lanes 3");
  ASSERT_EQ(three_lanes.exit_code, 0) << three_lanes.output;
  EXPECT_NE(three_lanes.output.find("3 transport lane(s) each\n"), std::string::npos) << three_lanes.output;
  EXPECT_NE(three_lanes.output.find("verified 1/1 engine ranks"), std::string::npos) << three_lanes.output;
}

TEST(RlSyncDemo, MoeCheckpointWithExpertParallelEngines) {
  const std::string model = SharedModels() + "/tiny-qwen3-moe-f32";
  if (!std::filesystem::exists(model)) GTEST_SKIP() << "no ../shared/models here";
  RunResult r =
      RunDemo("--checkpoint " + model + " --trainer-layout fsdp=2,ep=2 --engine-layout tp=2,ep=2,dp=2 --steps 2");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("engines     4 processes, tp=2,ep=2,dp=2"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("verified 4/4 engine ranks"), std::string::npos) << r.output;
  // HSDP trainers into pipeline-parallel engines with fused q/k/v, gate/up.
  r = RunDemo("--checkpoint " + model + " --trainer-layout hsdp=2x1 --engine-layout pp=2,tp=2,ep=2 --steps 2");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("verified 4/4 engine ranks"), std::string::npos) << r.output;
  // MLA + MoE (DeepSeek-V2 family) with experts spread over the engine's TP ranks.
  const std::string mla = SharedModels() + "/tiny-deepseek-v2-f32";
  r = RunDemo("--checkpoint " + mla + " --trainer-layout fsdp=2,ep=2 --engine-layout tp=2,ep=2 --steps 2");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("verified 2/2 engine ranks"), std::string::npos) << r.output;
}

TEST(RlSyncDemo, GeneratedCheckpointWithRealShapes) {
  // TinyLlama-1.1B's shapes with one decoder layer: 350 MB of bf16, pushed to 2 engines.
  const RunResult r = RunDemo("--generate tinyllama-1.1b --layers 1 --steps 2");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("700.5 MB per step"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("step 2/2"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("verified 4/4"), std::string::npos) << r.output;
}

TEST(RlSyncDemo, Bf16TrainersIntoFp8EnginesVerifyWeightsAndScales) {
  // Dims that are multiples of 128 (vLLM's block-FP8 TP split needs whole blocks per rank);
  // three FSDP trainers split q_proj's 256 rows at 86 and 172, so blocks straddle trainers.
  const std::string dir = std::string(SHARDWIRE_TEST_WORK_DIR) + "/fp8-llama";
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/config.json") << R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
    "hidden_size": 256, "intermediate_size": 768, "num_attention_heads": 4, "num_key_value_heads": 4,
    "num_hidden_layers": 2, "vocab_size": 512, "torch_dtype": "bfloat16"})";
  RunResult r = RunDemo("--generate " + dir + "/config.json --trainers 3 --engine-dtype fp8-block --steps 3");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("engine fmt  fp8-block: 28 of 35 engine tensors converted"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("step 3/3"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("verified 4/4 engine ranks byte for byte"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("converted "), std::string::npos) << r.output;
  EXPECT_EQ(CountWorkers(), 0);
  // A config whose quantization_config says FP8 block-128 (as DeepSeek-V3's release): with the default
  // --engine-dtype auto the demo generates its bf16 original for the trainers and FP8 engines.
  std::ofstream(dir + "/fp8-config.json") << R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
    "hidden_size": 256, "intermediate_size": 768, "num_attention_heads": 4, "num_key_value_heads": 4,
    "num_hidden_layers": 1, "vocab_size": 512, "torch_dtype": "bfloat16",
    "quantization_config": {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128]}})";
  r = RunDemo("--generate " + dir + "/fp8-config.json --steps 2");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("bf16 trainers, FP8 engines"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("BF16, 12 tensors"), std::string::npos) << r.output;  // the trainers' bf16 original
  EXPECT_NE(r.output.find("verified 4/4 engine ranks byte for byte"), std::string::npos) << r.output;
  // A format nobody knows, and a TP size that would split an FP8 block: clear errors, nothing started.
  r = RunDemo("--generate " + dir + "/config.json --engine-dtype fp4 --steps 1");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("--engine-dtype"), std::string::npos) << r.output;
  r = RunDemo("--generate " + dir + "/config.json --engine-dtype fp8-block --tp 4 --steps 1");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("scale_inv"), std::string::npos) << r.output;
  EXPECT_EQ(CountWorkers(), 0);
}

TEST(RlSyncDemo, CorruptedPushIsCaughtAndNamed) {
  const std::string model_args = SmallModelArgs();
  const RunResult r = RunDemo(model_args + " --steps 3", "SHARDWIRE_DEMO_FAULT=corrupt:2");
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("verification failed"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("step 2: tensor "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("at byte "), std::string::npos) << r.output;
  EXPECT_EQ(CountWorkers(), 0);
}

TEST(RlSyncDemo, VerifyLastChecksOnlyTheLastStepAndStillCatchesItsCorruption) {
  const std::string model_args = SmallModelArgs();
  // Clean run: steps 1-2 are committed unchecked, step 3 is verified by every engine rank.
  const RunResult ok = RunDemo(model_args + " --steps 3 --verify last");
  ASSERT_EQ(ok.exit_code, 0) << ok.output;
  const auto line = [&](int step) {
    const auto at = ok.output.find(fmt::format("step {}/3", step));
    return at == std::string::npos ? std::string() : ok.output.substr(at, ok.output.find('\n', at) - at);
  };
  EXPECT_NE(line(1).find("not checked (--verify last)"), std::string::npos) << ok.output;
  EXPECT_NE(line(2).find("not checked (--verify last)"), std::string::npos) << ok.output;
  EXPECT_NE(line(3).find("verified 4/4 engine ranks byte for byte"), std::string::npos) << ok.output;
  EXPECT_NE(ok.output.find("every engine rank verified the last step"), std::string::npos) << ok.output;
  // A byte flipped in the last step is still caught and named.
  const RunResult bad = RunDemo(model_args + " --steps 3 --verify last", "SHARDWIRE_DEMO_FAULT=corrupt:3");
  EXPECT_NE(bad.exit_code, 0) << bad.output;
  EXPECT_NE(bad.output.find("step 3: tensor "), std::string::npos) << bad.output;
  EXPECT_EQ(CountWorkers(), 0);
}

TEST(RlSyncDemo, DyingTrainerEndsTheRunCleanly) {
  const std::string model_args = SmallModelArgs();
  const RunResult r = RunDemo(model_args + " --steps 3 --timeout 20", "SHARDWIRE_DEMO_FAULT=die:2");
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("trainer 0 was killed by signal 9"), std::string::npos) << r.output;
  EXPECT_EQ(CountWorkers(), 0);
}

TEST(RlSyncDemo, DeadEngineMissesVersionsTheOthersGoOn) {
  // The last engine rank kills itself (SIGKILL) before step 3: the trainers push steps 3-5 to
  // the three others, every one of which verifies every step; the run succeeds and says so.
  const std::string model_args = SmallModelArgs();
  const RunResult r = RunDemo(model_args + " --steps 5 --timeout 30", "SHARDWIRE_DEMO_FAULT=engine-die:3");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("engine rank 3 was killed by signal 9"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("step 2/5"), std::string::npos) << r.output;
  for (int step = 3; step <= 5; ++step) {
    EXPECT_NE(r.output.find("engine rank 3 missed v" + std::to_string(step)), std::string::npos) << r.output;
  }
  EXPECT_NE(r.output.find("step 5/5"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("verified 3/4 engine ranks byte for byte"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("1 engine rank(s) died"), std::string::npos) << r.output;
  EXPECT_EQ(CountWorkers(), 0);
}

TEST(RlSyncDemo, RelaysForwardReplicatedBytesEngineToEngineAndSurviveADeadReplica) {
  // Three engine replicas (tp=1) in a chain (K = 1): the trainers write replica 0 only, 0
  // forwards to 1 and 1 to 2; every replica verifies every step byte for byte. The last one
  // dies before step 3: the others go on, still relayed.
  const std::string model_args = SmallModelArgs();
  const RunResult r = RunDemo(model_args + " --engines 3 --tp 1 --concurrency 1 --relay --steps 4 --timeout 30",
                              "SHARDWIRE_DEMO_FAULT=engine-die:3");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("2 of them through engine-to-engine relays"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("verified 3/3 engine ranks byte for byte"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("1 of them through engine-to-engine relays"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("engine rank 2 missed v4"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("verified 2/3 engine ranks byte for byte"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("(engine-to-engine relays)"), std::string::npos) << r.output;
  EXPECT_EQ(CountWorkers(), 0);
}

TEST(RlSyncDemo, RestartedEngineCatchesUpFromLiveEnginesAndReceivesTheNextPushes) {
  // --restart-engines: the last engine rank kills itself before step 3; the demo restarts it, the
  // new process loads the latest committed version from the other replica (P2P), verifies it
  // byte for byte, joins, and verifies every later version. The run is open-ended (a restart
  // takes a second, the pushes milliseconds); it is stopped with SIGINT once the new process
  // verified two pushes.
  const std::string model_args = SmallModelArgs();
  const std::string flag = model_args.substr(0, model_args.find(' '));
  const std::string path = model_args.substr(model_args.find(' ') + 1);
  const std::string job = JobName();
  int out[2];
  ASSERT_EQ(pipe(out), 0);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    dup2(out[1], 1);
    dup2(out[1], 2);
    close(out[0]);
    setenv("SHARDWIRE_DEMO_FAULT", "engine-die:3", 1);
    execl(SHARDWIRE_BIN, SHARDWIRE_BIN, "demo", "rl-sync", flag.c_str(), path.c_str(), "--work-dir",
          SHARDWIRE_TEST_WORK_DIR, "--steps", "100000", "--restart-engines", "--timeout", "30", "--job", job.c_str(),
          static_cast<char*>(nullptr));
    _exit(127);
  }
  close(out[1]);
  FILE* stream = fdopen(out[0], "r");
  ASSERT_NE(stream, nullptr);
  std::string output;
  std::array<char, 4096> line{};
  int full_steps_after_catch_up = -1;  // steps verified by all 4 ranks since the catch-up line
  // A bound on the wait, not a speed check: a demo that goes on without the catch-up (the
  // restarted engine fell back to the checkpoint) is stopped after 300 s, so the test fails
  // with its output instead of reading forever.
  std::atomic<bool> seen_enough{false};
  std::thread watchdog([&] {
    for (int i = 0; i < 3000 && !seen_enough; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    if (!seen_enough) kill(pid, SIGINT);
  });
  while (full_steps_after_catch_up < 2 && fgets(line.data(), line.size(), stream) != nullptr) {
    const std::string l = line.data();
    output += l;
    if (l.find("engine rank 3 (process 2 of the rank) caught up to v") != std::string::npos) {
      full_steps_after_catch_up = 0;
    } else if (full_steps_after_catch_up >= 0 && l.find("verified 4/4 engine ranks") != std::string::npos) {
      ++full_steps_after_catch_up;
    }
  }
  seen_enough = true;
  watchdog.join();
  kill(pid, SIGINT);
  while (fgets(line.data(), line.size(), stream) != nullptr) output += line.data();
  fclose(stream);
  int status = 0;
  waitpid(pid, &status, 0);
  EXPECT_EQ(full_steps_after_catch_up, 2) << output;
  // Stopped by the test's Ctrl-C (130), not by a failure of its own (1) or a crash.
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 130) << "wait status " << status << "\n" << output;
  EXPECT_NE(output.find("engine rank 3 was killed by signal 9 (Killed): restarted it (restart 1)"), std::string::npos)
      << output;
  EXPECT_NE(output.find("engine rank 3 missed v3"), std::string::npos) << output;
  // Its weights came from the live engines (replica 0), none from the disk, with the pushes held
  // meanwhile; the version it loaded is the last one pushed before the hold, and the first push it
  // received is the next one.
  EXPECT_NE(output.find("from live engines (" + job + "/replica-0 "), std::string::npos) << output;
  EXPECT_NE(output.find("; 0.0 KB from disk) in "), std::string::npos) << output;
  EXPECT_NE(output.find(" with the pushes held, verified, then received v"), std::string::npos) << output;
  EXPECT_EQ(output.find("started from the checkpoint on disk"), std::string::npos) << output;
  const std::string caught = "engine rank 3 (process 2 of the rank) caught up to v";
  if (const auto at = output.find(caught); at != std::string::npos) {
    const std::uint64_t loaded = std::stoull(output.substr(at + caught.size()));
    const auto received_at = output.find("then received v", at);
    ASSERT_NE(received_at, std::string::npos) << output;
    EXPECT_EQ(std::stoull(output.substr(received_at + std::string("then received v").size())), loaded + 1) << output;
    EXPECT_NE(output.find(fmt::format("push v{} started ", loaded + 1)), std::string::npos) << output;
  }
  EXPECT_EQ(output.find("verification failed"), std::string::npos) << output;
  EXPECT_EQ(CountWorkers(), 0);
}

TEST(RlSyncDemo, CtrlCStopsEveryProcess) {
  const std::string model_args = SmallModelArgs();  // "--checkpoint X" or "--generate X"
  const std::string flag = model_args.substr(0, model_args.find(' '));
  const std::string path = model_args.substr(model_args.find(' ') + 1);
  const std::string job = JobName();
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    freopen("/dev/null", "w", stdout);
    execl(SHARDWIRE_BIN, SHARDWIRE_BIN, "demo", "rl-sync", flag.c_str(), path.c_str(), "--work-dir",
          SHARDWIRE_TEST_WORK_DIR, "--steps", "100000", "--job", job.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  // Wait until the workers are up (bounded), then interrupt the parent as Ctrl-C would.
  for (int i = 0; i < 200 && CountWorkers() < 6; ++i) usleep(50 * 1000);
  EXPECT_EQ(CountWorkers(), 6);
  kill(pid, SIGINT);
  int status = 0;
  int waited = 0;
  while (waitpid(pid, &status, WNOHANG) == 0 && waited++ < 600) usleep(50 * 1000);
  if (waited >= 600) kill(pid, SIGKILL), waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 130);
  EXPECT_EQ(CountWorkers(), 0);
}

TEST(RlSyncDemo, BadInputGetsAClearError) {
  RunResult r = RunDemo("--checkpoint /nonexistent/model.safetensors");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("/nonexistent/model.safetensors does not exist"), std::string::npos) << r.output;

  r = RunDemo("--engine-layout tp=2,xp=2");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("unknown key \"xp\" at character 6"), std::string::npos) << r.output;

  r = RunDemo("--tp 0");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("--tp"), std::string::npos) << r.output;

  // TinyLlama has 4 key/value heads: TP 3 cannot split them... nor its 32 heads.
  r = RunDemo("--generate tinyllama-1.1b --layers 1 --tp 3 --steps 1");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("TP size 3 does not divide the 32 attention heads"), std::string::npos) << r.output;

  const std::string models = SharedModels();
  if (!models.empty() && std::filesystem::exists(models + "/tiny-qwen3-bf16")) {
    // A Qwen3 checkpoint described by a Llama config: missing q_norm/k_norm are named.
    r = RunDemo("--checkpoint " + models + "/tiny-qwen3-bf16 --config " + models + "/tiny-llama3-bf16/config.json");
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.output.find("layout mismatch"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("q_norm"), std::string::npos) << r.output;
  }
}

TEST(RlSyncDemo, PortInUseIsReported) {
  const std::string model_args = SmallModelArgs();
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(listen(fd, 1), 0);
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  const int port = ntohs(addr.sin_port);
  const RunResult r = RunDemo(model_args + " --port " + std::to_string(port));
  close(fd);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find(std::to_string(port)), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("in use"), std::string::npos) << r.output;
  EXPECT_EQ(CountWorkers(), 0);
}

// The demo against a standalone coordinator (`shardwire serve` with a token file):
// trainers and engines rendezvous through it, the token reaching them through
// SHARDWIRE_TOKEN; without the token the demo fails with "unauthenticated".
TEST(RlSyncDemo, RunsAgainstAStandaloneCoordinatorWithAToken) {
  const std::string model_args = SmallModelArgs();
  const std::string token_file = std::string(SHARDWIRE_TEST_WORK_DIR) + "/token-" + std::to_string(getpid());
  std::filesystem::create_directories(SHARDWIRE_TEST_WORK_DIR);
  std::ofstream(token_file) << "demo-token\n";
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  const pid_t parent = getpid();
  const pid_t serve = fork();
  if (serve == 0) {
    shardwire::testing_util::DieWithTestProcess(parent);
    dup2(fds[1], 1);
    close(fds[0]);
    close(fds[1]);
    execl(SHARDWIRE_BIN, SHARDWIRE_BIN, "serve", "--port", "0", "--token-file", token_file.c_str(),
          static_cast<char*>(nullptr));
    _exit(127);
  }
  close(fds[1]);
  std::string line;
  char c = 0;
  while (read(fds[0], &c, 1) == 1 && c != '\n') line += c;
  const auto at = line.find("listening on ");
  ASSERT_NE(at, std::string::npos) << line;
  const std::string address = line.substr(at + 13, line.find(' ', at + 13) - (at + 13));

  const RunResult ok = RunDemo(model_args + " --steps 2 --coordinator " + address, "SHARDWIRE_TOKEN=demo-token");
  EXPECT_EQ(ok.exit_code, 0) << ok.output;
  EXPECT_NE(ok.output.find("verified"), std::string::npos) << ok.output;
  const RunResult refused =
      RunDemo(model_args + " --steps 1 --timeout 5 --coordinator " + address, "SHARDWIRE_TOKEN=wrong");
  EXPECT_EQ(refused.exit_code, 1) << refused.output;
  EXPECT_NE(refused.output.find("unauthenticated"), std::string::npos) << refused.output;
  EXPECT_EQ(CountWorkers(), 0);

  kill(serve, SIGTERM);
  int status = 0;
  waitpid(serve, &status, 0);
  close(fds[0]);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  std::filesystem::remove(token_file);
}

}  // namespace
