// Internal: write a file so that readers see either the old file or the complete new one.
// Bytes go to `<path>.tmp.<pid>`; Commit() fsyncs, closes and renames it over `path`. An
// uncommitted AtomicFile removes its .tmp file when destroyed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "shardwire/status.h"

namespace shardwire::model {

class AtomicFile {
 public:
  /// Creates (truncates) TempPath(path). kIoError naming it on failure.
  static Result<AtomicFile> Create(const std::string& path);

  AtomicFile(AtomicFile&& other) noexcept;
  AtomicFile& operator=(AtomicFile&&) = delete;
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  ~AtomicFile();

  /// Appends all of `bytes` (retrying short writes). kIoError naming the path.
  Status Write(std::span<const std::byte> bytes);
  /// fsync + close + rename to the final path. kIoError naming the path.
  Status Commit();

 private:
  /// `<path>.tmp.<pid>`: where the bytes go until Commit.
  static std::string TempPath(const std::string& path);

  AtomicFile(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  std::string path_;
  int fd_ = -1;
  bool committed_ = false;
};

/// Writes `text` to `path` through an AtomicFile: the file holds all of it or is left as it
/// was. kIoError naming the path on failure.
Status WriteFileAtomically(const std::string& path, std::string_view text);

}  // namespace shardwire::model
