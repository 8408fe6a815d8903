// Internal (src/model and the layers above it): parsing JSON read from files and from other
// processes (safetensors headers, checkpoint indexes, config.json, coordinator records) with a
// bound on its nesting.
//
// nlohmann::json parses a document of any depth without recursion, but dump(), comparisons and
// every error message that prints a value recurse once per level: a value nested 100,000 levels
// deep (a few hundred KB of '[') overflowed the stack of `shardwire describe` (SIGSEGV). The
// documents Shardwire reads nest a handful of levels (a safetensors header three, a Hugging Face
// config.json four or five), so anything deeper than kMaxJsonDepth is refused while parsing,
// before a value that deep exists.
//
// Thread-safety: the function is reentrant.
#pragma once

#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "shardwire/status.h"

namespace shardwire::model {

/// Levels of nested arrays and objects a document may have (the top-level value is level 1).
inline constexpr int kMaxJsonDepth = 64;

/// What an object naming a key twice is (RFC 8259 leaves the meaning open).
enum class DuplicateKeys {
  /// kCorruptData: nlohmann keeps the last silently, so a safetensors header or an index naming a
  /// tensor twice described one tensor over another's bytes.
  kRefuse,
  /// The last one wins, as Python's json (and so transformers) reads a config.json.
  kLastWins,
};

/// Parses `text` as one JSON document (RFC 8259, nlohmann::json or nlohmann::ordered_json).
/// Errors: kCorruptData "not valid JSON: <parser message>" for malformed text, "nested deeper
/// than <max_depth> levels" for a document that is, and (kRefuse) "duplicate key \"<name>\""
/// for an object naming a key twice. Callers add the file or key.
template <class Json = nlohmann::json>
Result<Json> ParseBoundedJson(std::string_view text, int max_depth = kMaxJsonDepth,
                              DuplicateKeys duplicates = DuplicateKeys::kRefuse) {
  bool too_deep = false;
  std::string duplicate;
  std::vector<std::unordered_set<std::string>> keys;  // the keys of each object being parsed
  // A callback sees every value with its depth; an array or object that opens past the bound
  // is discarded (the parser skips its contents without building them) and fails the parse.
  const typename Json::parser_callback_t bound = [&](int depth, nlohmann::json::parse_event_t event, Json& parsed) {
    using E = nlohmann::json::parse_event_t;
    if ((event == E::object_start || event == E::array_start) && depth >= max_depth) {
      too_deep = true;
      return false;
    }
    if (too_deep || !duplicate.empty()) return false;
    if (duplicates == DuplicateKeys::kLastWins) return true;
    if (event == E::object_start) keys.emplace_back();
    if (event == E::object_end && !keys.empty()) keys.pop_back();
    if (event == E::key && !keys.empty() && parsed.is_string() &&
        !keys.back().insert(parsed.template get_ref<const std::string&>()).second) {
      duplicate = parsed.template get<std::string>();
      return false;
    }
    return true;
  };
  Json root;
  try {
    root = Json::parse(text, bound);
  } catch (const nlohmann::json::exception& e) {
    return CorruptData(fmt::format("not valid JSON: {}", e.what()));
  }
  if (too_deep) return CorruptData(fmt::format("nested deeper than {} levels", max_depth));
  if (!duplicate.empty()) return CorruptData(fmt::format("duplicate key \"{}\"", duplicate.substr(0, 256)));
  return root;
}

}  // namespace shardwire::model
