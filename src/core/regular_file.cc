// ReadRegularFile (regular_file.h).
#include "core/regular_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include <fmt/format.h>

namespace shardwire {
namespace {

Status Errno(std::string_view what, const std::string& path, int err) {
  return IoError(fmt::format("{} {}: {}", what, path, std::strerror(err)));
}

}  // namespace

Status ReadRegularFile(const std::string& path, std::string* out, std::uint64_t max_bytes) {
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

}  // namespace shardwire
