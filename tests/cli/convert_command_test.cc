// `shardwire convert` end to end: real and generated checkpoints converted by the binary, checked
// by the numpy oracle (tests/convert/convert_oracle.py: its own safetensors reader, its own
// DeepGEMM transcription, index total_size and quantization_config) and re-read with our
// Checkpoint API against the in-process kernels; errors leave no output behind.
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "convert/oracle_util.h"
#include "shardwire/cast.h"
#include "shardwire/checkpoint.h"
#include "shardwire/fp8_block.h"
#include "shardwire/safetensors.h"

namespace shardwire {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;

std::pair<int, std::string> RunConvert(const std::string& args) {
  const std::string cmd = SHARDWIRE_BIN " convert " + args + " 2>&1";
  std::string out;
  FILE* pipe = popen(cmd.c_str(), "r");
  std::array<char, 4096> buf{};
  while (pipe && fgets(buf.data(), buf.size(), pipe) != nullptr) out += buf.data();
  const int status = pipe ? pclose(pipe) : -1;
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

std::string SharedModel(const std::string& name) {
  const char* env = std::getenv("SHARDWIRE_SHARED_DIR");
  const std::string path = std::string(env ? env : "") + "/models/" + name;
  return env && fs::exists(path) ? path : "";
}

std::string OracleCheck(const std::string& src, const std::string& out, const std::string& format,
                        const std::string& scale = "fp32") {
  const auto [code, text] = testing::RunOracle("checkpoint " + src + " " + out + " " + format + " " + scale);
  return code == 0 ? text : "oracle failed: " + text;
}

struct Owned {
  TensorSpec spec;
  std::vector<std::byte> bytes;
};

Owned Random(const std::string& name, DType dtype, std::vector<std::int64_t> shape, unsigned seed, float nan_at = -1) {
  Owned o{TensorSpec{name, dtype, std::move(shape)}, {}};
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.05f);
  std::vector<float> v(static_cast<std::size_t>(o.spec.numel()));
  for (auto& x : v) x = normal(rng) * (rng() % 17 == 0 ? 100.0f : 1.0f);
  if (nan_at >= 0) v[static_cast<std::size_t>(nan_at)] = NAN;
  o.bytes.resize(o.spec.nbytes());
  EXPECT_TRUE(CastElements(DType::kF32, dtype, std::as_bytes(std::span(v)), o.bytes).ok());
  return o;
}

// A checkpoint with partial blocks, a 3-D expert tensor, fp16/fp32 tensors, a router and a bias.
std::vector<Owned> GeneratedTensors() {
  return {Random("model.embed_tokens.weight", DType::kBF16, {300, 130}, 1),
          Random("model.layers.0.self_attn.q_proj.weight", DType::kBF16, {260, 300}, 2),
          Random("model.layers.0.mlp.experts.w13.weight", DType::kBF16, {3, 256, 130}, 3),
          Random("model.layers.0.mlp.gate.weight", DType::kBF16, {8, 300}, 4),
          Random("model.layers.0.input_layernorm.weight", DType::kF32, {300}, 5),
          Random("model.layers.0.self_attn.o_proj.bias", DType::kF16, {300}, 6),
          Random("model.layers.0.mlp.down_proj.weight", DType::kF16, {130, 260}, 7),
          Random("lm_head.weight", DType::kBF16, {300, 130}, 8)};
}
const std::set<std::string> kQuantised = {"model.layers.0.self_attn.q_proj.weight",
                                          "model.layers.0.mlp.experts.w13.weight",
                                          "model.layers.0.mlp.down_proj.weight"};

void WriteCheckpoint(const std::string& dir, const std::vector<Owned>& tensors) {
  fs::create_directories(dir);
  std::vector<TensorView> views;
  for (const auto& t : tensors) views.push_back({t.spec, t.bytes});
  ASSERT_TRUE(WriteSafetensors(dir + "/model.safetensors", views).ok());
  // A model_type no rules describe: the name rule decides (a llama config that describes none of
  // these tensors is an error, RulesThatDoNotDescribeTheCheckpointAreAnErrorNotAFallback).
  std::ofstream(dir + "/config.json") << R"({"model_type": "synthetic-test", "torch_dtype": "bfloat16"})";
}

// Re-reads `out` with our Checkpoint API: quantised tensors equal the in-process kernel's bytes,
// the rest equal the source bytes.
void ExpectSameAsKernels(const std::string& src, const std::string& out, const std::set<std::string>& quantised) {
  auto a = Checkpoint::Open(src);
  auto b = Checkpoint::Open(out);
  ASSERT_TRUE(a.ok() && b.ok()) << a.status().ToString() << b.status().ToString();
  EXPECT_EQ(b->tensors().size(), a->tensors().size() + quantised.size());
  for (const auto& spec : a->tensors()) {
    auto src_view = a->Get(spec.name);
    auto dst_view = b->Get(spec.name);
    ASSERT_TRUE(src_view.ok() && dst_view.ok()) << spec.name;
    if (!quantised.count(spec.name)) {
      EXPECT_EQ(dst_view->spec, spec);
      EXPECT_TRUE(std::equal(src_view->data.begin(), src_view->data.end(), dst_view->data.begin())) << spec.name;
      continue;
    }
    auto scale_view = b->Get(spec.name + "_scale_inv");
    ASSERT_TRUE(scale_view.ok()) << spec.name;
    EXPECT_EQ(dst_view->spec.dtype, DType::kF8E4M3);
    std::vector<std::uint8_t> q(static_cast<std::size_t>(spec.numel()));
    std::vector<float> s(static_cast<std::size_t>(scale_view->spec.numel()));
    ASSERT_TRUE(QuantizeFp8BlockTensor(*src_view, q, s, {}).ok());
    EXPECT_EQ(std::memcmp(q.data(), dst_view->data.data(), q.size()), 0) << spec.name;
    EXPECT_EQ(std::memcmp(s.data(), scale_view->data.data(), s.size() * 4), 0) << spec.name;
  }
}

TEST(ConvertCommand, RealTinyLlama3Bf16ToFp8Block128) {
  const std::string src = SharedModel("tiny-llama3-bf16");
  if (src.empty()) GTEST_SKIP() << "no ../shared/models/tiny-llama3-bf16 here";
  if (!testing::HaveNumpy()) GTEST_SKIP() << "/usr/bin/python3 with numpy is needed for the oracle";
  TempDir dir;
  const auto [code, out] = RunConvert("--checkpoint " + src + " --out " + dir.File("fp8") + " --format fp8-block128");
  ASSERT_EQ(code, 0) << out;
  EXPECT_NE(out.find("21 tensors (14 quantised to FP8)"), std::string::npos) << out;
  EXPECT_NE(out.find("quantising the tensors the llama rules mark quantizable"), std::string::npos) << out;
  EXPECT_EQ(OracleCheck(src, dir.File("fp8"), "fp8-block128"), "ok 35\n");
  std::set<std::string> quantised;
  for (const auto& t : Checkpoint::Open(src)->tensors()) {
    if (t.shape.size() == 2 && t.name.find("embed") == std::string::npos && t.name != "lm_head.weight") {
      quantised.insert(t.name);
    }
  }
  EXPECT_EQ(quantised.size(), 14u);
  ExpectSameAsKernels(src, dir.File("fp8"), quantised);
}

TEST(ConvertCommand, GeneratedCheckpointShardedWithIndexAndUe8m0) {
  if (!testing::HaveNumpy()) GTEST_SKIP() << "/usr/bin/python3 with numpy is needed for the oracle";
  TempDir dir;
  WriteCheckpoint(dir.File("src"), GeneratedTensors());
  auto [code, out] = RunConvert("--checkpoint " + dir.File("src") + " --out " + dir.File("fp8") +
                                " --format fp8-block128 --shard-size 100000");
  // Its config describes no model: the name rule decides, and the output says so.
  EXPECT_NE(out.find("no rules describe this checkpoint"), std::string::npos) << out;
  ASSERT_EQ(code, 0) << out;
  EXPECT_TRUE(fs::exists(dir.File("fp8/model.safetensors.index.json")));
  EXPECT_TRUE(fs::exists(dir.File("fp8/model-00002-of-00005.safetensors"))) << out;
  EXPECT_EQ(OracleCheck(dir.File("src"), dir.File("fp8"), "fp8-block128"), "ok 11\n");
  ExpectSameAsKernels(dir.File("src"), dir.File("fp8"), kQuantised);
  // Each scale sits in the same shard as its weight.
  auto b = Checkpoint::Open(dir.File("fp8"));
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  for (const auto& f : b->files()) {
    for (const auto& t : f.tensors()) {
      if (t.name.ends_with("_scale_inv")) {
        EXPECT_TRUE(f.Contains(t.name.substr(0, t.name.size() - 10))) << t.name;
      }
    }
  }
  std::tie(code, out) =
      RunConvert("--checkpoint " + dir.File("src") + " --out " + dir.File("ue") + " --format fp8-block128 --ue8m0");
  ASSERT_EQ(code, 0) << out;
  EXPECT_EQ(OracleCheck(dir.File("src"), dir.File("ue"), "fp8-block128", "ue8m0"), "ok 11\n");
}

// SHARDWIRE_CONVERT_KERNELS naming no path this CPU runs (a typo) was ignored silently, so a
// comparison of two paths could compare one with itself; it is a warning naming what runs, and
// the conversion still uses the widest path (its bytes are the same whichever runs).
TEST(ConvertCommand, AnUnknownKernelPathInTheEnvironmentIsAWarning) {
  TempDir dir;
  WriteCheckpoint(dir.File("src"), GeneratedTensors());
  auto [code, out] =
      RunConvert("--checkpoint " + dir.File("src") + " --out " + dir.File("a") + " --format fp8-block128");
  ASSERT_EQ(code, 0) << out;
  EXPECT_EQ(out.find("SHARDWIRE_CONVERT_KERNELS"), std::string::npos) << out;
  const char* before = std::getenv("SHARDWIRE_CONVERT_KERNELS");
  const std::string kept = before != nullptr ? before : "";
  ::setenv("SHARDWIRE_CONVERT_KERNELS", "avx2x", 1);
  std::tie(code, out) =
      RunConvert("--checkpoint " + dir.File("src") + " --out " + dir.File("b") + " --format fp8-block128");
  if (before != nullptr) {
    ::setenv("SHARDWIRE_CONVERT_KERNELS", kept.c_str(), 1);
  } else {
    ::unsetenv("SHARDWIRE_CONVERT_KERNELS");
  }
  ASSERT_EQ(code, 0) << out;
  EXPECT_NE(out.find("SHARDWIRE_CONVERT_KERNELS=avx2x is not a conversion kernel path this CPU runs (it runs: "
                     "portable"),
            std::string::npos)
      << out;
  ExpectSameAsKernels(dir.File("src"), dir.File("b"), kQuantised);
}

// An output directory that holds a checkpoint is refused unless --overwrite; with it, the old
// checkpoint's files the new run did not rewrite are removed: a sharded FP8 output's index
// would otherwise be opened instead of the single fp32 file written after it.
TEST(ConvertCommand, AnExistingCheckpointInTheOutputIsRefusedOrReplacedWhole) {
  TempDir dir;
  WriteCheckpoint(dir.File("src"), GeneratedTensors());
  auto [code, out] = RunConvert("--checkpoint " + dir.File("src") + " --out " + dir.File("o") +
                                " --format fp8-block128 --shard-size 100000");
  ASSERT_EQ(code, 0) << out;
  ASSERT_TRUE(fs::exists(dir.File("o/model.safetensors.index.json")));
  std::tie(code, out) = RunConvert("--checkpoint " + dir.File("src") + " --out " + dir.File("o") + " --format fp32");
  EXPECT_NE(code, 0) << out;
  EXPECT_NE(out.find("holds a checkpoint already"), std::string::npos) << out;
  EXPECT_NE(out.find("--overwrite"), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(dir.File("o/model.safetensors"))) << "refused, yet written";
  std::tie(code, out) =
      RunConvert("--checkpoint " + dir.File("src") + " --out " + dir.File("o") + " --format fp32 --overwrite");
  ASSERT_EQ(code, 0) << out;
  EXPECT_FALSE(fs::exists(dir.File("o/model.safetensors.index.json"))) << "the old index is left";
  EXPECT_FALSE(fs::exists(dir.File("o/model-00001-of-00005.safetensors"))) << "an old shard is left";
  auto opened = Checkpoint::Open(dir.File("o"));
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  EXPECT_TRUE(opened->path().ends_with("model.safetensors")) << opened->path();
  for (const auto& f : opened->files()) {
    for (const auto& t : f.tensors()) EXPECT_EQ(t.dtype, DType::kF32) << t.name;
  }
}

// The files of directory `dir` (names, not below) and their bytes.
std::map<std::string, std::string> FilesOf(const std::string& dir) {
  std::map<std::string, std::string> files;
  for (const auto& e : fs::directory_iterator(dir)) {
    std::ifstream in(e.path(), std::ios::binary);
    std::stringstream bytes;
    bytes << in.rdbuf();
    files[e.path().filename().string()] = e.is_regular_file() ? bytes.str() : "<not a file>";
  }
  return files;
}

// A run with --overwrite that fails part-way (a NaN in the fourth of five shards) used to have
// renamed its first shards over the old ones and then deleted them: the old checkpoint was gone.
// Now every file is staged and moved into place only when all are written; a run killed before
// that leaves a staging directory, which the next run removes.
TEST(ConvertCommand, AFailedOverwriteLeavesTheOldCheckpointWhole) {
  TempDir dir;
  auto tensors = GeneratedTensors();
  WriteCheckpoint(dir.File("src"), tensors);
  auto [code, out] = RunConvert("--checkpoint " + dir.File("src") + " --out " + dir.File("o") +
                                " --format fp8-block128 --shard-size 100000");
  ASSERT_EQ(code, 0) << out;
  const auto before = FilesOf(dir.File("o"));
  ASSERT_GT(before.size(), 3u);
  tensors[6] = Random("model.layers.0.mlp.down_proj.weight", DType::kF16, {130, 260}, 7, 129 * 260 + 3);
  WriteCheckpoint(dir.File("nan"), tensors);
  std::tie(code, out) = RunConvert("--checkpoint " + dir.File("nan") + " --out " + dir.File("o") +
                                   " --format fp8-block128 --shard-size 100000 --overwrite");
  EXPECT_EQ(code, 1) << out;
  // The input is at fault: named, not the output file being written.
  EXPECT_NE(out.find(dir.File("nan") + "/model.safetensors: tensor \"model.layers.0.mlp.down_proj.weight\": element "
                                       "[129, 3] is NaN"),
            std::string::npos)
      << out;
  EXPECT_EQ(out.find(dir.File("o") + "/"), std::string::npos) << out;
  EXPECT_TRUE(FilesOf(dir.File("o")) == before) << "the old checkpoint changed";

  // A staging directory a killed run left (its pid is gone) is removed by the next run.
  const pid_t gone = ::fork();
  if (gone == 0) ::_exit(0);
  ASSERT_GT(gone, 0);
  ::waitpid(gone, nullptr, 0);
  const std::string left = dir.File("o/.shardwire-convert-" + std::to_string(gone));
  fs::create_directories(left);
  std::ofstream(left + "/model-00001-of-00005.safetensors") << "half written";
  std::tie(code, out) =
      RunConvert("--checkpoint " + dir.File("src") + " --out " + dir.File("o") + " --format fp32 --overwrite");
  ASSERT_EQ(code, 0) << out;
  EXPECT_FALSE(fs::exists(left));
  const auto after = FilesOf(dir.File("o"));
  EXPECT_EQ(after.size(), 2u);  // model.safetensors, config.json: no staging directory, no old shard
  EXPECT_TRUE(after.count("model.safetensors") == 1 && after.count("config.json") == 1);
}

// An explicit --config of another model was written beside the weights (exit 0, a llama
// config.json next to tiny-qwen3 tensors); it is now a layout mismatch and nothing is written.
TEST(ConvertCommand, AnExplicitConfigOfAnotherModelIsALayoutMismatch) {
  const std::string qwen = SharedModel("tiny-qwen3-f32");
  const std::string llama = SharedModel("tiny-llama3-bf16");
  if (qwen.empty() || llama.empty()) GTEST_SKIP() << "no ../shared/models here";
  TempDir dir;
  auto [code, out] = RunConvert("--checkpoint " + qwen + " --out " + dir.File("o") + " --format bf16 --config " +
                                llama + "/config.json");
  EXPECT_EQ(code, 1) << out;
  EXPECT_NE(out.find("layout mismatch"), std::string::npos) << out;
  EXPECT_NE(out.find("--config \"" + llama + "/config.json\""), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(dir.File("o/config.json")));
  std::tie(code, out) = RunConvert("--checkpoint " + llama + " --out " + dir.File("o") + " --format fp16 --config " +
                                   llama + "/config.json");
  EXPECT_EQ(code, 0) << out;
}

// Rules for the config's model_type that fail on the checkpoint fell back to the name rule with
// exit 0: a config beside the weights saying 3 layers for a 2-layer checkpoint was copied into the
// output, and a --model-rules file's own decisions were dropped. For FP8 both are now errors naming
// the rules file, and nothing is written; a cast (no rules used) says so in a note.
TEST(ConvertCommand, RulesThatDoNotDescribeTheCheckpointAreAnErrorNotAFallback) {
  const std::string llama = SharedModel("tiny-llama3-bf16");
  if (llama.empty()) GTEST_SKIP() << "no ../shared/models/tiny-llama3-bf16 here";
  TempDir dir;
  fs::create_directories(dir.File("src"));
  fs::copy_file(llama + "/model.safetensors", dir.File("src/model.safetensors"));
  std::ifstream in(llama + "/config.json");
  auto config = nlohmann::json::parse(in);
  const int layers = config["num_hidden_layers"].get<int>();
  config["num_hidden_layers"] = layers + 1;
  std::ofstream(dir.File("src/config.json")) << config.dump();
  auto [code, out] =
      RunConvert("--checkpoint " + dir.File("src") + " --out " + dir.File("o") + " --format fp8-block128");
  EXPECT_EQ(code, 1) << out;
  EXPECT_NE(out.find("the rules of model_type \"llama\" (models/rules/llama.yaml) do not describe checkpoint"),
            std::string::npos)
      << out;
  EXPECT_NE(out.find("model.layers." + std::to_string(layers) + "."), std::string::npos)
      << "names a tensor of the layer the checkpoint lacks: " << out;
  EXPECT_EQ(out.find("no rules describe this checkpoint"), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(dir.File("o/config.json")));
  // A cast uses no rules: it converts every tensor and says what does not match.
  std::tie(code, out) = RunConvert("--checkpoint " + dir.File("src") + " --out " + dir.File("c") + " --format fp16");
  EXPECT_EQ(code, 0) << out;
  EXPECT_NE(out.find("note: the rules of model_type \"llama\""), std::string::npos) << out;
  // The right config, and a user's rules file whose up_proj has the wrong shape.
  config["num_hidden_layers"] = layers;
  std::ofstream(dir.File("src/config.json")) << config.dump();
  std::ifstream builtin(SHARDWIRE_CONVERT_TEST_DIR "/../../models/rules/llama.yaml");
  std::string rules((std::istreambuf_iterator<char>(builtin)), std::istreambuf_iterator<char>());
  const std::string up = "      - linear: \"{prefix}up_proj\"\n        out: inter";
  ASSERT_NE(rules.find(up), std::string::npos);
  rules.replace(rules.find(up), up.size(), "      - linear: \"{prefix}up_proj\"\n        out: hidden_size");
  std::ofstream(dir.File("mine.yaml")) << rules;
  std::tie(code, out) = RunConvert("--checkpoint " + dir.File("src") + " --out " + dir.File("o") +
                                   " --format fp8-block128 --model-rules " + dir.File("mine.yaml"));
  EXPECT_EQ(code, 1) << out;
  EXPECT_NE(out.find("mine.yaml) do not describe checkpoint"), std::string::npos) << out;
  EXPECT_NE(out.find("up_proj"), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(dir.File("o/config.json")));
  // Without the user's file the same checkpoint converts with the built-in rules.
  std::tie(code, out) =
      RunConvert("--checkpoint " + dir.File("src") + " --out " + dir.File("o") + " --format fp8-block128");
  EXPECT_EQ(code, 0) << out;
  EXPECT_NE(out.find("quantising the tensors the llama rules mark quantizable"), std::string::npos) << out;
}

TEST(ConvertCommand, CastsMatchTheOracle) {
  if (!testing::HaveNumpy()) GTEST_SKIP() << "/usr/bin/python3 with numpy is needed for the oracle";
  TempDir dir;
  WriteCheckpoint(dir.File("src"), GeneratedTensors());
  for (const std::string format : {"bf16", "fp16", "fp32"}) {
    const auto [code, out] =
        RunConvert("--checkpoint " + dir.File("src") + " --out " + dir.File(format) + " --format " + format);
    ASSERT_EQ(code, 0) << out;
    EXPECT_EQ(OracleCheck(dir.File("src"), dir.File(format), format), "ok 8\n") << format;
  }
  const std::string real = SharedModel("tiny-qwen3-f32");
  if (real.empty()) return;
  const auto [code, out] = RunConvert("--checkpoint " + real + " --out " + dir.File("q3") + " --format bf16");
  ASSERT_EQ(code, 0) << out;
  EXPECT_NE(OracleCheck(real, dir.File("q3"), "bf16").find("ok "), std::string::npos);
}

TEST(ConvertCommand, ErrorsBeforeWritingAndNothingLeftBehind) {
  TempDir dir;
  auto tensors = GeneratedTensors();
  WriteCheckpoint(dir.File("src"), tensors);
  auto [code, out] = RunConvert("--checkpoint " + dir.File("src") + " --out " + dir.File("o") + " --format fp4");
  EXPECT_EQ(code, 1);
  EXPECT_NE(out.find("--format \"fp4\""), std::string::npos) << out;
  // A negative shard size is refused by the argument parser (it became 2^64 - 1: one file).
  std::tie(code, out) =
      RunConvert("--checkpoint " + dir.File("src") + " --out " + dir.File("o") + " --format bf16 --shard-size -1");
  EXPECT_NE(code, 0) << out;
  EXPECT_NE(out.find("--shard-size"), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(dir.File("o/model.safetensors")));
  std::tie(code, out) =
      RunConvert("--checkpoint " + dir.File("src") + " --out " + dir.File("o") + " --format bf16 --ue8m0");
  EXPECT_EQ(code, 1);
  EXPECT_NE(out.find("--ue8m0 applies only"), std::string::npos) << out;
  std::tie(code, out) =
      RunConvert("--checkpoint " + dir.File("src") + " --out /proc/shardwire-no/out --format fp8-block128");
  EXPECT_EQ(code, 1);
  EXPECT_NE(out.find("output directory \"/proc/shardwire-no/out\""), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(dir.File("o")));
  std::tie(code, out) = RunConvert("--checkpoint " + dir.File("src") + " --out " + dir.File("src") + " --format bf16");
  EXPECT_EQ(code, 1);
  EXPECT_NE(out.find("is the checkpoint's own directory"), std::string::npos) << out;

  // A dtype that cannot be converted: named, and the output directory is not even created.
  Owned ints{TensorSpec{"model.layers.0.mlp.up_proj.weight", DType::kI32, {4, 4}}, std::vector<std::byte>(64)};
  WriteCheckpoint(dir.File("ints"), {tensors[0], ints});
  std::tie(code, out) = RunConvert("--checkpoint " + dir.File("ints") + " --out " + dir.File("o") + " --format bf16");
  EXPECT_EQ(code, 1);
  EXPECT_NE(out.find("unsupported: "), std::string::npos) << out;
  EXPECT_NE(out.find("tensor \"model.layers.0.mlp.up_proj.weight\" is I32"), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(dir.File("o")));

  // NaN in a quantised tensor: a typed error naming tensor and element; written shards removed.
  tensors[6] = Random("model.layers.0.mlp.down_proj.weight", DType::kF16, {130, 260}, 7, 129 * 260 + 3);
  WriteCheckpoint(dir.File("nan"), tensors);
  std::tie(code, out) = RunConvert("--checkpoint " + dir.File("nan") + " --out " + dir.File("o") +
                                   " --format fp8-block128 --shard-size 1");
  EXPECT_EQ(code, 1);
  EXPECT_NE(out.find("corrupt data"), std::string::npos) << out;
  EXPECT_NE(out.find("\"model.layers.0.mlp.down_proj.weight\": element [129, 3] is NaN"), std::string::npos) << out;
  std::size_t files = 0;
  for (const auto& e : fs::directory_iterator(dir.File("o")))
    files += e.path().string().find("safetensors") != std::string::npos;
  EXPECT_EQ(files, 0u);

  const std::string mlx = SharedModel("tiny-qwen3-sharded-mlx4bit");
  if (mlx.empty()) return;
  std::tie(code, out) = RunConvert("--checkpoint " + mlx + " --out " + dir.File("m") + " --format fp8-block128");
  EXPECT_EQ(code, 1);
  EXPECT_NE(out.find("is U32"), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(dir.File("m")));
}

}  // namespace
}  // namespace shardwire
