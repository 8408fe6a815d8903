// Synthetic checkpoints with a real architecture's shapes, for demos, benchmarks and
// tests on machines without real weights (e.g. "Llama-3.1-8B with 4 layers": 39 tensors,
// 1.92e9 parameters, 3.85 GB in BF16; with 1 layer: 12 tensors, 2.54 GB).
//
// Values are deterministic functions of (seed, tensor name, element index), computed with
// splitmix64 (Steele, Lea, Flood: "Fast splittable pseudorandom number generators", 2014),
// so any byte range can be regenerated independently to verify a transfer:
//  * floating dtypes: finite values, roughly N(0, 0.02) (a scaled sum of four uniforms,
//    so never beyond +-0.07); tensors whose name ends in "norm.weight" get 1 + that noise,
//    like trained norms;
//  * integer dtypes: uniformly random bits; BOOL: 0 or 1.
//
// Thread-safety: the functions touch only the files they are given.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "shardwire/model_description.h"
#include "shardwire/status.h"
#include "shardwire/tensor_spec.h"

namespace shardwire {

/// Knobs of GenerateCheckpoint.
struct GeneratedCheckpointOptions {
  /// When > 0, generate the model with this many decoder layers (see WithLayers).
  std::uint32_t num_layers_override = 0;
  /// Seed of the values; the same seed gives byte-identical files.
  std::uint64_t seed = 1;
};

/// Fills `out` with bytes [offset, offset + out.size()) of the synthetic content of
/// `spec` under `seed` (offset in bytes from the tensor's start). offset and out.size()
/// must be multiples of the dtype size (kInvalidArgument otherwise); a range past
/// spec.nbytes() is not refused: it continues the same sequence. Use it to verify
/// received bytes without keeping the file.
Status FillSyntheticTensor(const TensorSpec& spec, std::uint64_t seed, std::uint64_t offset,
                           std::span<std::byte> out);

/// Writes `description`'s tensors (possibly with num_layers_override layers) to the
/// safetensors file `path`, in description order, streaming (memory use is one chunk, not
/// the file), atomically (via path + ".tmp.<pid>"). The header's `__metadata__` records
/// {"format": "pt", "generator": "shardwire", "seed": "<seed>"}.
/// Errors: those of WithLayers and WriteSafetensorsStreaming (kIoError naming the path).
Status GenerateCheckpoint(const ModelDescription& description, const std::string& path,
                          const GeneratedCheckpointOptions& options = {});

/// Generates a self-describing checkpoint directory `dir` (created if missing):
/// `dir/model.safetensors` as GenerateCheckpoint plus `dir/config.json` (WriteModelConfig
/// of the generated config, whose num_hidden_layers reflects the override), so
/// Checkpoint::Open(dir) and its config_path() find both. kIoError naming `dir` if it
/// cannot be created; otherwise the errors of GenerateCheckpoint and WriteModelConfig.
Status GenerateCheckpointDirectory(const ModelDescription& description, const std::string& dir,
                                   const GeneratedCheckpointOptions& options = {});

}  // namespace shardwire
