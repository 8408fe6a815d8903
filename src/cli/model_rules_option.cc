#include "cli/model_rules_option.h"

#include <filesystem>

#include <fmt/format.h>

#include "shardwire/model_rules.h"

namespace shardwire::cli {
namespace {

std::vector<std::string>& Files() {
  static std::vector<std::string> files;
  return files;
}

}  // namespace

void AddModelRulesOption(CLI::App* cmd) {
  cmd->add_option_function<std::vector<std::string>>(
         "--model-rules",
         [name = cmd->get_name()](const std::vector<std::string>& paths) {
           for (const auto& path : paths) {
             Status s = LoadUserModelRules(path);
             if (!s.ok()) {
               // A bad file is the command's error (exit code 1, "shardwire <command>: ..."), as a bad
               // checkpoint is; not a usage error (CLI11's 105 and "Run with --help").
               fmt::print(stderr, "shardwire {}: --model-rules: {}\n", name, s.ToString());
               throw CLI::RuntimeError(1);
             }
             std::error_code ec;
             const auto abs = std::filesystem::absolute(path, ec);
             Files().push_back(ec ? path : abs.string());
           }
         },
         "a model rules file (YAML, docs/model_rules.md) describing a model family; wins over the built-in "
         "rules for the model types it names")
      ->type_name("FILE");
}

const std::vector<std::string>& ModelRulesFiles() { return Files(); }

}  // namespace shardwire::cli
