// `shardwire plan` end to end: a real large config, JSON output, errors that point at
// the offending part of a layout string, and the fabric model and SVG picture
// (--fabric, --svg) checked against the plan computed in this process.
#include <sys/wait.h>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>

#include "shardwire/fabric_model.h"
#include "shardwire/model_config.h"
#include "shardwire/model_layouts.h"
#include "shardwire/planner.h"
#include "shardwire/traffic_matrix.h"

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

// A tiny Llama-shaped config (the numbers of ../shared/models/tiny-llama3-bf16, written
// here so the test runs on a fresh clone), a fabric file, and a work directory.
struct Files {
  std::filesystem::path dir, config, fabric;
};

Files WriteFiles(const std::string& name, const std::string& fabric_json) {
  Files f;
  f.dir = std::filesystem::path(SHARDWIRE_TEST_WORK_DIR) / name;
  std::filesystem::create_directories(f.dir);
  f.config = f.dir / "config.json";
  f.fabric = f.dir / "fabric.json";
  std::ofstream(f.config) << R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 256,
    "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
    "intermediate_size": 128, "torch_dtype": "bfloat16", "tie_word_embeddings": false})";
  std::ofstream(f.fabric) << fabric_json;
  return f;
}

constexpr const char* kFabric = R"({"name": "test", "gpus_per_node": 2, "nic_bytes_per_second": 1e6,
  "nvlink_bytes_per_second": 1e7})";

TEST(PlanCommand, FabricPredictionAndSvgMatchThePlan) {
  const Files f = WriteFiles("plan_fabric_svg", kFabric);
  const std::filesystem::path svg = f.dir / "plan.svg";
  std::filesystem::remove(svg);
  const std::string layouts = " --from fsdp=4 --to tp=2,dp=2";
  auto [code, out] = RunPlan("--config " + f.config.string() + layouts + " --fabric " + f.fabric.string() + " --svg " +
                             svg.string() + " --json");
  ASSERT_EQ(code, 0) << out;
  const auto j = nlohmann::json::parse(out);

  // The same plan, computed here.
  const shardwire::ModelConfig config = shardwire::LoadModelConfig(f.config.string()).value();
  const shardwire::ModelDescription model = shardwire::DescribeModel(config).value();
  const shardwire::TransferPlan plan =
      shardwire::PlanTransfer(shardwire::MakeLayoutFromString(model, "fsdp=4").value(),
                              shardwire::MakeLayoutFromString(model, "tp=2,dp=2").value())
          .value();
  // Default placement, 2 GPUs per node: sources on nodes 0-1, destinations on nodes 2-3
  // (engine replica e on node 2 + e): every byte crosses a NIC, none NVLink.
  const auto& fabric = j["fabric"];
  EXPECT_EQ(fabric["nodes"], 4);
  EXPECT_EQ(fabric["nic_bytes"].get<std::uint64_t>(), plan.total_bytes());
  EXPECT_EQ(fabric["nvlink_bytes"], 0);
  // The ingress bound is the busiest destination's bytes / 1e6 B/s (all over its NIC).
  std::uint64_t busiest = 0;
  for (std::uint64_t b : plan.BytesReceivedPerDestination()) busiest = std::max(busiest, b);
  EXPECT_EQ(fabric["ingress_bound_bytes"].get<std::uint64_t>(), busiest);
  EXPECT_DOUBLE_EQ(fabric["ingress_bound_seconds"].get<double>(), static_cast<double>(busiest) / 1e6);
  EXPECT_GE(fabric["predicted_seconds"].get<double>(), fabric["link_bound_seconds"].get<double>());
  EXPECT_GE(fabric["link_bound_seconds"].get<double>(), fabric["ingress_bound_seconds"].get<double>());
  EXPECT_EQ(fabric["rounds"].get<std::uint32_t>(), plan.rounds());
  ASSERT_FALSE(fabric["bottleneck_links"].empty());

  // The SVG is well-formed XML (xml.etree) and its cells are the plan's byte matrix.
  ASSERT_TRUE(std::filesystem::exists(svg)) << out;
  const std::string cmd = "/usr/bin/python3 " SHARDWIRE_SOURCE_DIR "/tests/cli/svg_cells.py " + svg.string() + " 2>&1";
  std::string parsed;
  FILE* pipe = popen(cmd.c_str(), "r");
  std::array<char, 4096> buf{};
  while (pipe && fgets(buf.data(), buf.size(), pipe) != nullptr) parsed += buf.data();
  ASSERT_EQ(pipe ? pclose(pipe) : -1, 0) << parsed;
  const shardwire::TrafficMatrix m = shardwire::ComputeTrafficMatrix(plan);
  std::map<std::pair<int, int>, std::uint64_t> cells;
  std::vector<std::uint64_t> link_bytes;
  std::istringstream lines(parsed);
  for (std::string kind; lines >> kind;) {
    if (kind == "cell") {
      int r = 0, c = 0;
      std::uint64_t b = 0;
      lines >> r >> c >> b;
      cells[{r, c}] = b;
    } else {
      ASSERT_EQ(kind, "link") << parsed;
      std::uint64_t b = 0;
      lines >> b;
      link_bytes.push_back(b);
    }
  }
  int nonzero = 0;
  for (int r = 0; r < m.rows; ++r) {
    for (int c = 0; c < m.cols; ++c) {
      const auto it = cells.find({r, c});
      EXPECT_EQ(it == cells.end() ? 0 : it->second, m.at(r, c)) << r << "," << c;
      nonzero += m.at(r, c) > 0;
    }
  }
  EXPECT_EQ(static_cast<int>(cells.size()), nonzero);  // no cell outside the matrix
  ASSERT_FALSE(link_bytes.empty());
  EXPECT_EQ(link_bytes.front(), fabric["bottleneck_links"][0]["bytes"].get<std::uint64_t>());

  // Human output names the prediction, the bound, their ratio and the bottleneck.
  std::tie(code, out) = RunPlan("--config " + f.config.string() + layouts + " --fabric " + f.fabric.string());
  ASSERT_EQ(code, 0) << out;
  EXPECT_NE(out.find("prediction / ingress bound = "), std::string::npos) << out;
  EXPECT_NE(out.find("bottleneck  busiest links"), std::string::npos) << out;
}

// Sizes follow their magnitude: the tiny model reads "... KB", not "0.000 GB"; Llama-3.1-8B reads
// in GB with two decimals (16.06 GB per bf16 copy: 8,030,261,248 parameters x 2 bytes).
TEST(PlanCommand, SizesAreShownInTheUnitOfTheirMagnitude) {
  const Files f = WriteFiles("plan-units", kFabric);
  auto [code, out] = RunPlan("--config " + f.config.string() + " --from fsdp=2 --to tp=2");
  ASSERT_EQ(code, 0) << out;
  EXPECT_EQ(out.find("0.000 GB"), std::string::npos) << out;
  EXPECT_NE(out.find(" KB per copy)"), std::string::npos) << out;
  EXPECT_NE(out.find("sent        per source rank: min "), std::string::npos) << out;
  const std::string config = Config("Llama-3.1-8B");
  if (config.empty()) GTEST_SKIP() << "no ../shared/models/Llama-3.1-8B here";
  std::tie(code, out) = RunPlan("--config " + config + " --from fsdp=8 --to tp=4");
  ASSERT_EQ(code, 0) << out;
  EXPECT_NE(out.find("(291 tensors, 16.06 GB per copy)"), std::string::npos) << out;
}

TEST(PlanCommand, BadFabricFileIsRejectedBeforePlanning) {
  const Files f = WriteFiles("plan_fabric_bad", R"({"gpus_per_node": 2, "nic_bytes_per_second": -1,
    "nvlink_bytes_per_second": 1e7})");
  auto [code, out] =
      RunPlan("--config " + f.config.string() + " --from fsdp=4 --to tp=2 --fabric " + f.fabric.string());
  EXPECT_EQ(code, 1);
  EXPECT_NE(out.find("\"nic_bytes_per_second\" is -1, must be > 0"), std::string::npos) << out;
  // A cluster smaller than the layouts: 4 + 2 ranks on 2-GPU nodes need 3 nodes.
  const Files small = WriteFiles("plan_fabric_small", R"({"gpus_per_node": 2, "nic_bytes_per_second": 1,
    "nvlink_bytes_per_second": 1, "nodes": 2})");
  std::tie(code, out) =
      RunPlan("--config " + small.config.string() + " --from fsdp=4 --to tp=2 --fabric " + small.fabric.string());
  EXPECT_EQ(code, 1);
  EXPECT_NE(out.find("\"nodes\" is 2 but the layouts need 3 nodes"), std::string::npos) << out;
  std::tie(code, out) =
      RunPlan("--config " + small.config.string() + " --from fsdp=4 --to tp=2 --fabric " + f.dir.string() + "/none");
  EXPECT_EQ(code, 1);
  EXPECT_NE(out.find("not found: --fabric: fabric file " + f.dir.string() + "/none does not exist"), std::string::npos)
      << out;
  // Not a regular file: refused at once, nothing read (/dev/zero was read until memory ran out).
  std::tie(code, out) = RunPlan("--config " + small.config.string() + " --from fsdp=4 --to tp=2 --fabric /dev/zero");
  EXPECT_EQ(code, 1);
  EXPECT_NE(out.find("fabric file: /dev/zero is not a regular file"), std::string::npos) << out;
}

// A negative or non-numeric count is refused with a message a person can act on (CLI11's own
// check printed its range up to DBL_MAX: "not in range 0.000000 to 1797693134862315708...").
TEST(PlanCommand, ANegativeLayerCountNamesTheBoundNotDblMax) {
  const Files f = WriteFiles("plan_layers_bad", R"({"gpus_per_node": 2, "nic_bytes_per_second": 1,
    "nvlink_bytes_per_second": 1})");
  auto [code, out] = RunPlan("--config " + f.config.string() + " --from fsdp=4 --to tp=2 --layers -1");
  EXPECT_NE(code, 0);
  EXPECT_NE(out.find("--layers: must be a number >= 0, got -1"), std::string::npos) << out;
  EXPECT_EQ(out.find("179769"), std::string::npos) << out;
  std::tie(code, out) = RunPlan("--config " + f.config.string() + " --from fsdp=4 --to tp=2 --layers two");
  EXPECT_NE(code, 0);
  EXPECT_NE(out.find("--layers: must be a number >= 0, got 'two'"), std::string::npos) << out;
  std::tie(code, out) = RunPlan("--config " + f.config.string() + " --from fsdp=4 --to tp=2 --layers 1");
  EXPECT_EQ(code, 0) << out;
}

// --concurrency auto: every power of two up to the larger world is planned and predicted, and
// the plan printed is the one of the smallest K predicted within 5% of the fastest; each K
// tried is checked against a plan computed here at that K.
TEST(PlanCommand, ConcurrencyAutoKeepsTheFastestPredictedK) {
  const Files f = WriteFiles("plan_fabric_auto", kFabric);
  auto [code, out] = RunPlan("--config " + f.config.string() + " --from fsdp=8 --to tp=2,dp=4 --fabric " +
                             f.fabric.string() + " --concurrency auto --json");
  ASSERT_EQ(code, 0) << out;
  const auto j = nlohmann::json::parse(out);
  const auto& tried = j["concurrency_tried"];
  ASSERT_EQ(tried.size(), 4u) << "K = 1, 2, 4, 8 (the larger world is 8)";
  const shardwire::ModelConfig config = shardwire::LoadModelConfig(f.config.string()).value();
  const shardwire::ModelDescription model = shardwire::DescribeModel(config).value();
  const auto fabric = shardwire::LoadFabricSpec(f.fabric.string()).value();
  double best = 1e300;
  std::vector<std::pair<int, double>> predictions;
  for (std::size_t i = 0; i < tried.size(); ++i) {
    const int k = tried[i]["concurrency"].get<int>();
    EXPECT_EQ(k, 1 << i);
    const auto plan = shardwire::PlanTransfer(shardwire::MakeLayoutFromString(model, "fsdp=8").value(),
                                              shardwire::MakeLayoutFromString(model, "tp=2,dp=4").value(),
                                              {.max_concurrency = k})
                          .value();
    const double predicted = shardwire::PredictTransfer(plan, fabric).value().predicted_seconds;
    EXPECT_DOUBLE_EQ(tried[i]["predicted_seconds"].get<double>(), predicted) << "K = " << k;
    best = std::min(best, predicted);
    predictions.emplace_back(k, predicted);
  }
  int chosen = 0;
  double chosen_predicted = 0;
  for (const auto& [k, predicted] : predictions) {
    if (predicted <= best * 1.05) {
      chosen = k, chosen_predicted = predicted;
      break;
    }
  }
  EXPECT_EQ(j["concurrency"].get<int>(), chosen);
  EXPECT_DOUBLE_EQ(j["fabric"]["predicted_seconds"].get<double>(), chosen_predicted);
  EXPECT_LT(chosen_predicted, tried[0]["predicted_seconds"].get<double>()) << "K = 1 serialises every pair";

  std::tie(code, out) =
      RunPlan("--config " + f.config.string() + " --from fsdp=8 --to tp=2,dp=4 --concurrency auto");
  EXPECT_EQ(code, 1);
  EXPECT_NE(out.find("--concurrency auto needs --fabric"), std::string::npos) << out;
  std::tie(code, out) = RunPlan("--config " + f.config.string() + " --from fsdp=8 --to tp=2 --concurrency 0");
  EXPECT_EQ(code, 1);
  EXPECT_NE(out.find("'0' is neither an integer in [1, 4096] nor 'auto'"), std::string::npos) << out;
}

}  // namespace
