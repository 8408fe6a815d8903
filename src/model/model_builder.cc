#include "model/model_builder.h"

#include <fmt/format.h>

namespace shardwire::internal {
namespace {

constexpr std::string_view kScaleSuffix = "_scale_inv";  // appended to "<prefix>.weight"

std::int64_t CeilDiv(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

}  // namespace

ModelBuilder::ModelBuilder(DType dtype, std::optional<std::array<std::int64_t, 2>> fp8_block_size)
    : dtype_(dtype), fp8_block_(fp8_block_size) {}

void ModelBuilder::Add(std::string name, std::vector<std::int64_t> shape, ParallelRole role,
                       int layer) {
  Add(std::move(name), dtype_, std::move(shape), role, layer);
}

void ModelBuilder::Add(std::string name, DType dtype, std::vector<std::int64_t> shape,
                       ParallelRole role, int layer) {
  tensors_.push_back(ModelTensor{TensorSpec{std::move(name), dtype, std::move(shape)}, role, layer,
                                 expert_, shared_});
}

void ModelBuilder::Linear(const std::string& prefix, std::int64_t out, std::int64_t in,
                          ParallelRole role, int layer, LinearOptions options) {
  std::string weight = prefix + ".weight";
  if (fp8() && options.quantizable) {
    std::string scale = weight + std::string(kScaleSuffix);
    Add(weight, DType::kF8E4M3, {out, in}, role, layer);
    Add(std::move(scale), DType::kF32,
        {CeilDiv(out, (*fp8_block_)[0]), CeilDiv(in, (*fp8_block_)[1])}, role, layer);
    tensors_.back().scale_of = std::move(weight);
  } else {
    Add(std::move(weight), {out, in}, role, layer);
  }
  if (options.bias) {
    Add(prefix + ".bias", {out}, role == ParallelRole::kColumn ? role : ParallelRole::kReplicated,
        layer);
  }
}

void ModelBuilder::Fuse(const std::string& fused, std::initializer_list<std::string> parts,
                        bool bias) {
  auto add = [&](std::string_view suffix) {
    FusedParameter f{fused + std::string(suffix), {}};
    f.parts.reserve(parts.size());
    for (const auto& p : parts) f.parts.push_back(p + std::string(suffix));
    fused_.push_back(std::move(f));
  };
  add(".weight");
  if (fp8()) add(".weight_scale_inv");
  if (bias) add(".bias");
}

std::string LayerPrefix(int layer) { return fmt::format("model.layers.{}.", layer); }

void AddGqaAttention(ModelBuilder& b, const ModelConfig& c, const std::string& layer_prefix,
                     int layer, const GqaOptions& o) {
  using R = ParallelRole;
  const std::string p = layer_prefix + "self_attn.";
  const std::int64_t q_out = c.num_attention_heads * c.head_dim;
  const std::int64_t kv_out = c.num_key_value_heads * c.head_dim;
  const ModelBuilder::LinearOptions qkv{.bias = o.qkv_bias};
  b.Linear(p + "q_proj", q_out, c.hidden_size, R::kColumn, layer, qkv);
  b.Linear(p + "k_proj", kv_out, c.hidden_size, R::kColumn, layer, qkv);
  b.Linear(p + "v_proj", kv_out, c.hidden_size, R::kColumn, layer, qkv);
  if (o.qk_norm) {
    b.Add(p + "q_norm.weight", {c.head_dim}, R::kReplicated, layer);
    b.Add(p + "k_norm.weight", {c.head_dim}, R::kReplicated, layer);
  }
  b.Linear(p + "o_proj", c.hidden_size, q_out, R::kRow, layer, {.bias = o.o_bias});
  b.Fuse(p + "qkv_proj", {p + "q_proj", p + "k_proj", p + "v_proj"}, o.qkv_bias);
}

void AddGatedMlp(ModelBuilder& b, const std::string& prefix, std::int64_t hidden,
                 std::int64_t inter, int layer, bool bias, const GatedMlpNames& names,
                 bool down_second) {
  using R = ParallelRole;
  const std::string gate = prefix + std::string(names.gate);
  const std::string up = prefix + std::string(names.up);
  const std::string down = prefix + std::string(names.down);
  b.Linear(gate, inter, hidden, R::kColumn, layer, {.bias = bias});
  if (down_second) b.Linear(down, hidden, inter, R::kRow, layer, {.bias = bias});
  b.Linear(up, inter, hidden, R::kColumn, layer, {.bias = bias});
  if (!down_second) b.Linear(down, hidden, inter, R::kRow, layer, {.bias = bias});
  b.Fuse(prefix + std::string(names.gate_up), {gate, up}, bias);
}

void AddRoutedExperts(ModelBuilder& b, const std::string& prefix, std::int64_t n,
                      std::int64_t hidden, std::int64_t inter, int layer,
                      const GatedMlpNames& names, bool down_second) {
  for (int e = 0; e < static_cast<int>(n); ++e) {
    b.set_expert(e);
    AddGatedMlp(b, fmt::format("{}experts.{}.", prefix, e), hidden, inter, layer, false, names,
                down_second);
  }
  b.set_expert(-1);
}

Result<std::int64_t> Required(const ModelConfig& c, std::string_view key,
                              const std::optional<std::int64_t>& value, bool allow_zero) {
  if (!value.has_value()) {
    return InvalidArgument(fmt::format("model config {}: {} is missing", c.model_type, key));
  }
  if (*value < 0 || (*value == 0 && !allow_zero)) {
    return InvalidArgument(fmt::format("model config {}: {} is {}, must be positive",
                                       c.model_type, key, *value));
  }
  return *value;
}

}  // namespace shardwire::internal
