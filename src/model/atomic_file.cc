#include "model/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <utility>

#include <fmt/format.h>

namespace shardwire::model {
namespace {

Status Errno(std::string_view what, const std::string& path, int err) {
  return IoError(fmt::format("{} {}: {}", what, path, std::strerror(err)));
}

}  // namespace

std::string AtomicFile::TempPath(const std::string& path) {
  // Per-process name: two processes writing the same file never share a temporary.
  return fmt::format("{}.tmp.{}", path, ::getpid());
}

Result<AtomicFile> AtomicFile::Create(const std::string& path) {
  const std::string tmp = TempPath(path);
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return Errno("cannot create", tmp, errno);
  return AtomicFile(path, fd);
}

AtomicFile::AtomicFile(AtomicFile&& other) noexcept
    : path_(std::move(other.path_)), fd_(std::exchange(other.fd_, -1)),
      committed_(std::exchange(other.committed_, true)) {}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_ && !path_.empty()) ::unlink(TempPath(path_).c_str());
}

Status AtomicFile::Write(std::span<const std::byte> bytes) {
  if (fd_ < 0) return Internal("write to a closed AtomicFile " + path_);
  while (!bytes.empty()) {
    const ssize_t n = ::write(fd_, bytes.data(), bytes.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return Errno("cannot write", TempPath(path_), errno);
    }
    bytes = bytes.subspan(static_cast<std::size_t>(n));
  }
  return Status::Ok();
}

Status AtomicFile::Commit() {
  if (fd_ < 0) return Internal("commit of a closed AtomicFile " + path_);
  const std::string tmp = TempPath(path_);
  if (::fsync(fd_) != 0) return Errno("cannot fsync", tmp, errno);
  const int fd = std::exchange(fd_, -1);
  if (::close(fd) != 0) return Errno("cannot close", tmp, errno);
  if (std::rename(tmp.c_str(), path_.c_str()) != 0) {
    return Errno("cannot rename " + tmp + " to", path_, errno);
  }
  committed_ = true;
  return Status::Ok();
}

Status WriteFileAtomically(const std::string& path, std::string_view text) {
  SW_ASSIGN_OR_RETURN(AtomicFile file, AtomicFile::Create(path));
  SW_RETURN_IF_ERROR(file.Write(std::as_bytes(std::span(text.data(), text.size()))));
  return file.Commit();
}

}  // namespace shardwire::model
