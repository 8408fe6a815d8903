// FileDescriptor: owns one file descriptor of ours (a lane's wake-up eventfd,
// an event fd a backend opened) and close()s it on destruction. Not for file
// descriptors a library owns (UCX's worker event fd).
// Internal header (src/transport); not part of the public API.
#pragma once

#include <unistd.h>

#include <utility>

namespace shardwire::transport {

/// Owns one file descriptor; move-only. Thread-safety: none (one owner).
class FileDescriptor {
 public:
  FileDescriptor() = default;
  explicit FileDescriptor(int fd) : fd_(fd) {}
  FileDescriptor(FileDescriptor&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  FileDescriptor& operator=(FileDescriptor&& o) noexcept {
    if (this != &o) {
      Reset();
      fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
  }
  FileDescriptor(const FileDescriptor&) = delete;
  FileDescriptor& operator=(const FileDescriptor&) = delete;
  ~FileDescriptor() { Reset(); }
  /// The descriptor, or -1.
  int get() const { return fd_; }
  explicit operator bool() const { return fd_ >= 0; }

 private:
  void Reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  int fd_ = -1;
};

}  // namespace shardwire::transport
