// Internal: ModelBuilder collects a family's tensors and fused parameters in
// ModelDescription order, applying FP8 block quantisation to Linear weights, plus the
// building blocks several families share (GQA attention, gated MLP, routed experts).
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "shardwire/model_description.h"

namespace shardwire::internal {

class ModelBuilder {
 public:
  /// fp8_block_size: config.fp8_block_size when the checkpoint is FP8 block-quantised.
  ModelBuilder(DType dtype, std::optional<std::array<std::int64_t, 2>> fp8_block_size);

  /// The current expert context, stamped on every tensor added until changed.
  void set_expert(int expert) { expert_ = expert; }
  void set_shared_expert(bool shared) { shared_ = shared; }

  /// A tensor of the model dtype (norms, embeddings, routers...), never quantised.
  void Add(std::string name, std::vector<std::int64_t> shape, ParallelRole role, int layer);
  /// A tensor of an explicit dtype.
  void Add(std::string name, DType dtype, std::vector<std::int64_t> shape, ParallelRole role,
           int layer);

  struct LinearOptions {
    bool bias = false;         ///< adds `<prefix>.bias` [out]
    bool quantizable = true;   ///< FP8 when the model is; false for routers, eh_proj, heads
  };
  /// An nn.Linear(in, out): `<prefix>.weight` [out, in] of role `role`; when FP8 and
  /// quantizable: weight F8_E4M3 followed by `<prefix>.weight_scale_inv` F32; then the
  /// bias (kColumn for column-parallel weights, kReplicated otherwise).
  void Linear(const std::string& prefix, std::int64_t out, std::int64_t in, ParallelRole role,
              int layer, LinearOptions options);
  void Linear(const std::string& prefix, std::int64_t out, std::int64_t in, ParallelRole role,
              int layer) {
    Linear(prefix, out, in, role, layer, LinearOptions{});
  }

  /// Records the fused parameter `<fused>.weight` = parts `<p>.weight` (and
  /// `.weight_scale_inv` when FP8, `.bias` when `bias`). Parts must be quantizable Linears.
  void Fuse(const std::string& fused, std::initializer_list<std::string> parts, bool bias);

  bool fp8() const { return fp8_block_.has_value(); }
  DType dtype() const { return dtype_; }

  std::vector<ModelTensor> TakeTensors() { return std::move(tensors_); }
  std::vector<FusedParameter> TakeFused() { return std::move(fused_); }

 private:
  DType dtype_;
  std::optional<std::array<std::int64_t, 2>> fp8_block_;
  int expert_ = -1;
  bool shared_ = false;
  std::vector<ModelTensor> tensors_;
  std::vector<FusedParameter> fused_;
};

/// "model.layers.{layer}."
std::string LayerPrefix(int layer);

/// Llama-style grouped-query attention under `<layer_prefix>self_attn.`: q/k/v_proj
/// (column, optional biases), optional q_norm/k_norm [head_dim], o_proj (row, optional
/// bias); fused qkv_proj.
struct GqaOptions {
  bool qkv_bias = false;
  bool o_bias = false;
  bool qk_norm = false;
};
void AddGqaAttention(ModelBuilder& b, const ModelConfig& c, const std::string& layer_prefix,
                     int layer, const GqaOptions& options);

/// Names of a gated MLP's three Linears and of the fused [gate; up] parameter.
struct GatedMlpNames {
  std::string_view gate = "gate_proj";
  std::string_view up = "up_proj";
  std::string_view down = "down_proj";
  std::string_view gate_up = "gate_up_proj";
};

/// A SwiGLU MLP under `prefix` (ending in '.'): gate, up (column) and down (row), in the
/// order gate, up, down (gate, down, up with down_second: Mixtral's w1, w2, w3), optional
/// biases; fused gate_up = [gate; up].
void AddGatedMlp(ModelBuilder& b, const std::string& prefix, std::int64_t hidden,
                 std::int64_t inter, int layer, bool bias, const GatedMlpNames& names = {},
                 bool down_second = false);

/// Routed experts `<prefix>experts.{e}.` for e in [0, n): a gated MLP each with
/// intermediate size `inter`, expert index e.
void AddRoutedExperts(ModelBuilder& b, const std::string& prefix, std::int64_t n,
                      std::int64_t hidden, std::int64_t inter, int layer,
                      const GatedMlpNames& names = {}, bool down_second = false);

/// kInvalidArgument "model config <type>: <key> is missing" unless `value` is set and > 0
/// (or >= 0 when allow_zero).
Result<std::int64_t> Required(const ModelConfig& c, std::string_view key,
                              const std::optional<std::int64_t>& value, bool allow_zero = false);

}  // namespace shardwire::internal
