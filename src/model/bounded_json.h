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

#include <cstddef>
#include <cstdint>
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

/// Values (each null, boolean, number, string, array and object counts one) a document may
/// have. A safetensors header of 300,000 tensors has about 3.6 million; nlohmann's DOM takes
/// up to ~100 bytes per value, so a 100 MB header of empty objects (`[{},{},...]`, 33 million)
/// peaked at 3.2 GB before the caller saw it was no header. 8 million: under 1 GB.
inline constexpr std::size_t kMaxJsonValues = std::size_t{8} << 20;

/// Values a Hugging Face config.json may have (real ones: a few hundred). Convert edits it as
/// nlohmann::ordered_json, whose member insertion is linear in the members already there: an
/// object of 80,000 keys took 11 s.
inline constexpr std::size_t kMaxConfigJsonValues = 50'000;

/// What an object naming a key twice is (RFC 8259 leaves the meaning open).
enum class DuplicateKeys {
  /// kCorruptData: nlohmann keeps the last silently, so a safetensors header or an index naming a
  /// tensor twice described one tensor over another's bytes.
  kRefuse,
  /// The last one wins, as Python's json (and so transformers) reads a config.json.
  kLastWins,
};

/// A SAX handler (nlohmann::json_sax) that builds nothing: it checks the nesting bound and
/// duplicate keys of a document and keeps the first parse error, for ParseBoundedJson.
class JsonBoundsChecker {
 public:
  JsonBoundsChecker(int max_depth, DuplicateKeys duplicates, std::size_t max_values = kMaxJsonValues)
      : max_depth_(max_depth), duplicates_(duplicates), max_values_(max_values) {}
  bool null() { return Count(); }
  bool boolean(bool) { return Count(); }
  bool number_integer(std::int64_t) { return Count(); }
  bool number_unsigned(std::uint64_t) { return Count(); }
  bool number_float(double, const std::string&) { return Count(); }
  bool string(std::string&) { return Count(); }
  bool binary(std::vector<std::uint8_t>&) { return Count(); }
  bool start_object(std::size_t) {
    if (!Count() || !Open()) return false;
    if (duplicates_ == DuplicateKeys::kRefuse) keys_.emplace_back();
    return true;
  }
  bool key(std::string& k) {
    if (duplicates_ == DuplicateKeys::kRefuse && !keys_.empty() && !keys_.back().insert(k).second) {
      error_ = fmt::format("duplicate key \"{}\"", k.substr(0, 256));
      return false;
    }
    return true;
  }
  bool end_object() {
    if (duplicates_ == DuplicateKeys::kRefuse && !keys_.empty()) keys_.pop_back();
    --depth_;
    return true;
  }
  bool start_array(std::size_t) { return Count() && Open(); }
  bool end_array() {
    --depth_;
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) {
    error_ = fmt::format("not valid JSON: {}", e.what());
    return false;
  }
  /// Empty when the document passed.
  const std::string& error() const { return error_; }

 private:
  bool Count() {
    if (++values_ > max_values_) {
      error_ = fmt::format("more than {} values", max_values_);
      return false;
    }
    return true;
  }
  bool Open() {
    if (++depth_ > max_depth_) {
      error_ = fmt::format("nested deeper than {} levels", max_depth_);
      return false;
    }
    return true;
  }
  int max_depth_;
  DuplicateKeys duplicates_;
  std::size_t max_values_;
  std::size_t values_ = 0;
  int depth_ = 0;
  std::vector<std::unordered_set<std::string>> keys_;  // the keys of each object being parsed
  std::string error_;
};

/// Parses `text` as one JSON document (RFC 8259, nlohmann::json or nlohmann::ordered_json).
/// Errors: kCorruptData "not valid JSON: <parser message>" for malformed text (a NUL byte
/// included: nlohmann's lexer would take it for the end of the input and ignore what follows),
/// "nested deeper than <max_depth> levels" for a document that is, "more than <max_values>
/// values" for one that has more (see kMaxJsonValues), and (kRefuse) "duplicate key
/// \"<name>\"" for an object naming a key twice. Callers add the file or key.
/// Two linear passes: a SAX pass (JsonBoundsChecker) that builds nothing checks the bounds, then
/// the DOM is built. (nlohmann's callback parser, used before, rescans an object's members each
/// time one of its object members ends: a safetensors header of 40,000 tensors took 32 s, one of
/// 300,000 hours.)
template <class Json = nlohmann::json>
Result<Json> ParseBoundedJson(std::string_view text, int max_depth = kMaxJsonDepth,
                              DuplicateKeys duplicates = DuplicateKeys::kRefuse,
                              std::size_t max_values = kMaxJsonValues) {
  if (const auto nul = text.find('\0'); nul != std::string_view::npos) {
    return CorruptData(fmt::format("not valid JSON: a NUL byte at offset {}", nul));
  }
  JsonBoundsChecker checker(max_depth, duplicates, max_values);
  try {
    const bool passed = Json::sax_parse(text, &checker);
    if (!passed || !checker.error().empty()) {
      return CorruptData(checker.error().empty() ? std::string("not valid JSON") : checker.error());
    }
    return Json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    return CorruptData(fmt::format("not valid JSON: {}", e.what()));
  }
}

}  // namespace shardwire::model
