// Test helpers: temporary files and the numpy oracle (tests/convert/convert_oracle.py).
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <array>
#include <cstddef>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "convert/fp8_kernels.h"

namespace shardwire::testing {

/// Every kernel path (src/convert/fp8_kernels.h) this CPU runs: the oracle tests check each.
inline std::vector<convert::KernelIsa> KernelPaths() {
  std::vector<convert::KernelIsa> out;
  for (auto isa : {convert::KernelIsa::kPortable, convert::KernelIsa::kAvx2, convert::KernelIsa::kAvx512}) {
    if (convert::KernelsFor(isa) != nullptr) out.push_back(isa);
  }
  return out;
}

/// Makes `isa` the active kernel path for the scope; restores the previous one after.
class ScopedKernelPath {
 public:
  explicit ScopedKernelPath(convert::KernelIsa isa) : saved_(convert::Kernels().isa) {
    EXPECT_TRUE(convert::SelectKernels(isa));
  }
  ~ScopedKernelPath() { convert::SelectKernels(saved_); }
  ScopedKernelPath(const ScopedKernelPath&) = delete;
  ScopedKernelPath& operator=(const ScopedKernelPath&) = delete;

 private:
  convert::KernelIsa saved_;
};

inline std::string OraclePath() { return std::string(SHARDWIRE_CONVERT_TEST_DIR) + "/convert_oracle.py"; }

/// True when /usr/bin/python3 with numpy is available (the oracle's only dependency).
inline bool HaveNumpy() {
  static const bool have = std::system("/usr/bin/python3 -c 'import numpy' >/dev/null 2>&1") == 0;
  return have;
}

/// A fresh directory under the system temp dir, removed at destruction.
class TempDir {
 public:
  TempDir() {
    std::random_device rd;
    path_ = std::filesystem::temp_directory_path() /
            ("shardwire-convert-" + std::to_string(::getpid()) + "-" + std::to_string(rd()));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string File(const std::string& name) const { return (path_ / name).string(); }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

template <typename T>
void WriteRaw(const std::string& path, const std::vector<T>& v) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(v.data()), static_cast<std::streamsize>(v.size() * sizeof(T)));
}

template <typename T>
std::vector<T> ReadRaw(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::vector<T> v(bytes.size() / sizeof(T));
  std::memcpy(v.data(), bytes.data(), v.size() * sizeof(T));
  return v;
}

/// Runs the oracle with `args`; returns its exit code and combined output.
inline std::pair<int, std::string> RunOracle(const std::string& args) {
  const std::string cmd = "/usr/bin/python3 " + OraclePath() + " " + args + " 2>&1";
  std::string out;
  FILE* pipe = popen(cmd.c_str(), "r");
  std::array<char, 4096> buf{};
  while (pipe && fgets(buf.data(), buf.size(), pipe) != nullptr) out += buf.data();
  const int status = pipe ? pclose(pipe) : -1;
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

}  // namespace shardwire::testing
