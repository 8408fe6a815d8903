// WriteSafetensors / WriteSafetensorsStreaming. Format: huggingface/safetensors README
// "Format"; header padding with spaces to a multiple of 8 as the reference writer does.
#include <algorithm>
#include <cstring>
#include <set>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "model/atomic_file.h"
#include "shardwire/safetensors.h"

namespace shardwire {
namespace {

// Validates the specs and builds the padded header (without the 8-byte length prefix).
Result<std::string> BuildHeader(const std::string& path, const std::vector<TensorSpec>& specs,
                                const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    auto& meta = header["__metadata__"] = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) meta[k] = v;
  }
  std::set<std::string_view> seen;
  std::uint64_t offset = 0;
  for (const auto& spec : specs) {
    auto bad = [&](std::string_view what) {
      return InvalidArgument(fmt::format("{}: tensor \"{}\": {}", path, spec.name, what));
    };
    if (spec.name.empty()) return bad("empty tensor name");
    if (spec.name == "__metadata__") return bad("reserved name");
    if (!seen.insert(spec.name).second) return bad("duplicate tensor name");
    if (std::any_of(spec.shape.begin(), spec.shape.end(), [](std::int64_t d) { return d < 0; })) {
      return bad("negative dimension in shape " + ShapeToString(spec.shape));
    }
    if (spec.shape.size() > kMaxTensorDims) {
      return bad(fmt::format("{} dimensions (Shardwire handles at most {})", spec.shape.size(), kMaxTensorDims));
    }
    const std::uint64_t n = spec.nbytes();
    auto& entry = header[spec.name];
    entry["dtype"] = std::string(DTypeName(spec.dtype));
    entry["shape"] = spec.shape;
    entry["data_offsets"] = {offset, offset + n};
    offset += n;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  return text;
}

Status WriteAll(const std::string& path, const std::vector<TensorSpec>& specs,
                const TensorChunkFiller& fill, const std::map<std::string, std::string>& metadata,
                std::size_t chunk_bytes) {
  if (chunk_bytes == 0 || chunk_bytes % 8 != 0) {
    return InvalidArgument(fmt::format("{}: chunk size {} is not a positive multiple of 8",
                                       path, chunk_bytes));
  }
  if (!fill) return InvalidArgument(path + ": no tensor filler given");
  SW_ASSIGN_OR_RETURN(std::string header, BuildHeader(path, specs, metadata));
  SW_ASSIGN_OR_RETURN(model::AtomicFile file, model::AtomicFile::Create(path));

  std::byte prefix[8];
  std::uint64_t len = header.size();
  for (auto& b : prefix) {
    b = static_cast<std::byte>(len & 0xFF);
    len >>= 8;
  }
  SW_RETURN_IF_ERROR(file.Write(prefix));
  SW_RETURN_IF_ERROR(file.Write(std::as_bytes(std::span(header.data(), header.size()))));

  std::uint64_t largest = 0;
  for (const auto& spec : specs) largest = std::max(largest, spec.nbytes());
  std::vector<std::byte> buffer(static_cast<std::size_t>(std::min<std::uint64_t>(chunk_bytes, largest)));
  for (const auto& spec : specs) {
    const std::uint64_t total = spec.nbytes();
    for (std::uint64_t off = 0; off < total;) {
      const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(buffer.size(), total - off));
      std::span<std::byte> out(buffer.data(), n);
      Status s = fill(spec, off, out);
      if (!s.ok()) return s.WithContext(fmt::format("{}: tensor \"{}\"", path, spec.name));
      SW_RETURN_IF_ERROR(file.Write(out));
      off += n;
    }
  }
  return file.Commit();
}

}  // namespace

Status WriteSafetensorsStreaming(const std::string& path, const std::vector<TensorSpec>& specs,
                                 const TensorChunkFiller& fill,
                                 const std::map<std::string, std::string>& metadata,
                                 std::size_t chunk_bytes) {
  return WriteAll(path, specs, fill, metadata, chunk_bytes);
}

Status WriteSafetensors(const std::string& path, const std::vector<TensorView>& tensors,
                        const std::map<std::string, std::string>& metadata) {
  std::vector<TensorSpec> specs;
  specs.reserve(tensors.size());
  for (const auto& t : tensors) {
    if (t.data.size() != t.spec.nbytes()) {
      return InvalidArgument(fmt::format("{}: tensor \"{}\": {} bytes of data for {} ({} bytes)",
                                         path, t.spec.name, t.data.size(), ToString(t.spec),
                                         t.spec.nbytes()));
    }
    specs.push_back(t.spec);
  }
  // Tensors are written in order, so the filler can walk them with a cursor.
  std::size_t cursor = 0;
  auto fill = [&](const TensorSpec& spec, std::uint64_t offset, std::span<std::byte> out) {
    while (cursor < tensors.size() && tensors[cursor].spec.name != spec.name) ++cursor;
    if (cursor == tensors.size()) return Internal("tensor order lost while writing");
    std::memcpy(out.data(), tensors[cursor].data.data() + offset, out.size());
    return Status::Ok();
  };
  return WriteAll(path, specs, fill, metadata, std::size_t{8} << 20);
}

}  // namespace shardwire
