// `shardwire convert`: converts a checkpoint offline (FP8 block-128 quantisation or a cast).
//
//   shardwire convert --checkpoint PATH --out DIR --format fp8-block128 [--ue8m0]
//                     [--shard-size BYTES] [--config CONFIG]
//   shardwire convert --checkpoint PATH --out DIR --format bf16|fp16|fp32
//
// fp8-block128 lays the output out as DeepSeek-V3's FP8 release (huggingface.co/deepseek-ai/
// DeepSeek-V3, config.json `quantization_config` and model.safetensors.index.json): each linear
// weight `<x>.weight` becomes F8_E4M3 with an F32 `<x>.weight_scale_inv` of shape
// [ceil(m/128), ceil(n/128)] beside it (same shard); embeddings, lm_head, norms, MoE router gates,
// biases and every tensor that is not a 2-D (or 3-D stacked-expert) `.weight` keep their dtype,
// as in that release and as vLLM's block-FP8 loader expects (Fp8LinearMethod quantises only linear
// layers). config.json gets {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
// "weight_block_size": [128, 128]} (+ "scale_fmt": "ue8m0" with --ue8m0, as DeepSeek-V3.2 and V4 configs declare).
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>

#include <CLI/CLI.hpp>

#include "shardwire/status.h"
#include "shardwire/tensor_spec.h"

namespace shardwire::cli {

/// What `shardwire convert` was asked to do.
struct ConvertOptions {
  std::string checkpoint;        ///< .safetensors file, index, or directory (Checkpoint::Open)
  std::string out_dir;           ///< output directory (created if absent)
  std::string format;            ///< "fp8-block128", "bf16", "fp16" or "fp32"
  bool ue8m0 = false;            ///< fp8 only: power-of-two scales
  std::uint64_t shard_size = 0;  ///< bytes per output shard (0: one file); a bigger tensor gets its own shard
  /// HF config.json written to `out_dir` (with the format's fields); default: the one beside
  /// the checkpoint. Given explicitly, it must describe this checkpoint when rules describe its
  /// model_type (else kLayoutMismatch naming the differences).
  std::string config;
  /// `out_dir` may hold a checkpoint already (`*.safetensors`, `model.safetensors.index.json`):
  /// the new one replaces it. Every new file is written into a staging directory inside
  /// `out_dir` first; once all are written they are renamed into place and the old files this
  /// run did not rewrite are removed (an index left beside a single new file would be opened
  /// instead of it), with SIGINT/SIGTERM/SIGHUP held back. A run that fails or is interrupted
  /// before that leaves the old checkpoint as it was (a killed run's staging directory is
  /// removed by the next run into `out_dir`).
  bool overwrite = false;
};

/// The fallback when no rules describe the checkpoint (ConvertCheckpoint prints that it is used):
/// true for a floating `.weight` of rank 2 (or 3, stacked experts) that is not an embedding,
/// lm_head, norm or MoE router gate. With rules, ModelTensor::quantizable decides.
bool IsFp8Quantised(const TensorSpec& spec);

/// Runs the conversion. Checks everything it can before writing (format and options, dtypes of
/// every tensor, the config, that `out_dir` is writable); streams tensor by tensor with memory
/// bounded by one 8 MiB chunk plus one 128-row block-row; writes every file into a staging
/// directory inside `out_dir` and moves them into place only when all are written (removing
/// the staging directory if a step fails, see ConvertOptions::overwrite). `progress` (may be null) gets a one-line
/// progress display. Errors: kInvalidArgument (bad format/options), kAlreadyExists (`out_dir` holds a checkpoint and
/// `overwrite` is false, naming the file), kUnsupported (a tensor's dtype, naming it), kIoError (out dir, naming it),
/// kCorruptData (NaN/Inf in a quantised tensor, naming the checkpoint, the tensor and the element), plus
/// Checkpoint::Open's errors.
Status ConvertCheckpoint(const ConvertOptions& options, std::FILE* progress);

void AddConvertCommand(CLI::App& app, int* exit_code);

}  // namespace shardwire::cli
