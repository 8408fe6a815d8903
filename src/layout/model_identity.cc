#include "shardwire/model_identity.h"

#include <algorithm>
#include <cstdio>
#include <memory>

#include <fmt/format.h>
#include <xxhash.h>

#include "shardwire/dtype.h"
#include "shardwire/shard_io.h"

namespace shardwire {
namespace {

std::string Hex128(const XXH128_hash_t& h) { return fmt::format("{:016x}{:016x}", h.high64, h.low64); }

std::string Digest128(std::string_view prefix, std::string_view text) {
  return std::string(prefix) + Hex128(XXH3_128bits(text.data(), text.size()));
}

std::string DimsText(const Dims& dims) {
  std::string out = "[";
  for (std::size_t i = 0; i < dims.size(); ++i) out += fmt::format("{}{}", i ? ", " : "", dims[i]);
  return out + "]";
}

std::string SpecText(const TensorSpec& spec) {
  return fmt::format("{} {}{}", spec.name, DTypeName(spec.dtype), ShapeToString(spec.shape));
}

}  // namespace

std::string ModelIdentity::CanonicalText(bool with_revision) const {
  std::string text;
  for (const TensorSpec& t : tensors) text += SpecText(t) + "\n";
  text += "quantization " + quantization + "\n";
  if (with_revision) text += "revision " + revision + "\n";
  return text;
}

std::string ModelIdentity::Digest() const { return Digest128("mi1-", CanonicalText(true)); }

std::string ModelIdentity::StructureDigest() const { return Digest128("ms1-", CanonicalText(false)); }

Result<ModelIdentity> MakeModelIdentity(const ModelDescription& model, std::string revision) {
  if (revision.empty()) return InvalidArgument("model identity: the content revision is empty");
  if (model.tensors.empty()) return InvalidArgument("model identity: the model has no tensors");
  ModelIdentity id;
  id.tensors.reserve(model.tensors.size());
  for (const ModelTensor& t : model.tensors) id.tensors.push_back(t.spec);
  if (!model.config.quant_method.empty()) {
    id.quantization = model.config.quant_method;
    if (model.config.fp8_block_size) {
      id.quantization +=
          fmt::format(" block {}x{}", (*model.config.fp8_block_size)[0], (*model.config.fp8_block_size)[1]);
    }
  }
  id.revision = std::move(revision);
  return id;
}

Result<std::string> CheckpointRevision(const Checkpoint& checkpoint, const std::function<Status()>& interrupt) {
  const std::unique_ptr<XXH3_state_t, decltype(&XXH3_freeState)> state(XXH3_createState(), &XXH3_freeState);
  if (state == nullptr) return Internal("XXH3_createState failed");
  XXH3_128bits_reset(state.get());
  // XXH3's streaming digest does not depend on how the input is cut: the pieces are where
  // the hook is asked.
  std::uint64_t since_check = 0;
  for (const TensorSpec& spec : checkpoint.tensors()) {  // sorted by name
    if (interrupt) SW_RETURN_IF_ERROR(interrupt());
    SW_ASSIGN_OR_RETURN(const TensorView view, checkpoint.Get(spec.name));
    const std::string header = SpecText(spec) + "\n";
    XXH3_128bits_update(state.get(), header.data(), header.size());
    for (std::uint64_t at = 0; at < view.data.size();) {
      const std::uint64_t piece = std::min<std::uint64_t>(view.data.size() - at, kInterruptCheckBytes - since_check);
      XXH3_128bits_update(state.get(), view.data.data() + at, piece);
      at += piece;
      since_check += piece;
      if (since_check == kInterruptCheckBytes) {
        since_check = 0;
        if (interrupt) SW_RETURN_IF_ERROR(interrupt());
      }
    }
  }
  return "xxh3:" + Hex128(XXH3_128bits_digest(state.get()));
}

std::vector<std::string> LayoutFingerprintInputs(const Layout& layout) {
  std::vector<std::string> lines;
  lines.push_back(
      fmt::format("layout {} world {} tensors {}", layout.description(), layout.world_size(), layout.tensors().size()));
  for (std::size_t i = 0; i < layout.tensors().size(); ++i) {
    lines.push_back(fmt::format("tensor {} {}", i, SpecText(layout.tensors()[i])));
  }
  for (std::size_t c = 0; c < layout.num_rank_classes(); ++c) {
    const RankShards& rs = layout.rank_class(c);
    std::string ranks;
    for (std::uint32_t r : layout.ranks_of_class(c)) ranks += fmt::format("{}{}", ranks.empty() ? "" : ",", r);
    lines.push_back(fmt::format("class {} ranks {} bytes {}", c, ranks, rs.buffer_bytes));
    std::vector<const ShardRef*> shards;
    for (const ShardRef& s : rs.shards) shards.push_back(&s);
    std::stable_sort(shards.begin(), shards.end(),
                     [](const ShardRef* a, const ShardRef* b) { return a->byte_offset < b->byte_offset; });
    for (const ShardRef* s : shards) {
      lines.push_back(fmt::format("  shard {} off{} shape{} @{} p{}", layout.tensors()[s->tensor].name,
                                  DimsText(s->box.offset), DimsText(s->box.shape), s->byte_offset, s->partial_group));
    }
  }
  return lines;
}

std::string LayoutFingerprintOf(const std::vector<std::string>& inputs) {
  XXH3_state_t* state = XXH3_createState();
  XXH3_128bits_reset(state);
  for (const std::string& line : inputs) {
    XXH3_128bits_update(state, line.data(), line.size());
    XXH3_128bits_update(state, "\n", 1);
  }
  const XXH128_hash_t h = XXH3_128bits_digest(state);
  XXH3_freeState(state);
  return "lf1-" + Hex128(h);
}

std::string LayoutFingerprint(const Layout& layout) { return LayoutFingerprintOf(LayoutFingerprintInputs(layout)); }

std::vector<std::string> FingerprintDifferences(const std::vector<std::string>& expected,
                                                const std::vector<std::string>& found, std::size_t max_differences) {
  std::vector<std::string> out;
  std::size_t i = 0, j = 0;
  // Looks ahead this many lines for the next equal pair before calling a line changed.
  constexpr std::size_t kWindow = 64;
  while ((i < expected.size() || j < found.size()) && out.size() < max_differences) {
    if (i < expected.size() && j < found.size() && expected[i] == found[j]) {
      ++i, ++j;
      continue;
    }
    if (i >= expected.size()) {
      out.push_back(fmt::format("unexpected line {}: \"{}\"", j + 1, found[j]));
      ++j;
      continue;
    }
    if (j >= found.size()) {
      out.push_back(fmt::format("missing line {}: \"{}\"", i + 1, expected[i]));
      ++i;
      continue;
    }
    // Resynchronise: an inserted line in `found`, or a missing one.
    std::size_t skip_found = 0, skip_expected = 0;
    for (std::size_t k = 1; k <= kWindow && j + k < found.size(); ++k) {
      if (found[j + k] == expected[i]) {
        skip_found = k;
        break;
      }
    }
    for (std::size_t k = 1; k <= kWindow && i + k < expected.size(); ++k) {
      if (expected[i + k] == found[j]) {
        skip_expected = k;
        break;
      }
    }
    if (skip_found != 0 && (skip_expected == 0 || skip_found <= skip_expected)) {
      for (std::size_t k = 0; k < skip_found && out.size() < max_differences; ++k) {
        out.push_back(fmt::format("unexpected line {}: \"{}\"", j + k + 1, found[j + k]));
      }
      j += skip_found;
    } else if (skip_expected != 0) {
      for (std::size_t k = 0; k < skip_expected && out.size() < max_differences; ++k) {
        out.push_back(fmt::format("missing line {}: \"{}\"", i + k + 1, expected[i + k]));
      }
      i += skip_expected;
    } else {
      out.push_back(fmt::format("line {}: expected \"{}\" found \"{}\"", i + 1, expected[i], found[j]));
      ++i, ++j;
    }
  }
  return out;
}

}  // namespace shardwire
