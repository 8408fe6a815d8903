#include "cli/option_checks.h"

#include <string>

#include <fmt/format.h>

namespace shardwire::cli {
namespace {

// A number above `bound` (`inclusive`: or equal to it); inf passes, NaN never does.
CLI::Validator NumberCheck(double bound, bool inclusive) {
  const std::string text_bound = fmt::format("{} {}", inclusive ? ">=" : ">", bound);
  return CLI::Validator(
      [bound, inclusive, text_bound](std::string& text) -> std::string {
        double value = 0;
        if (!CLI::detail::lexical_cast(text, value)) return "must be a number " + text_bound + ", got '" + text + "'";
        const bool in_range = inclusive ? value >= bound : value > bound;  // false for NaN
        return in_range ? std::string() : "must be a number " + text_bound + ", got " + text;
      },
      "NUMBER " + text_bound, "NUMBER " + text_bound);
}

}  // namespace

CLI::Validator NonNegativeNumber() { return NumberCheck(0, true); }

CLI::Validator PositiveNumber() { return NumberCheck(0, false); }

CLI::Validator AtLeast(double minimum) { return NumberCheck(minimum, true); }

CLI::Validator NonEmpty(const std::string& what_it_is) {
  return CLI::Validator(
      [what_it_is](std::string& text) -> std::string {
        return text.empty() ? "must not be empty (give " + what_it_is + ", or leave the option out)" : std::string();
      },
      "", "NON_EMPTY");
}

}  // namespace shardwire::cli
