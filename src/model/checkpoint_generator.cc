// Synthetic checkpoints: deterministic splitmix64-derived values, streamed to disk.
#include "shardwire/checkpoint_generator.h"

#include <cstring>
#include <filesystem>

#include <fmt/format.h>

#include "shardwire/safetensors.h"

namespace shardwire {
namespace {

constexpr std::uint64_t kGolden = 0x9E3779B97F4A7C15ull;

// splitmix64 finaliser (Steele, Lea, Flood 2014).
std::uint64_t Mix(std::uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

std::uint64_t NameHash(std::string_view name) {  // FNV-1a 64
  std::uint64_t h = 0xCBF29CE484222325ull;
  for (char c : name) h = (h ^ static_cast<unsigned char>(c)) * 0x100000001B3ull;
  return h;
}

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// Roughly N(0, 0.02): (sum of four 16-bit uniforms - 2) has standard deviation 1/sqrt(3).
float SmallNormal(std::uint64_t r) {
  const float sum = static_cast<float>((r & 0xFFFF) + ((r >> 16) & 0xFFFF) + ((r >> 32) & 0xFFFF) +
                                       (r >> 48)) * (1.0f / 65536.0f);
  return (sum - 2.0f) * (0.02f * 1.7320508f);
}

}  // namespace

Status FillSyntheticTensor(const TensorSpec& spec, std::uint64_t seed, std::uint64_t offset,
                           std::span<std::byte> out) {
  const std::size_t es = DTypeSize(spec.dtype);
  if (offset % es != 0 || out.size() % es != 0) {
    return InvalidArgument(fmt::format("tensor \"{}\": byte range at {} of {} bytes splits a {} element",
                                       spec.name, offset, out.size(), DTypeName(spec.dtype)));
  }
  const std::uint64_t key = Mix(seed ^ NameHash(spec.name));
  const std::uint64_t first = offset / es;
  const std::size_t count = out.size() / es;
  std::byte* dst = out.data();
  if (IsFloatingPoint(spec.dtype)) {
    const float bias = EndsWith(spec.name, "norm.weight") ? 1.0f : 0.0f;
    for (std::size_t k = 0; k < count; ++k) {
      const float v = bias + SmallNormal(Mix(key + (first + k + 1) * kGolden));
      StoreFromFloat(spec.dtype, v, dst + k * es);
    }
  } else if (spec.dtype == DType::kBool) {
    for (std::size_t k = 0; k < count; ++k) {
      dst[k] = static_cast<std::byte>(Mix(key + (first + k + 1) * kGolden) & 1u);
    }
  } else {
    for (std::size_t k = 0; k < count; ++k) {
      std::uint64_t r = Mix(key + (first + k + 1) * kGolden);
      for (std::size_t b = 0; b < es; ++b, r >>= 8) dst[k * es + b] = static_cast<std::byte>(r & 0xFF);
    }
  }
  return Status::Ok();
}

Status GenerateCheckpoint(const ModelDescription& description, const std::string& path,
                          const GeneratedCheckpointOptions& options) {
  const ModelDescription* desc = &description;
  ModelDescription resized;
  if (options.num_layers_override > 0) {
    SW_ASSIGN_OR_RETURN(resized, WithLayers(description, static_cast<int>(options.num_layers_override)));
    desc = &resized;
  }
  std::vector<TensorSpec> specs;
  specs.reserve(desc->tensors.size());
  for (const auto& t : desc->tensors) specs.push_back(t.spec);
  const std::uint64_t seed = options.seed;
  auto fill = [seed](const TensorSpec& spec, std::uint64_t offset, std::span<std::byte> out) {
    return FillSyntheticTensor(spec, seed, offset, out);
  };
  const std::map<std::string, std::string> metadata = {
      {"format", "pt"}, {"generator", "shardwire"}, {"seed", std::to_string(seed)}};
  return WriteSafetensorsStreaming(path, specs, fill, metadata);
}

Status GenerateCheckpointDirectory(const ModelDescription& description, const std::string& dir,
                                   const GeneratedCheckpointOptions& options) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return IoError(fmt::format("cannot create directory {}: {}", dir, ec.message()));
  ModelConfig config = description.config;
  if (options.num_layers_override > 0) config.num_hidden_layers = options.num_layers_override;
  if (!description.tensors.empty()) config.torch_dtype = description.tensors.front().spec.dtype;
  const std::filesystem::path d(dir);
  SW_RETURN_IF_ERROR(GenerateCheckpoint(description, (d / "model.safetensors").string(), options));
  return WriteModelConfig(config, (d / "config.json").string());
}

}  // namespace shardwire
