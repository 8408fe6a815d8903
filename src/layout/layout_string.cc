// The layout strings of `shardwire plan` and the demo: "fsdp=8", "hsdp=2x8", "tp=8,ep=8,dp=16".
#include <charconv>
#include <map>

#include <fmt/format.h>

#include "shardwire/model_layouts.h"

namespace shardwire {
namespace {

constexpr const char* kKeys = "fsdp, hsdp, tp, ep, pp, dp";

Status PartError(std::string_view spec, std::size_t at, const std::string& what) {
  return InvalidArgument(
      fmt::format("layout \"{}\": {} at character {} (keys: {}; e.g. fsdp=8, hsdp=2x8, "
                  "tp=4,dp=2, tp=8,ep=8, pp=2,tp=4)",
                  spec, what, at + 1, kKeys));
}

Result<int> ParsePositive(std::string_view spec, std::size_t at, std::string_view text) {
  int value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size() || value < 1) {
    return PartError(spec, at, fmt::format("\"{}\" is not a positive integer", text));
  }
  return value;
}

}  // namespace

Result<Layout> MakeLayoutFromString(const ModelDescription& model, std::string_view spec) {
  std::map<std::string, int> values;
  int hsdp_replicate = 0;
  std::size_t pos = 0;
  if (spec.empty()) return PartError(spec, 0, "empty layout");
  while (pos <= spec.size()) {
    const std::size_t comma = std::min(spec.find(',', pos), spec.size());
    const std::string_view part = spec.substr(pos, comma - pos);
    const std::size_t eq = part.find('=');
    if (eq == std::string_view::npos) return PartError(spec, pos, fmt::format("\"{}\" is not key=value", part));
    const std::string key(part.substr(0, eq));
    const std::string_view value = part.substr(eq + 1);
    const std::size_t value_at = pos + eq + 1;
    if (key != "fsdp" && key != "hsdp" && key != "tp" && key != "ep" && key != "pp" && key != "dp") {
      return PartError(spec, pos, fmt::format("unknown key \"{}\"", key));
    }
    if (values.count(key)) return PartError(spec, pos, fmt::format("key \"{}\" given twice", key));
    if (key == "hsdp") {
      const std::size_t x = value.find('x');
      if (x == std::string_view::npos)
        return PartError(spec, value_at, fmt::format("hsdp wants RxS, got \"{}\"", value));
      SW_ASSIGN_OR_RETURN(hsdp_replicate, ParsePositive(spec, value_at, value.substr(0, x)));
      SW_ASSIGN_OR_RETURN(values[key], ParsePositive(spec, value_at + x + 1, value.substr(x + 1)));
    } else {
      SW_ASSIGN_OR_RETURN(values[key], ParsePositive(spec, value_at, value));
    }
    pos = comma + 1;
  }
  auto get = [&](const char* key) { return values.count(key) ? values[key] : 1; };
  const bool trainer = values.count("fsdp") || values.count("hsdp");
  if (values.count("fsdp") && values.count("hsdp")) return PartError(spec, spec.find("hsdp"), "fsdp and hsdp together");
  if (trainer) {
    if (values.count("dp")) {
      return PartError(spec, spec.find("dp="), "dp is for engine layouts; trainers replicate with hsdp=RxS");
    }
    TrainerLayoutOptions o;
    o.dp_replicate = values.count("hsdp") ? hsdp_replicate : 1;
    o.dp_shard = values.count("hsdp") ? values["hsdp"] : values["fsdp"];
    o.tp = get("tp");
    o.ep = get("ep");
    o.pp = get("pp");
    return MakeTrainerLayout(model, o);
  }
  EngineLayoutOptions o;
  o.tp = get("tp");
  o.ep = get("ep");
  o.pp = get("pp");
  o.dp = get("dp");
  return MakeEngineLayout(model, o);
}

}  // namespace shardwire
