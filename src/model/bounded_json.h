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

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "shardwire/status.h"

namespace shardwire::model {

/// Levels of nested arrays and objects a document may have (the top-level value is level 1).
inline constexpr int kMaxJsonDepth = 64;

/// Parses `text` as one JSON document (RFC 8259, nlohmann::json or nlohmann::ordered_json).
/// Errors: kCorruptData "not valid JSON: <parser message>" for malformed text, and "nested
/// deeper than <max_depth> levels" for a document that is (callers add the file or key).
template <class Json = nlohmann::json>
Result<Json> ParseBoundedJson(std::string_view text, int max_depth = kMaxJsonDepth) {
  bool too_deep = false;
  // A callback sees every value with its depth; an array or object that opens past the bound
  // is discarded (the parser skips its contents without building them) and fails the parse.
  const typename Json::parser_callback_t bound = [&too_deep, max_depth](int depth, nlohmann::json::parse_event_t event,
                                                                         Json&) {
    if ((event == nlohmann::json::parse_event_t::object_start || event == nlohmann::json::parse_event_t::array_start) &&
        depth >= max_depth) {
      too_deep = true;
      return false;
    }
    return !too_deep;
  };
  Json root;
  try {
    root = Json::parse(text, bound);
  } catch (const nlohmann::json::exception& e) {
    return CorruptData(fmt::format("not valid JSON: {}", e.what()));
  }
  if (too_deep) return CorruptData(fmt::format("nested deeper than {} levels", max_depth));
  return root;
}

}  // namespace shardwire::model
