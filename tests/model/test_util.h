// Helpers shared by the model-layer tests. Deliberately independent of the code under
// test: files are written byte by byte here, hashes are computed here.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <span>
#include <string>
#include <vector>

#include "shardwire/checkpoint.h"
#include "shardwire/checkpoint_model.h"

namespace shardwire::testing {

/// $SHARDWIRE_SHARED_DIR/models, or "" when the variable is unset or the folder is absent.
inline std::string ModelsDir() {
  const char* shared = std::getenv("SHARDWIRE_SHARED_DIR");
  if (shared == nullptr) return "";
  const std::string dir = std::string(shared) + "/models";
  return std::filesystem::is_directory(dir) ? dir : "";
}

#define SW_REQUIRE_MODELS_DIR(var)                                                      \
  const std::string var = ::shardwire::testing::ModelsDir();                            \
  if (var.empty()) GTEST_SKIP() << "SHARDWIRE_SHARED_DIR unset or without models/: "   \
                                   "the real checkpoints are not available"

/// A fresh directory under the system temp dir, removed with its contents at scope exit.
class TempDir {
 public:
  TempDir() {
    std::string templ = (std::filesystem::temp_directory_path() / "sw_model_test_XXXXXX").string();
    if (::mkdtemp(templ.data()) == nullptr) std::abort();
    path_ = templ;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

inline void WriteBytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

/// Little-endian u64 followed by `header` and `data`: a safetensors file built by hand.
inline std::string RawSafetensors(const std::string& header, const std::string& data,
                                  std::uint64_t declared_len) {
  std::string out;
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((declared_len >> (8 * i)) & 0xFF));
  return out + header + data;
}
inline std::string RawSafetensors(const std::string& header, const std::string& data) {
  return RawSafetensors(header, data, header.size());
}

inline std::uint64_t Fnv1a64(std::span<const std::byte> bytes) {
  std::uint64_t h = 0xCBF29CE484222325ull;
  for (std::byte b : bytes) h = (h ^ static_cast<std::uint8_t>(b)) * 0x100000001B3ull;
  return h;
}

inline std::string Hex16(std::uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

/// Runs the Python oracle on `path`; returns its stdout lines, or fails the test.
inline std::vector<std::string> RunOracle(const std::string& path) {
  const std::string cmd =
      std::string("python3 '") + SHARDWIRE_MODEL_TEST_DIR "/safetensors_oracle.py' '" + path + "'";
  std::vector<std::string> lines;
  FILE* pipe = ::popen(cmd.c_str(), "r");
  if (pipe == nullptr) {
    ADD_FAILURE() << "cannot run " << cmd;
    return lines;
  }
  std::string current;
  for (int c; (c = std::fgetc(pipe)) != EOF;) {
    if (c == '\n') {
      lines.push_back(current);
      current.clear();
    } else {
      current.push_back(static_cast<char>(c));
    }
  }
  const int rc = ::pclose(pipe);
  EXPECT_EQ(rc, 0) << cmd;
  return lines;
}

/// The substring check used for error messages, with a readable failure.
#define EXPECT_MESSAGE_HAS(status, text)                                       \
  EXPECT_NE((status).message().find(text), std::string::npos)                  \
      << "message \"" << (status).message() << "\" lacks \"" << (text) << "\""

/// A real checkpoint's description (via DescribeCheckpointModel) and its tensor list,
/// for tests that compare the two; failures are recorded as test failures.
struct LoadedModel {
  ModelDescription description;
  std::vector<TensorSpec> checkpoint_tensors;
};

inline LoadedModel LoadRealModel(const std::string& models, const std::string& dir) {
  LoadedModel out;
  auto cp = Checkpoint::Open(models + "/" + dir);
  EXPECT_TRUE(cp.ok()) << cp.status().ToString();
  if (!cp.ok()) return out;
  EXPECT_FALSE(cp->config_path().empty()) << dir;
  auto description = DescribeCheckpointModel(*cp);
  EXPECT_TRUE(description.ok()) << description.status().ToString();
  if (description.ok()) out.description = *description;
  out.checkpoint_tensors = cp->tensors();
  return out;
}

}  // namespace shardwire::testing
