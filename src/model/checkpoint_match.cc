// CheckCheckpointMatchesModel: a checkpoint's tensor list vs a ModelDescription.
#include <map>

#include <fmt/format.h>

#include "shardwire/model_description.h"

namespace shardwire {
namespace {

constexpr std::size_t kListedDifferences = 8;

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// Non-parameter buffers old transformers versions saved with the weights.
bool IsIgnoredBuffer(std::string_view name) { return EndsWith(name, "rotary_emb.inv_freq"); }

}  // namespace

bool IsTiedEmbeddingCopy(const ModelDescription& description, const TensorSpec& spec) {
  if (!description.config.tie_word_embeddings || spec.name != "lm_head.weight") return false;
  const ModelTensor* embed = description.Find("model.embed_tokens.weight");
  return embed != nullptr && spec.dtype == embed->spec.dtype && spec.shape == embed->spec.shape;
}

Status CheckCheckpointMatchesModel(const ModelDescription& description,
                                   const std::vector<TensorSpec>& checkpoint_tensors,
                                   std::string_view checkpoint_name) {
  std::map<std::string_view, const TensorSpec*> found;
  for (const auto& spec : checkpoint_tensors) {
    if (!IsIgnoredBuffer(spec.name)) found.emplace(spec.name, &spec);
  }
  std::map<std::string_view, const TensorSpec*> expected;
  for (const auto& t : description.tensors) expected.emplace(t.spec.name, &t.spec);

  // Listed names first, then shapes, then dtypes: a renamed or missing tensor is the likelier
  // cause and must not be cut off the listed eight by a dtype that differs everywhere.
  std::vector<std::string> names, shapes, dtypes;
  for (const auto& t : description.tensors) {
    const auto it = found.find(t.spec.name);
    if (it == found.end()) {
      names.push_back("missing " + ToString(t.spec));
      continue;
    }
    const TensorSpec& got = *it->second;
    if (got.shape != t.spec.shape) {
      shapes.push_back(fmt::format("shape of {}: expected {} found {}", t.spec.name, ShapeToString(t.spec.shape),
                                   ShapeToString(got.shape)));
    }
    if (got.dtype != t.spec.dtype) {
      dtypes.push_back(
          fmt::format("dtype of {}: expected {} found {}", t.spec.name, DTypeName(t.spec.dtype), DTypeName(got.dtype)));
    }
  }
  for (const auto& [name, spec] : found) {
    if (expected.contains(name)) continue;
    if (!IsTiedEmbeddingCopy(description, *spec)) names.push_back("unexpected " + ToString(*spec));
  }
  std::vector<std::string> diffs = std::move(names);
  diffs.insert(diffs.end(), shapes.begin(), shapes.end());
  diffs.insert(diffs.end(), dtypes.begin(), dtypes.end());
  if (diffs.empty()) return Status::Ok();

  std::string list;
  for (std::size_t i = 0; i < diffs.size() && i < kListedDifferences; ++i) {
    list += i == 0 ? "" : "; ";
    list += diffs[i];
  }
  if (diffs.size() > kListedDifferences) {
    list += fmt::format("; ... and {} more", diffs.size() - kListedDifferences);
  }
  return LayoutMismatch(fmt::format("{} does not match the {} model description: {} difference{}: {}",
                                    checkpoint_name, description.config.model_type, diffs.size(),
                                    diffs.size() == 1 ? "" : "s", list));
}

}  // namespace shardwire
