#include "cli/convert_command.h"

#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli/model_rules_option.h"
#include "cli/option_checks.h"
#include "core/regular_file.h"
#include "model/atomic_file.h"
#include "model/bounded_json.h"
#include "shardwire/cast.h"
#include "shardwire/checkpoint.h"
#include "shardwire/checkpoint_model.h"
#include "shardwire/fp8_block.h"
#include "shardwire/model_rules.h"
#include "shardwire/safetensors.h"
#include "shardwire/tensor_conversion.h"

namespace shardwire::cli {
namespace {

namespace fs = std::filesystem;

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// One output tensor: the conversion that makes it and whether it is that conversion's scale.
struct OutputTensor {
  TensorSpec spec;
  std::size_t conversion = 0;
  bool scale = false;
};

// The checkpoint files in `dir` (a missing directory has none): what Checkpoint::Open would
// pick from, sorted.
std::vector<std::string> CheckpointFilesIn(const std::string& dir) {
  std::vector<std::string> files;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name == "model.safetensors.index.json" || it->path().extension() == ".safetensors") {
      files.push_back(it->path().string());
    }
  }
  std::sort(files.begin(), files.end());
  return files;
}

// New files are written into `<out>/.shardwire-convert-<pid>/` and renamed into `<out>` only once
// every one of them is written (Commit), so a run that fails or is killed part-way leaves the
// old checkpoint whole.
constexpr std::string_view kStagingPrefix = ".shardwire-convert-";

std::string StagingDir(const std::string& out_dir) {
  return (fs::path(out_dir) / fmt::format("{}{}", kStagingPrefix, ::getpid())).string();
}

// Removes the staging directories of earlier runs whose process is gone (a run killed before
// its commit). A pid that names a live process (the run itself, a concurrent one, or a reuse)
// keeps its directory.
void RemoveAbandonedStaging(const std::string& out_dir) {
  std::error_code ec;
  for (fs::directory_iterator it(out_dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.rfind(kStagingPrefix, 0) != 0) continue;
    const std::string digits = name.substr(kStagingPrefix.size());
    if (digits.empty() || digits.size() > 9 || digits.find_first_not_of("0123456789") != std::string::npos) continue;
    const auto pid = static_cast<pid_t>(std::stol(digits));
    if (pid == ::getpid() || ::kill(pid, 0) == 0 || errno != ESRCH) continue;
    std::error_code rm;
    fs::remove_all(it->path(), rm);
  }
}

// Moves every file staged in `staging` into `out_dir` (a rename each: same file system), then
// removes the old checkpoint files (`old_files`) that were not replaced, then the staging
// directory. SIGINT, SIGTERM and SIGHUP are held back meanwhile, so an interrupt cannot leave
// old and new files mixed (one that comes ends the process right after). Errors: kIoError naming
// the file (a rename can fail only for a file system fault here).
Status CommitStaged(const std::string& staging, const std::vector<std::string>& names, const std::string& out_dir,
                    const std::vector<std::string>& old_files) {
  sigset_t held, before;
  sigemptyset(&held);
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) sigaddset(&held, sig);
  ::pthread_sigmask(SIG_BLOCK, &held, &before);
  Status result = Status::Ok();
  std::set<std::string> replaced;
  for (const std::string& name : names) {
    const fs::path to = fs::path(out_dir) / name;
    std::error_code ec;
    fs::rename(fs::path(staging) / name, to, ec);
    if (ec) {
      result = IoError(fmt::format("moving the new \"{}\" into \"{}\": {}", name, out_dir, ec.message()));
      break;
    }
    replaced.insert(to.lexically_normal().string());
  }
  // --overwrite: the old checkpoint's files this run did not rewrite go (a stale index would be
  // opened instead of a new single file, stale shards would lie about what the directory holds).
  for (const std::string& old : old_files) {
    if (!result.ok()) break;
    if (replaced.count(fs::path(old).lexically_normal().string()) > 0) continue;
    std::error_code ec;
    if (!fs::remove(old, ec) && ec) {
      result = IoError(fmt::format("--overwrite: removing \"{}\" of the old checkpoint: {}", old, ec.message()));
    }
  }
  std::error_code ec;
  fs::remove_all(staging, ec);
  ::pthread_sigmask(SIG_SETMASK, &before, nullptr);
  return result;
}

Status CheckWritable(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return IoError(fmt::format("output directory \"{}\": {}", dir, ec.message()));
  const std::string probe = (fs::path(dir) / fmt::format(".shardwire-write-test.{}", ::getpid())).string();
  {
    std::ofstream f(probe);
    if (!f) return IoError(fmt::format("output directory \"{}\" is not writable", dir));
  }
  fs::remove(probe, ec);
  return Status::Ok();
}

Result<nlohmann::ordered_json> OutputConfig(const ConvertOptions& o, const std::string& config_path) {
  nlohmann::ordered_json cfg = nlohmann::ordered_json::object();
  if (!config_path.empty()) {
    std::string text;
    SW_RETURN_IF_ERROR(ReadRegularFile(config_path, &text));
    auto parsed = model::ParseBoundedJson<nlohmann::ordered_json>(
        text, model::kMaxJsonDepth, model::DuplicateKeys::kLastWins, model::kMaxConfigJsonValues);
    if (!parsed.ok()) return CorruptData(fmt::format("config \"{}\" is {}", config_path, parsed.status().message()));
    cfg = std::move(*parsed);
    if (!cfg.is_object()) return CorruptData(fmt::format("config \"{}\" is not a JSON object", config_path));
  }
  if (o.format == "fp8-block128") {
    nlohmann::ordered_json q = {
        {"activation_scheme", "dynamic"}, {"fmt", "e4m3"}, {"quant_method", "fp8"}, {"weight_block_size", {128, 128}}};
    if (o.ue8m0) q["scale_fmt"] = "ue8m0";
    cfg["quantization_config"] = q;
  } else {
    cfg.erase("quantization_config");
    cfg["torch_dtype"] = o.format == "bf16" ? "bfloat16" : (o.format == "fp16" ? "float16" : "float32");
  }
  return cfg;
}

// Drops this process's page-table entries for a consumed source tensor (the pages stay in the
// page cache), so resident memory follows the tensor being converted, not the whole checkpoint.
// Read-only file mapping: MADV_DONTNEED only unmaps; a later access refaults the same bytes.
void ReleaseSourcePages(std::span<const std::byte> bytes) {
  const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
  const auto begin = (reinterpret_cast<std::uintptr_t>(bytes.data()) + page - 1) / page * page;
  const auto end = (reinterpret_cast<std::uintptr_t>(bytes.data()) + bytes.size()) / page * page;
  if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

std::string ShardName(std::size_t i, std::size_t n) {
  return fmt::format("model-{:05d}-of-{:05d}.safetensors", i + 1, n);
}

}  // namespace

bool IsFp8Quantised(const TensorSpec& spec) {
  if (!IsCastableDType(spec.dtype) || !EndsWith(spec.name, ".weight")) return false;
  if (spec.shape.size() != 2 && spec.shape.size() != 3) return false;
  for (const char* word : {"embed", "lm_head", "norm", "wte", "wpe"}) {
    if (spec.name.find(word) != std::string::npos) return false;
  }
  // MoE routers: DeepSeek/Qwen3 `mlp.gate.weight`, Mixtral `block_sparse_moe.gate.weight`, `router`.
  return !EndsWith(spec.name, ".gate.weight") && spec.name.find(".router.") == std::string::npos;
}

Status ConvertCheckpoint(const ConvertOptions& o, std::FILE* progress) {
  const bool fp8 = o.format == "fp8-block128";
  std::optional<DType> cast_to;
  if (o.format == "bf16") cast_to = DType::kBF16;
  if (o.format == "fp16") cast_to = DType::kF16;
  if (o.format == "fp32") cast_to = DType::kF32;
  if (!fp8 && !cast_to) {
    return InvalidArgument(fmt::format("--format \"{}\": expected fp8-block128, bf16, fp16 or fp32", o.format));
  }
  if (o.ue8m0 && !fp8) return InvalidArgument("--ue8m0 applies only to --format fp8-block128");
  if (o.out_dir.empty()) return InvalidArgument("--out is empty");

  SW_ASSIGN_OR_RETURN(auto checkpoint, Checkpoint::Open(o.checkpoint));
  {  // Writing into the checkpoint's own directory would overwrite its files (and config.json).
    std::error_code ec;
    if (fs::equivalent(fs::path(checkpoint.path()).parent_path(), o.out_dir, ec)) {
      return InvalidArgument(fmt::format("--out \"{}\" is the checkpoint's own directory", o.out_dir));
    }
  }
  const std::string config_path = o.config.empty() ? checkpoint.config_path() : o.config;
  if (!o.config.empty() && !fs::exists(o.config))
    return NotFound(fmt::format("--config \"{}\" does not exist", o.config));
  SW_ASSIGN_OR_RETURN(auto config, OutputConfig(o, config_path));

  Fp8BlockOptions fp8_options;
  if (o.ue8m0) fp8_options.scale_format = Fp8ScaleFormat::kUe8m0;

  for (const TensorSpec& t : checkpoint.tensors()) {  // before the rules: a quantised input's own message
    if (!IsCastableDType(t.dtype)) {
      return Unsupported(fmt::format("{}: tensor \"{}\" is {}; --format {} converts only F16, BF16 and F32 tensors",
                                     checkpoint.path(), t.name, DTypeName(t.dtype), o.format));
    }
  }

  // Which tensors engines hold in FP8: the model's rules (ModelTensor::quantizable) when the
  // checkpoint is a model Shardwire can describe and matches it; otherwise the name rule of
  // IsFp8Quantised, said on stdout (nothing is guessed silently).
  std::optional<std::set<std::string>> by_rules;
  auto model = DescribeCheckpointModel(checkpoint, config_path);
  const Status match =
      model.ok() ? CheckCheckpointMatchesModel(*model, checkpoint.tensors(), checkpoint.path()) : model.status();
  if (!o.config.empty() && model.ok() && !match.ok()) {
    // An explicit --config that describes another model would be written beside these weights.
    return match.WithContext(fmt::format("--config \"{}\"", o.config));
  }
  // Rules for the config's model_type (a --model-rules file first, then the built-in ones) that
  // fail on this checkpoint or its config are an error for FP8, never a silent fallback to the
  // name rule: the rules' per-tensor decisions would be dropped (and a config that describes
  // another model, other layers or shapes, written beside these weights). A cast uses no rules
  // (every tensor is cast): there the mismatch is said, not refused.
  if (!match.ok() && config.contains("model_type") && config["model_type"].is_string()) {
    SW_ASSIGN_OR_RETURN(const std::optional<ModelRules> rules, FindModelRules(config["model_type"].get<std::string>()));
    if (rules.has_value()) {
      const std::string why = fmt::format(
          "the rules of model_type \"{}\" ({}) do not describe checkpoint {} with config \"{}\": {}",
          config["model_type"].get<std::string>(), rules->file_name(), checkpoint.path(), config_path, match.message());
      if (fp8) {
        return Status(match.code(),
                      fmt::format("{}. Fix the config (--config FILE) or the rules (--model-rules FILE); `shardwire "
                                  "describe --checkpoint {}` lists the tensors",
                                  why, o.checkpoint));
      }
      fmt::print("note: {}; every tensor is cast all the same, and that config is written beside them\n", why);
    }
  }
  if (fp8) {
    if (match.ok()) {
      by_rules.emplace();
      for (const ModelTensor& t : model->tensors)
        if (t.quantizable) by_rules->insert(t.spec.name);
      fmt::print("quantising the tensors the {} rules mark quantizable\n", model->config.model_type);
    } else {
      fmt::print("no rules describe this checkpoint ({}); quantising by name: 2-D/3-D floating .weight tensors except "
                 "embeddings, lm_head, norms and MoE routers (describe the model with `shardwire describe` and pass "
                 "--model-rules to decide per tensor)\n",
                 match.message());
    }
  }

  // Every conversion and output tensor, checked before anything is written.
  std::vector<ConversionSpec> conversions;
  std::vector<OutputTensor> outputs;
  std::uint64_t in_bytes = 0;
  std::size_t quantised = 0;
  for (const TensorSpec& t : checkpoint.tensors()) {
    const bool quantise = fp8 && (by_rules ? by_rules->count(t.name) > 0 : IsFp8Quantised(t));
    ConversionSpec spec{t.name, {t.name}, 0, quantise ? DType::kF8E4M3 : (cast_to ? *cast_to : t.dtype)};
    SW_ASSIGN_OR_RETURN(auto out, ResolveConversion(spec, {t}, fp8_options));
    if (out.scale && checkpoint.Contains(out.scale->name)) {
      return InvalidArgument(fmt::format("{}: tensor \"{}\" already exists; is the checkpoint already quantised?",
                                         checkpoint.path(), out.scale->name));
    }
    outputs.push_back({out.destination, conversions.size(), false});
    if (out.scale) outputs.push_back({*out.scale, conversions.size(), true});
    quantised += quantise ? 1 : 0;
    conversions.push_back(std::move(spec));
    in_bytes += t.nbytes();
  }
  const std::vector<std::string> old_files = CheckpointFilesIn(o.out_dir);
  if (!old_files.empty() && !o.overwrite) {
    return AlreadyExists(
        fmt::format("--out \"{}\" holds a checkpoint already ({}); choose another directory or "
                    "pass --overwrite to replace it",
                    o.out_dir, old_files.front()));
  }
  SW_RETURN_IF_ERROR(CheckWritable(o.out_dir));

  // Greedy packing into shards (a weight and its scale stay together).
  std::vector<std::vector<std::size_t>> shards(1);
  std::uint64_t current = 0;
  for (std::size_t i = 0; i < outputs.size(); ++i) {
    std::uint64_t bytes = outputs[i].spec.nbytes();
    const bool with_scale = i + 1 < outputs.size() && outputs[i + 1].scale;
    if (with_scale) bytes += outputs[i + 1].spec.nbytes();
    if (o.shard_size > 0 && current > 0 && current + bytes > o.shard_size) {
      shards.emplace_back();
      current = 0;
    }
    shards.back().push_back(i);
    if (with_scale) shards.back().push_back(++i);
    current += bytes;
  }

  RemoveAbandonedStaging(o.out_dir);
  const std::string staging = StagingDir(o.out_dir);
  {
    std::error_code ec;
    fs::remove_all(staging, ec);
    fs::create_directory(staging, ec);
    if (ec) return IoError(fmt::format("staging directory \"{}\": {}", staging, ec.message()));
  }
  std::vector<std::string> written;  // file names, in `staging` until the commit
  auto cleanup = [&](Status s) {
    std::error_code ec;
    fs::remove_all(staging, ec);
    return s;
  };
  // A tensor the conversion refuses (NaN or Inf to quantise) is the input's fault: said naming
  // the checkpoint, not the output file being written.
  Status fill_error = Status::Ok();
  std::unique_ptr<TensorConverter> converter;
  std::span<const std::byte> converter_source;
  std::size_t converter_index = SIZE_MAX, done = 0;
  std::uint64_t bytes_done = 0, out_bytes = 0;
  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  for (std::size_t s = 0; s < shards.size(); ++s) {
    const std::string name = shards.size() == 1 ? "model.safetensors" : ShardName(s, shards.size());
    const std::string path = (fs::path(staging) / name).string();
    std::vector<TensorSpec> specs;
    std::map<std::string, const OutputTensor*, std::less<>> by_name;
    for (std::size_t i : shards[s]) {
      specs.push_back(outputs[i].spec);
      by_name[outputs[i].spec.name] = &outputs[i];
      weight_map[outputs[i].spec.name] = name;
      out_bytes += outputs[i].spec.nbytes();
    }
    auto fill = [&](const TensorSpec& spec, std::uint64_t offset, std::span<std::byte> out) -> Status {
      const OutputTensor& t = *by_name.find(spec.name)->second;
      if (converter_index != t.conversion) {
        const ConversionSpec& c = conversions[t.conversion];
        SW_ASSIGN_OR_RETURN(auto view, checkpoint.Get(c.sources[0]));
        SW_ASSIGN_OR_RETURN(auto made, TensorConverter::Create(c, {view}, fp8_options));
        converter = std::make_unique<TensorConverter>(std::move(made));
        ReleaseSourcePages(converter_source);
        converter_source = view.data;
        converter_index = t.conversion;
        bytes_done += view.spec.nbytes();
        ++done;
        if (progress != nullptr) {
          fmt::print(progress, "\r\033[Kconvert [{}/{}] {:.2f}/{:.2f} GB  {}", done, conversions.size(),
                     bytes_done / 1e9, in_bytes / 1e9, c.destination);
          std::fflush(progress);
        }
      }
      Status filled = t.scale ? converter->FillScale(offset, out) : converter->FillDestination(offset, out);
      if (!filled.ok() && fill_error.ok()) fill_error = filled.WithContext(checkpoint.path());
      return filled;
    };
    Status st = WriteSafetensorsStreaming(path, specs, fill, {{"format", "pt"}});
    if (!st.ok()) return cleanup(fill_error.ok() ? st : fill_error);
    written.push_back(name);
  }
  converter.reset();
  if (progress != nullptr) fmt::print(progress, "\n");

  if (shards.size() > 1) {
    nlohmann::ordered_json index = {{"metadata", {{"total_size", out_bytes}}}, {"weight_map", weight_map}};
    const std::string name = "model.safetensors.index.json";
    Status st = model::WriteFileAtomically((fs::path(staging) / name).string(), index.dump(2) + "\n");
    if (!st.ok()) return cleanup(st);
    written.push_back(name);
  }
  Status st = model::WriteFileAtomically((fs::path(staging) / "config.json").string(), config.dump(2) + "\n");
  if (!st.ok()) return cleanup(st);
  written.push_back("config.json");
  SW_RETURN_IF_ERROR(CommitStaged(staging, written, o.out_dir, old_files));
  fmt::print("{} tensors ({} quantised to FP8) from {} -> {}: {} file(s), {} -> {} bytes\n", conversions.size(),
             quantised, checkpoint.path(), o.out_dir, shards.size(), in_bytes, out_bytes);
  return Status::Ok();
}

void AddConvertCommand(CLI::App& app, int* exit_code) {
  auto o = std::make_shared<ConvertOptions>();
  CLI::App* cmd = app.add_subcommand(
      "convert",
      "convert a checkpoint offline: FP8 E4M3 block-128 with weight_scale_inv (DeepSeek-V3 layout) or a cast");
  cmd->add_option("--checkpoint", o->checkpoint, ".safetensors file, index file or directory")->required();
  cmd->add_option("--out", o->out_dir, "output directory (created if absent)")->required();
  cmd->add_option("--format", o->format, "fp8-block128 | bf16 | fp16 | fp32")->required();
  cmd->add_flag("--ue8m0", o->ue8m0, "fp8: power-of-two (UE8M0) scales, as DeepGEMM on Blackwell");
  cmd->add_option("--shard-size", o->shard_size, "bytes per output shard (0: one file)")
      ->capture_default_str()
      ->check(NonNegativeNumber());
  cmd->add_option("--config", o->config, "HF config.json (default: the one beside the checkpoint)");
  cmd->add_flag("--overwrite", o->overwrite,
                "replace a checkpoint already in --out (its files this run does not rewrite are removed)");
  AddModelRulesOption(cmd);
  cmd->callback([o, exit_code] {
    const Status s = ConvertCheckpoint(*o, ::isatty(STDERR_FILENO) ? stderr : nullptr);
    if (!s.ok()) {
      fmt::print(stderr, "shardwire convert: {}\n", s.ToString());
      *exit_code = 1;
    }
  });
}

}  // namespace shardwire::cli
