// `shardwire plan` end to end: a real large config, JSON output, and errors that point at
// the offending part of a layout string.
#include <sys/wait.h>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

namespace {

std::pair<int, std::string> RunPlan(const std::string& args) {
  const std::string cmd = SHARDWIRE_BIN " plan " + args + " 2>&1";
  std::string out;
  FILE* pipe = popen(cmd.c_str(), "r");
  std::array<char, 4096> buf{};
  while (pipe && fgets(buf.data(), buf.size(), pipe) != nullptr) out += buf.data();
  const int status = pipe ? pclose(pipe) : -1;
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

std::string Config(const std::string& model) {
  const char* env = std::getenv("SHARDWIRE_SHARED_DIR");
  const std::string path = std::string(env ? env : "") + "/models/" + model + "/config.json";
  return env && std::filesystem::exists(path) ? path : "";
}

TEST(PlanCommand, DeepSeekV3ToExpertParallelEnginesAsJson) {
  const std::string config = Config("DeepSeek-V3");
  if (config.empty()) GTEST_SKIP() << "no ../shared/models/DeepSeek-V3 here";
  const auto [code, out] = RunPlan("--config " + config + " --from fsdp=64,ep=8 --to tp=8,ep=8,dp=2 --json");
  ASSERT_EQ(code, 0) << out;
  const auto j = nlohmann::json::parse(out);
  EXPECT_EQ(j["tensors"], 91991);
  EXPECT_EQ(j["source_ranks"], 64);
  EXPECT_EQ(j["destination_ranks"], 16);
  // Each of the 2 engines receives the whole model (688.575 GB) plus 7 extra copies of the
  // tensors every TP rank holds whole (MLA q_a/kv_a projections, routers, norms): ~1.4%.
  const double per_engine = j["bytes_delivered"].template get<double>() / 2;
  EXPECT_GT(per_engine, 688575000000.0);
  EXPECT_LT(per_engine, 688575000000.0 * 1.02);
  EXPECT_LE(j["max_destination_part_bytes"].template get<double>(), 1 << 20);
}

TEST(PlanCommand, HumanSummaryAndLayoutErrors) {
  const std::string config = Config("Llama-3.1-8B");
  if (config.empty()) GTEST_SKIP() << "no ../shared/models/Llama-3.1-8B here";
  auto [code, out] = RunPlan("--config " + config + " --from hsdp=2x4 --to tp=4,dp=2");
  ASSERT_EQ(code, 0) << out;
  EXPECT_NE(out.find("from        hsdp=2x4 (8 ranks)"), std::string::npos) << out;
  EXPECT_NE(out.find("BROADCAST"), std::string::npos) << out;
  std::tie(code, out) = RunPlan("--config " + config + " --from fsdp=8 --to tp=4,xp=2");
  EXPECT_EQ(code, 1);
  EXPECT_NE(out.find("--to: layout \"tp=4,xp=2\": unknown key \"xp\" at character 6"), std::string::npos) << out;
  std::tie(code, out) = RunPlan("--config " + config + " --from fsdp=8 --to tp=3");
  EXPECT_EQ(code, 1);
  EXPECT_NE(out.find("TP size 3 does not divide the 32 attention heads"), std::string::npos) << out;
}

}  // namespace
