#include "cli/option_checks.h"

#include <string>

namespace shardwire::cli {
namespace {

CLI::Validator NumberCheck(bool zero_allowed) {
  const std::string bound = zero_allowed ? ">= 0" : "> 0";
  return CLI::Validator(
      [zero_allowed, bound](std::string& text) -> std::string {
        double value = 0;
        if (!CLI::detail::lexical_cast(text, value)) return "must be a number " + bound + ", got '" + text + "'";
        const bool in_range = zero_allowed ? value >= 0 : value > 0;  // false for NaN
        return in_range ? std::string() : "must be a number " + bound + ", got " + text;
      },
      "NUMBER " + bound, zero_allowed ? "NON_NEGATIVE" : "POSITIVE");
}

}  // namespace

CLI::Validator NonNegativeNumber() { return NumberCheck(true); }

CLI::Validator PositiveNumber() { return NumberCheck(false); }

CLI::Validator NonEmpty(const std::string& what_it_is) {
  return CLI::Validator(
      [what_it_is](std::string& text) -> std::string {
        return text.empty() ? "must not be empty (give " + what_it_is + ", or leave the option out)" : std::string();
      },
      "", "NON_EMPTY");
}

}  // namespace shardwire::cli
