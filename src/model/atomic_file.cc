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

Status ReadWholeFile(const std::string& path, std::string* out, std::uint64_t max_bytes) {
  // O_NONBLOCK: opening a FIFO does not wait for a writer (it is refused below).
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return Errno("cannot open", path, errno);
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return Errno("cannot stat", path, err);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return IoError(fmt::format("{} is not a regular file", path));
  }
  if (static_cast<std::uint64_t>(st.st_size) > max_bytes) {
    ::close(fd);
    return IoError(fmt::format("{} is {} bytes, more than the {} a file of this kind may have", path,
                               static_cast<std::uint64_t>(st.st_size), max_bytes));
  }
  std::string text;
  char buf[1 << 16];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      return Errno("cannot read", path, err);
    }
    if (n == 0) break;
    if (text.size() + static_cast<std::size_t>(n) > max_bytes) {  // grew since the fstat
      ::close(fd);
      return IoError(fmt::format("{} grew past the {} bytes a file of this kind may have", path, max_bytes));
    }
    text.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fd);
  *out = std::move(text);
  return Status::Ok();
}

}  // namespace shardwire::model
