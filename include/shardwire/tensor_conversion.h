// Per-destination-tensor conversion specs (rename, fuse, cast, FP8 block quantisation) and the
// streaming converter that produces a destination tensor's bytes from its source tensors.
//
// A ConversionSpec says how one tensor the engine holds is made from tensors the trainer (or a
// checkpoint) holds: its name, the sources concatenated in order along `concat_dim` (fusion, e.g.
// q/k/v -> qkv_proj along dim 0, gate/up -> gate_up_proj or w13), the dtype the engine stores
// (a cast, or F8_E4M3 for 128x128 block quantisation with a scale tensor named destination +
// `scale_suffix`). One source with another name is a rename. The idea follows prime-rl's
// per-model conversion specs (destination name, sources, concat dim, destination dtype, scale
// suffix); the representation and code are Shardwire's own.
//
// Concatenation (torch.cat semantics): all sources have the same rank and dtype and equal dims
// except `concat_dim`; the destination's concat dim is their sum. For FP8 the concatenated tensor
// is quantised (blocks may straddle two sources), as an engine that fuses first and quantises
// second would hold it.
//
// Thread-safety: ConversionSpec is a value; a TensorConverter holds scratch buffers and must be
// used by one thread at a time (distinct converters may run concurrently).
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "shardwire/dtype.h"
#include "shardwire/fp8_block.h"
#include "shardwire/safetensors.h"
#include "shardwire/status.h"
#include "shardwire/tensor_spec.h"

namespace shardwire {

/// Default suffix of the FP8 scale tensor: "<x>.weight" -> "<x>.weight_scale_inv" (DeepSeek-V3).
inline constexpr const char* kFp8ScaleSuffix = "_scale_inv";

/// How one destination tensor is made from source tensors.
struct ConversionSpec {
  std::string destination;                     ///< destination tensor name
  std::vector<std::string> sources;            ///< source tensor names, concatenated in this order
  int concat_dim = 0;                          ///< concatenation dimension (0 <= dim < rank); unused for one source
  DType destination_dtype = DType::kBF16;      ///< F16 / BF16 / F32 (cast) or F8_E4M3 (block quantisation)
  std::string scale_suffix = kFp8ScaleSuffix;  ///< F8_E4M3 only: scale tensor name = destination + suffix
};

/// The tensors a ConversionSpec produces.
struct ConversionOutputs {
  TensorSpec destination;           ///< name, dtype, shape of the destination tensor
  std::optional<TensorSpec> scale;  ///< F32 scale_inv tensor, present for F8_E4M3 destinations
};

/// Checks `spec` against the specs of its sources (given in spec.sources order) and computes
/// the outputs. Errors (messages name the destination and the offending source):
/// kInvalidArgument for an empty destination name, no sources, a source list whose names differ
/// from spec.sources, concat_dim out of range, an F8_E4M3 destination of rank other than 2 or 3,
/// or an empty scale suffix; kLayoutMismatch for sources of different rank or dtype, or with a
/// dim other than concat_dim that differs (names both tensors and the dim); kUnsupported for a
/// source dtype other than F16/BF16/F32 or a destination dtype other than F16/BF16/F32/F8_E4M3.
Result<ConversionOutputs> ResolveConversion(const ConversionSpec& spec, const std::vector<TensorSpec>& sources,
                                            const Fp8BlockOptions& fp8 = {});

/// Produces a destination tensor (and its scale) chunk by chunk from source views. Memory held:
/// for a cast, one source-dtype buffer of the largest chunk asked for; for FP8, one block-row
/// (block_rows x n) of source bytes and of FP8 bytes, plus all scales (numel / 16384 floats for
/// 128x128 blocks). The source views must stay valid while the converter is used.
class TensorConverter {
 public:
  /// Resolves `spec` against `sources` (same order as spec.sources). Errors as ResolveConversion.
  static Result<TensorConverter> Create(ConversionSpec spec, std::vector<TensorView> sources,
                                        const Fp8BlockOptions& fp8 = {});

  /// The destination (and scale) specs.
  const ConversionOutputs& outputs() const { return outputs_; }

  /// Writes destination bytes [offset, offset + out.size()) into `out`. Chunks may come in any
  /// order but must not split an element; ascending order reuses the cached FP8 block-row.
  /// Errors: kInvalidArgument for a range past the end or splitting an element; kCorruptData
  /// naming the tensor and element for NaN/Inf input to FP8 quantisation.
  Status FillDestination(std::uint64_t offset, std::span<std::byte> out);

  /// Writes scale bytes [offset, offset + out.size()) (FP8 destinations only; quantises the
  /// block-rows whose scales were not computed yet). kFailedPrecondition without a scale tensor;
  /// other errors as FillDestination.
  Status FillScale(std::uint64_t offset, std::span<std::byte> out);

 private:
  TensorConverter() = default;
  Status ReadSource(std::uint64_t first_element, std::uint64_t count, std::byte* out) const;
  Status ComputeBlockRow(std::int64_t index);

  ConversionSpec spec_;
  Fp8BlockOptions fp8_;
  std::vector<TensorView> sources_;
  ConversionOutputs outputs_;
  std::vector<std::uint64_t> source_run_;  // per source: concat-dim size * inner elements
  std::uint64_t dest_run_ = 0;             // destination concat-dim size * inner elements
  std::vector<std::byte> scratch_;         // source-dtype bytes
  // FP8 state: matrices of [rows_, cols_], experts_ of them; block-row index = expert * row_blocks_ + rb.
  std::int64_t experts_ = 1, rows_ = 0, cols_ = 0, row_blocks_ = 0, col_blocks_ = 0;
  std::int64_t cached_block_row_ = -1;
  std::vector<std::uint8_t> q_block_;
  std::vector<float> scales_;
  std::vector<bool> scales_done_;
};

}  // namespace shardwire
