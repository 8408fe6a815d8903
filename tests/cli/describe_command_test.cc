// `shardwire describe` and `--model-rules` end to end: a real tiny checkpoint is described
// from rules inferred from it (--infer), the written rules file is given back to `plan`
// under a model_type no built-in file knows, and a broken rules file fails the command
// line with its file:line.
#include <sys/wait.h>

#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

namespace {

std::pair<int, std::string> RunCli(const std::string& args) {
  const std::string cmd = SHARDWIRE_BIN " " + args + " 2>&1";
  std::string out;
  FILE* pipe = popen(cmd.c_str(), "r");
  std::array<char, 4096> buf{};
  while (pipe && fgets(buf.data(), buf.size(), pipe) != nullptr) out += buf.data();
  const int status = pipe ? pclose(pipe) : -1;
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

std::string Models() {
  const char* env = std::getenv("SHARDWIRE_SHARED_DIR");
  const std::string path = std::string(env ? env : "") + "/models";
  return env && std::filesystem::exists(path + "/tiny-qwen3-moe-f32") ? path : "";
}

TEST(DescribeCommand, InferWriteRulesAndPlanWithThem) {
  const std::string models = Models();
  if (models.empty()) GTEST_SKIP() << "no ../shared/models here";
  const std::string work = std::string(SHARDWIRE_TEST_WORK_DIR) + "/describe";
  std::filesystem::create_directories(work);
  const std::string dir = models + "/tiny-qwen3-moe-f32";
  const std::string rules = work + "/inferred.yaml";
  auto [code, out] = RunCli("describe --checkpoint " + dir + "/tiny_qwen3_moe.safetensors --config " + dir +
                            "/tiny_qwen3_moe_config.json --infer --write-rules " + rules);
  ASSERT_EQ(code, 0) << out;
  EXPECT_NE(out.find("45 tensors"), std::string::npos) << out;
  EXPECT_NE(out.find("inferred from the checkpoint"), std::string::npos) << out;
  EXPECT_NE(out.find("model.layers.1.mlp.experts.3.down_proj.weight"), std::string::npos) << out;
  ASSERT_TRUE(std::filesystem::exists(rules));

  // The same rules under a model_type nobody ships rules for.
  std::stringstream text;
  text << std::ifstream(rules).rdbuf();
  std::string yaml = text.str();
  yaml.replace(yaml.find("model_types: [qwen3_moe]"), 24, "model_types: [my_moe]");
  std::ofstream(work + "/my_moe.yaml") << yaml;
  std::ifstream config_in(dir + "/tiny_qwen3_moe_config.json");
  std::stringstream config_text;
  config_text << config_in.rdbuf();
  std::string config = config_text.str();
  config.replace(config.find("\"qwen3_moe\""), 11, "\"my_moe\"");
  std::ofstream(work + "/my_moe_config.json") << config;
  std::tie(code, out) = RunCli("plan --config " + work + "/my_moe_config.json --from fsdp=2 --to tp=2");
  EXPECT_EQ(code, 1) << out;
  EXPECT_NE(out.find("\"my_moe\""), std::string::npos) << out;
  std::tie(code, out) = RunCli("plan --model-rules " + work + "/my_moe.yaml --config " + work +
                               "/my_moe_config.json --from fsdp=2 --to tp=1,dp=2");
  EXPECT_EQ(code, 0) << out;
  EXPECT_NE(out.find("45 tensors"), std::string::npos) << out;

  // A broken rules file fails the command line, naming file and line.
  std::ofstream(work + "/broken.yaml")
      << "family: x\nmodel_types: [x]\ntensors:\n  - tensor: a.weight\n    shap: [1]\n";
  std::tie(code, out) = RunCli("plan --model-rules " + work + "/broken.yaml --config " + work +
                               "/my_moe_config.json --from fsdp=2 --to tp=2");
  // The command's error (exit code 1, named after the command), not a usage error (105, "Run
  // with --help", which it was).
  EXPECT_EQ(code, 1) << out;
  EXPECT_NE(out.find("shardwire plan: --model-rules: invalid argument: "), std::string::npos) << out;
  EXPECT_NE(out.find("broken.yaml:5: unknown key \"shap\""), std::string::npos) << out;
  EXPECT_EQ(out.find("Run with --help"), std::string::npos) << out;
}

// A model family only a rules file describes is served and loaded P2P too: `demo p2p-load`
// passes --model-rules on to its `seed` and `load` processes (each describes the model).
TEST(DescribeCommand, RulesFilesReachTheSeedAndLoadProcessesOfTheP2pDemo) {
  const char* env = std::getenv("SHARDWIRE_SHARED_DIR");
  const std::string dir = std::string(env ? env : "") + "/models/tiny-llama3-bf16";
  if (env == nullptr || !std::filesystem::exists(dir + "/model.safetensors")) GTEST_SKIP() << "no tiny-llama3-bf16";
  const std::string work = std::string(SHARDWIRE_TEST_WORK_DIR) + "/describe-p2p";
  std::filesystem::remove_all(work);
  std::filesystem::create_directories(work);
  auto [code, out] = RunCli("describe --checkpoint " + dir + "/model.safetensors --config " + dir +
                            "/config.json --infer --write-rules " + work + "/inferred.yaml");
  ASSERT_EQ(code, 0) << out;
  std::stringstream text;
  text << std::ifstream(work + "/inferred.yaml").rdbuf();
  std::string yaml = text.str();
  ASSERT_NE(yaml.find("model_types: [llama]"), std::string::npos) << yaml;
  yaml.replace(yaml.find("model_types: [llama]"), 20, "model_types: [my_llama]");
  std::ofstream(work + "/my_llama.yaml") << yaml;
  std::stringstream config_text;
  config_text << std::ifstream(dir + "/config.json").rdbuf();
  std::string config = config_text.str();
  ASSERT_NE(config.find("\"llama\""), std::string::npos);
  config.replace(config.find("\"llama\""), 7, "\"my_llama\"");
  std::ofstream(work + "/config.json") << config;
  const std::string demo = "demo p2p-load --checkpoint " + dir + "/model.safetensors --config " + work +
                           "/config.json --fleet 1 --timeout 60 --work-dir " + work;
  std::tie(code, out) = RunCli(demo);
  EXPECT_NE(code, 0) << out;
  EXPECT_NE(out.find("\"my_llama\""), std::string::npos) << out;
  std::tie(code, out) = RunCli(demo + " --model-rules " + work + "/my_llama.yaml");
  EXPECT_EQ(code, 0) << out;
  EXPECT_NE(out.find("byte-for-byte"), std::string::npos) << out;
}

}  // namespace
