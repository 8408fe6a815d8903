// SafetensorsFile: mmap + header validation. Format: huggingface/safetensors README "Format".
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <numeric>
#include <utility>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "model/bounded_json.h"
#include "shardwire/safetensors.h"

namespace shardwire {
namespace {

using nlohmann::json;

// Reads a little-endian u64 regardless of host byte order or alignment.
std::uint64_t LoadLe64(const std::byte* p) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<std::uint64_t>(p[i]);
  return v;
}

struct Entry {
  TensorSpec spec;
  std::uint64_t begin = 0;
  std::uint64_t end = 0;
};

// Parses and checks one header entry (everything that needs only the entry itself).
Status ParseEntry(const std::string& path, const std::string& name, const json& value,
                  std::uint64_t data_size, Entry* out) {
  auto bad = [&](std::string_view what) {
    return CorruptData(fmt::format("{}: tensor \"{}\": {}", path, name, what));
  };
  if (!value.is_object()) return bad("header entry is not a JSON object");
  const auto dtype_it = value.find("dtype");
  if (dtype_it == value.end()) return bad("missing \"dtype\"");
  if (!dtype_it->is_string()) return bad("\"dtype\" is not a string");
  const auto dtype = ParseDType(dtype_it->get_ref<const std::string&>());
  if (!dtype.ok()) return bad(dtype.status().message());

  const auto shape_it = value.find("shape");
  if (shape_it == value.end()) return bad("missing \"shape\"");
  if (!shape_it->is_array()) return bad("\"shape\" is not an array");
  if (shape_it->size() > kMaxTensorDims) {
    // Valid safetensors, but no model weight has so many: refused before any layout meets it.
    return InvalidArgument(fmt::format("{}: tensor \"{}\": {} dimensions (Shardwire handles at most {})", path, name,
                                       shape_it->size(), kMaxTensorDims));
  }
  std::vector<std::int64_t> shape;
  std::uint64_t numel = 1;
  for (const auto& dim : *shape_it) {
    if (dim.is_number_integer() && !dim.is_number_unsigned()) {
      return bad(fmt::format("negative dimension {} in shape {}", dim.get<std::int64_t>(),
                             shape_it->dump()));
    }
    if (!dim.is_number_unsigned()) {
      return bad(fmt::format("dimension {} in shape is not a non-negative integer", dim.dump()));
    }
    const auto d = dim.get<std::uint64_t>();
    if (d > static_cast<std::uint64_t>(INT64_MAX) || __builtin_mul_overflow(numel, d, &numel)) {
      return bad(fmt::format("shape {} has too many elements", shape_it->dump()));
    }
    shape.push_back(static_cast<std::int64_t>(d));
  }
  std::uint64_t nbytes = 0;
  if (numel > static_cast<std::uint64_t>(INT64_MAX) ||
      __builtin_mul_overflow(numel, DTypeSize(*dtype), &nbytes)) {
    return bad(fmt::format("shape {} has too many bytes", shape_it->dump()));
  }

  const auto off_it = value.find("data_offsets");
  if (off_it == value.end()) return bad("missing \"data_offsets\"");
  if (!off_it->is_array() || off_it->size() != 2 || !(*off_it)[0].is_number_unsigned() ||
      !(*off_it)[1].is_number_unsigned()) {
    return bad(fmt::format("\"data_offsets\" {} is not two non-negative integers", off_it->dump()));
  }
  const auto begin = (*off_it)[0].get<std::uint64_t>();
  const auto end = (*off_it)[1].get<std::uint64_t>();
  if (begin > end) return bad(fmt::format("data_offsets [{}, {}]: begin > end", begin, end));
  if (end > data_size) {
    return bad(fmt::format("data_offsets [{}, {}] end past the data section ({} bytes)", begin,
                           end, data_size));
  }
  if (end - begin != nbytes) {
    return bad(fmt::format("data_offsets [{}, {}] span {} bytes but {}{} needs {} bytes", begin,
                           end, end - begin, DTypeName(*dtype), ShapeToString(shape), nbytes));
  }
  out->spec = TensorSpec{name, *dtype, std::move(shape)};
  out->begin = begin;
  out->end = end;
  return Status::Ok();
}

Status ParseMetadata(const std::string& path, const json& value,
                     std::map<std::string, std::string>* out) {
  if (value.is_null()) return Status::Ok();
  if (!value.is_object()) {
    return CorruptData(fmt::format("{}: \"__metadata__\" is not a JSON object", path));
  }
  for (const auto& [key, v] : value.items()) {
    if (!v.is_string()) {
      return CorruptData(
          fmt::format("{}: \"__metadata__\" value of \"{}\" is not a string", path, key));
    }
    (*out)[key] = v.get<std::string>();
  }
  return Status::Ok();
}

}  // namespace

Result<SafetensorsFile> SafetensorsFile::Open(const std::string& path) {
  // O_NONBLOCK: a FIFO is refused below instead of blocking the open until a writer comes.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT) return NotFound(fmt::format("no such file {}", path));
    return IoError(fmt::format("cannot open {}: {}", path, std::strerror(err)));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return IoError(fmt::format("cannot stat {}: {}", path, std::strerror(err)));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return IoError(fmt::format("{} is not a regular file", path));
  }
  const auto file_size = static_cast<std::uint64_t>(st.st_size);
  if (file_size < 8) {
    ::close(fd);
    return CorruptData(fmt::format(
        "{}: truncated: {} bytes, shorter than the 8-byte header length", path, file_size));
  }
  void* map = ::mmap(nullptr, file_size, PROT_READ, MAP_SHARED, fd, 0);
  const int map_err = errno;
  ::close(fd);
  if (map == MAP_FAILED) {
    return IoError(fmt::format("cannot mmap {}: {}", path, std::strerror(map_err)));
  }

  SafetensorsFile file;  // from here on, the destructor unmaps on every error path
  file.path_ = path;
  file.base_ = static_cast<const std::byte*>(map);
  file.file_size_ = file_size;

  const std::uint64_t header_len = LoadLe64(file.base_);
  if (header_len > kMaxSafetensorsHeaderBytes) {
    return CorruptData(fmt::format("{}: header length {} exceeds the {}-byte limit", path,
                                   header_len, kMaxSafetensorsHeaderBytes));
  }
  if (header_len > file_size - 8) {
    return CorruptData(fmt::format(
        "{}: truncated: header length {} runs past the end of the file ({} bytes)", path,
        header_len, file_size));
  }
  file.data_offset_ = 8 + header_len;
  const std::uint64_t data_size = file_size - file.data_offset_;

  const char* header = reinterpret_cast<const char*>(file.base_ + 8);
  auto parsed = model::ParseBoundedJson(std::string_view(header, header_len));
  if (!parsed.ok()) return CorruptData(fmt::format("{}: header is {}", path, parsed.status().message()));
  json root = std::move(*parsed);
  if (!root.is_object()) {
    return CorruptData(fmt::format("{}: header is not a JSON object", path));
  }

  std::vector<Entry> entries;
  entries.reserve(root.size());
  for (const auto& [key, value] : root.items()) {
    if (key == "__metadata__") {
      SW_RETURN_IF_ERROR(ParseMetadata(path, value, &file.metadata_));
      continue;
    }
    Entry entry;
    SW_RETURN_IF_ERROR(ParseEntry(path, key, value, data_size, &entry));
    entries.push_back(std::move(entry));
  }

  // The tensors must tile the data section: no overlap, no hole, nothing after the last.
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  std::uint64_t pos = 0;
  const Entry* prev = nullptr;
  for (const auto& e : entries) {
    if (e.begin < pos) {
      return CorruptData(fmt::format(
          "{}: tensor \"{}\" (data_offsets [{}, {}]) overlaps tensor \"{}\" (data_offsets "
          "[{}, {}])",
          path, e.spec.name, e.begin, e.end, prev->spec.name, prev->begin, prev->end));
    }
    if (e.begin > pos) {
      return CorruptData(fmt::format(
          "{}: bytes [{}, {}) of the data section before tensor \"{}\" belong to no tensor "
          "(the format forbids holes)",
          path, pos, e.begin, e.spec.name));
    }
    pos = e.end;
    prev = &e;
  }
  if (pos != data_size) {
    return CorruptData(fmt::format(
        "{}: the data section has {} bytes but the tensors cover only {} (trailing bytes)",
        path, data_size, pos));
  }

  file.tensors_.reserve(entries.size());
  file.begin_.reserve(entries.size());
  for (auto& e : entries) {
    file.index_.emplace(e.spec.name, file.tensors_.size());
    file.begin_.push_back(e.begin);
    file.tensors_.push_back(std::move(e.spec));
  }
  return file;
}

SafetensorsFile::SafetensorsFile(SafetensorsFile&& other) noexcept
    : path_(std::move(other.path_)),
      base_(std::exchange(other.base_, nullptr)),
      file_size_(std::exchange(other.file_size_, 0)),
      data_offset_(std::exchange(other.data_offset_, 0)),
      tensors_(std::move(other.tensors_)),
      begin_(std::move(other.begin_)),
      index_(std::move(other.index_)),
      metadata_(std::move(other.metadata_)) {
  other.tensors_.clear();
  other.begin_.clear();
  other.index_.clear();
  other.metadata_.clear();
}

SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&& other) noexcept {
  if (this != &other) {
    Release();
    path_ = std::move(other.path_);
    base_ = std::exchange(other.base_, nullptr);
    file_size_ = std::exchange(other.file_size_, 0);
    data_offset_ = std::exchange(other.data_offset_, 0);
    tensors_ = std::move(other.tensors_);
    begin_ = std::move(other.begin_);
    index_ = std::move(other.index_);
    metadata_ = std::move(other.metadata_);
    other.tensors_.clear();
    other.begin_.clear();
    other.index_.clear();
    other.metadata_.clear();
  }
  return *this;
}

SafetensorsFile::~SafetensorsFile() { Release(); }

void SafetensorsFile::Release() noexcept {
  if (base_ != nullptr) {
    ::munmap(const_cast<std::byte*>(base_), file_size_);
    base_ = nullptr;
  }
}

bool SafetensorsFile::Contains(std::string_view name) const {
  return index_.find(name) != index_.end();
}

Result<TensorView> SafetensorsFile::Get(std::string_view name) const {
  const auto it = index_.find(name);
  if (it == index_.end()) {
    return NotFound(fmt::format("tensor \"{}\" not in {}", name, path_));
  }
  const TensorSpec& spec = tensors_[it->second];
  const std::byte* start = base_ + data_offset_ + begin_[it->second];
  return TensorView{spec, std::span<const std::byte>(start, spec.nbytes())};
}

}  // namespace shardwire
