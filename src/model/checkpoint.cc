// Checkpoint: one safetensors file, or a shard set described by an HF
// `*.safetensors.index.json` (weight_map + optional metadata.total_size).
#include "shardwire/checkpoint.h"

#include <algorithm>
#include <filesystem>
#include <set>
#include <utility>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "core/regular_file.h"
#include "model/atomic_file.h"
#include "model/bounded_json.h"

namespace shardwire {
namespace {

namespace fs = std::filesystem;
using ShardMap = std::map<std::string, std::size_t, std::less<>>;

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// Names of the regular files in `dir` (following symlinks), sorted.
std::vector<std::string> ListFiles(const fs::path& dir) {
  std::vector<std::string> names;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    std::error_code ec2;
    if (it->is_regular_file(ec2)) names.push_back(it->path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

// The file a directory stands for: its one index file, else its one .safetensors file.
Result<std::string> PickInDirectory(const std::string& dir) {
  std::vector<std::string> indexes, files;
  for (auto& name : ListFiles(dir)) {
    if (EndsWith(name, ".safetensors.index.json")) indexes.push_back(name);
    else if (EndsWith(name, ".safetensors")) files.push_back(name);
  }
  if (indexes.size() == 1) return (fs::path(dir) / indexes[0]).string();
  if (indexes.size() > 1) {
    return InvalidArgument(fmt::format("{} holds several index files, open one of them: {}", dir,
                                       fmt::join(indexes, ", ")));
  }
  if (files.size() == 1) return (fs::path(dir) / files[0]).string();
  if (files.size() > 1) {
    return InvalidArgument(fmt::format(
        "{} holds several .safetensors files and no *.safetensors.index.json, open one of "
        "them: {}",
        dir, fmt::join(files, ", ")));
  }
  return NotFound(fmt::format("{} holds no *.safetensors.index.json and no *.safetensors file", dir));
}

std::string FindConfig(const fs::path& dir) {
  std::error_code ec;
  if (fs::is_regular_file(dir / "config.json", ec)) return (dir / "config.json").string();
  static const std::set<std::string, std::less<>> kNotModelConfigs = {
      "generation_config.json", "tokenizer_config.json", "preprocessor_config.json"};
  std::vector<std::string> candidates;
  for (auto& name : ListFiles(dir)) {
    if (EndsWith(name, "config.json") && !kNotModelConfigs.contains(name)) {
      candidates.push_back(name);
    }
  }
  return candidates.size() == 1 ? (dir / candidates[0]).string() : std::string();
}

Status LoadSingle(const std::string& path, std::vector<SafetensorsFile>* files, ShardMap* shard_of) {
  SW_ASSIGN_OR_RETURN(SafetensorsFile file, SafetensorsFile::Open(path));
  for (const auto& spec : file.tensors()) shard_of->emplace(spec.name, 0);
  files->push_back(std::move(file));
  return Status::Ok();
}

// True for a relative path that stays below its base folder: not empty, not absolute,
// no ".." component, no NUL byte (which would silently cut the name short).
bool IsNameInsideFolder(const std::string& name) {
  if (name.empty() || name.find('\0') != std::string::npos) return false;
  const fs::path p(name);
  if (p.is_absolute() || p.has_root_path()) return false;
  for (const auto& part : p) {
    if (part == "..") return false;
  }
  return true;
}

// Reads metadata.total_size if present. nullopt when absent or null.
Result<std::optional<std::uint64_t>> ReadTotalSize(const std::string& index_path,
                                                   const nlohmann::json& root) {
  const auto meta = root.find("metadata");
  if (meta == root.end() || meta->is_null()) return std::optional<std::uint64_t>();
  if (!meta->is_object()) {
    return CorruptData(fmt::format("{}: \"metadata\" is not a JSON object", index_path));
  }
  const auto total = meta->find("total_size");
  if (total == meta->end() || total->is_null()) return std::optional<std::uint64_t>();
  if (total->is_number_unsigned()) return std::optional<std::uint64_t>(total->get<std::uint64_t>());
  if (total->is_number_float()) {
    const double d = total->get<double>();
    if (d >= 0 && d < 1.8e19 && d == static_cast<double>(static_cast<std::uint64_t>(d))) {
      return std::optional<std::uint64_t>(static_cast<std::uint64_t>(d));
    }
  }
  return CorruptData(fmt::format("{}: \"metadata.total_size\" {} is not a non-negative integer",
                                 index_path, total->dump()));
}

Status LoadIndex(const std::string& index_path, std::vector<SafetensorsFile>* files,
                 ShardMap* shard_of) {
  std::string text;
  SW_RETURN_IF_ERROR(ReadRegularFile(index_path, &text));
  auto parsed = model::ParseBoundedJson(text);
  if (!parsed.ok()) return CorruptData(fmt::format("{}: index is {}", index_path, parsed.status().message()));
  nlohmann::json root = std::move(*parsed);
  if (!root.is_object()) return CorruptData(fmt::format("{}: index is not a JSON object", index_path));
  const auto wm = root.find("weight_map");
  if (wm == root.end() || !wm->is_object()) {
    return CorruptData(fmt::format("{}: index has no \"weight_map\" object", index_path));
  }
  if (wm->empty()) {
    // Not a checkpoint of nothing: the shard files beside it are not looked at without a map.
    return CorruptData(fmt::format("{}: index maps no tensors (its \"weight_map\" is empty)", index_path));
  }
  SW_ASSIGN_OR_RETURN(const std::optional<std::uint64_t> total_size, ReadTotalSize(index_path, root));

  // shard file name -> tensors the index maps to it
  std::map<std::string, std::vector<std::string>> by_shard;
  std::map<std::string, std::string, std::less<>> weight_map;
  for (const auto& [tensor, shard] : wm->items()) {
    if (!shard.is_string()) {
      return CorruptData(fmt::format("{}: weight_map entry of tensor \"{}\" is not a string",
                                     index_path, tensor));
    }
    // The index is untrusted: a shard name must stay inside the index's folder.
    if (!IsNameInsideFolder(shard.get<std::string>())) {
      return CorruptData(fmt::format(
          "{}: weight_map entry of tensor \"{}\" names shard \"{}\", which is not a file inside the "
          "index's folder (empty, absolute, or with a \"..\" component)",
          index_path, tensor, shard.get<std::string>()));
    }
    by_shard[shard.get<std::string>()].push_back(tensor);
    weight_map.emplace(tensor, shard.get<std::string>());
  }

  const fs::path dir = fs::path(index_path).parent_path();
  std::uint64_t mapped_bytes = 0;
  for (const auto& [shard_name, names] : by_shard) {
    const std::string shard_path = (dir / shard_name).string();
    auto file = SafetensorsFile::Open(shard_path);
    if (!file.ok()) {
      if (file.status().code() == ErrorCode::kNotFound) {
        return NotFound(fmt::format("{}: shard file \"{}\" (for tensor \"{}\") does not exist: {}",
                                    index_path, shard_name, names.front(), shard_path));
      }
      return file.status().WithContext(fmt::format("shard of index {}", index_path));
    }
    for (const auto& name : names) {
      auto view = file->Get(name);
      if (!view.ok()) {
        return NotFound(fmt::format("{}: maps tensor \"{}\" to {}, which does not hold it",
                                    index_path, name, shard_path));
      }
      mapped_bytes += view->spec.nbytes();
    }
    for (const auto& spec : file->tensors()) {
      const auto it = weight_map.find(spec.name);
      if (it == weight_map.end()) {
        return CorruptData(fmt::format("{}: shard {} holds tensor \"{}\" which the index does not map",
                                       index_path, shard_path, spec.name));
      }
      if (it->second != shard_name) {
        return CorruptData(fmt::format(
            "{}: tensor \"{}\" is in shard {} and also in {}, where the index does not put it",
            index_path, spec.name, it->second, shard_path));
      }
    }
    const std::size_t pos = files->size();
    for (const auto& name : names) shard_of->emplace(name, pos);
    files->push_back(std::move(file).value());
  }
  if (total_size.has_value() && *total_size != mapped_bytes) {
    return CorruptData(fmt::format(
        "{}: metadata.total_size is {} but the tensors it maps hold {} bytes", index_path,
        *total_size, mapped_bytes));
  }
  return Status::Ok();
}

}  // namespace

Result<Checkpoint> Checkpoint::Open(const std::string& path) {
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (!fs::exists(st)) return NotFound(fmt::format("no such file or directory {}", path));
  std::string target = path;
  if (fs::is_directory(st)) {
    SW_ASSIGN_OR_RETURN(target, PickInDirectory(path));
  }
  Checkpoint cp;
  cp.path_ = target;
  if (EndsWith(target, ".index.json")) {
    SW_RETURN_IF_ERROR(LoadIndex(target, &cp.files_, &cp.shard_of_));
  } else {
    SW_RETURN_IF_ERROR(LoadSingle(target, &cp.files_, &cp.shard_of_));
  }
  fs::path dir = fs::path(target).parent_path();
  if (dir.empty()) dir = ".";
  cp.config_path_ = FindConfig(dir);
  return cp;
}

std::vector<TensorSpec> Checkpoint::tensors() const {
  std::vector<TensorSpec> out;
  out.reserve(shard_of_.size());
  for (const auto& [name, shard] : shard_of_) {  // std::map: sorted by name
    out.push_back(files_[shard].Get(name)->spec);
  }
  return out;
}

Result<TensorView> Checkpoint::Get(std::string_view name) const {
  const auto it = shard_of_.find(name);
  if (it == shard_of_.end()) return NotFound(fmt::format("tensor \"{}\" not in checkpoint {}", name, path_));
  return files_[it->second].Get(name);
}

bool Checkpoint::Contains(std::string_view name) const { return shard_of_.find(name) != shard_of_.end(); }

std::uint64_t Checkpoint::total_bytes() const {
  std::uint64_t total = 0;
  for (const auto& f : files_) total += f.data_size();
  return total;
}

}  // namespace shardwire
