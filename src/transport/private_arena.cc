#include "transport/private_arena.h"

#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <string>
#include <utility>

#include <fmt/format.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  // Linux 5.14
#endif

namespace shardwire::transport {
namespace {
constexpr std::size_t kHugePage = std::size_t{2} << 20;
}  // namespace

bool TransparentHugePagesAdvisable() {
  std::ifstream f("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string line;
  if (!f || !std::getline(f, line)) return false;
  return line.find("[always]") != std::string::npos || line.find("[madvise]") != std::string::npos;
}

PrivateMapping::~PrivateMapping() {
  if (raw_ != nullptr) ::munmap(raw_, raw_length_);
}

PrivateMapping::PrivateMapping(PrivateMapping&& o) noexcept
    : raw_(std::exchange(o.raw_, nullptr)),
      raw_length_(std::exchange(o.raw_length_, 0)),
      data_(std::exchange(o.data_, nullptr)),
      length_(std::exchange(o.length_, 0)),
      huge_(std::exchange(o.huge_, false)) {}

PrivateMapping& PrivateMapping::operator=(PrivateMapping&& o) noexcept {
  if (this != &o) {
    if (raw_ != nullptr) ::munmap(raw_, raw_length_);
    raw_ = std::exchange(o.raw_, nullptr);
    raw_length_ = std::exchange(o.raw_length_, 0);
    data_ = std::exchange(o.data_, nullptr);
    length_ = std::exchange(o.length_, 0);
    huge_ = std::exchange(o.huge_, false);
  }
  return *this;
}

Result<PrivateMapping> PrivateMapping::Map(std::size_t length) {
  if (length == 0) return InvalidArgument("private arena: length is 0");
  if (length > SIZE_MAX - 2 * kHugePage) return InvalidArgument(fmt::format("private arena: {} bytes", length));
  const std::size_t rounded = (length + kHugePage - 1) / kHugePage * kHugePage;
  const std::size_t raw_length = rounded + kHugePage;  // room to align the start
  void* raw = ::mmap(nullptr, raw_length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) {
    return IoError(fmt::format("private arena: mmap of {} bytes: {}", raw_length, std::strerror(errno)));
  }
  PrivateMapping m;
  m.raw_ = raw;
  m.raw_length_ = raw_length;
  const auto aligned = (reinterpret_cast<std::uintptr_t>(raw) + kHugePage - 1) / kHugePage * kHugePage;
  m.data_ = reinterpret_cast<std::byte*>(aligned);
  m.length_ = length;
  m.huge_ = ::madvise(m.data_, rounded, MADV_HUGEPAGE) == 0 && TransparentHugePagesAdvisable();
  (void)::madvise(m.raw_, raw_length, MADV_DONTFORK);
  // Populated 32 MiB per call: the call holds this process's mmap lock, and other
  // threads that map memory meanwhile (e.g. the other ranks of a loader creating
  // their agents) would otherwise wait for the whole arena (seen: 4 ranks' arenas
  // populated one after another when the host had to back fresh memory).
  constexpr std::size_t kChunk = std::size_t{32} << 20;
  for (std::size_t at = 0; at < rounded; at += kChunk) {
    if (::madvise(m.data_ + at, std::min(kChunk, rounded - at), MADV_POPULATE_WRITE) != 0) break;
  }
  return m;
}

}  // namespace shardwire::transport
