#include "cli/generate_command.h"

#include <fmt/format.h>

#include "cli/model_rules_option.h"
#include "cli/option_checks.h"

#include "cli/demo_checkpoint.h"

namespace shardwire::cli {

void AddGenerateCommand(CLI::App& app, int* exit_code) {
  struct Args {
    std::string config;
    int layers = 0;
    std::string out_dir = ".";
  };
  auto a = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand("generate",
                                     "write a safetensors checkpoint (+ config.json) with the shapes "
                                     "of a Hugging Face config, filled with deterministic values");
  cmd->add_option("--config", a->config, "HF config.json, or 'tinyllama-1.1b' (built in)")->required();
  cmd->add_option("--layers", a->layers, "decoder layers (0 = as in the config)")->check(NonNegativeNumber());
  AddModelRulesOption(cmd);
  cmd->add_option("--out", a->out_dir, "parent directory of the generated checkpoint")->capture_default_str();
  cmd->callback([a, exit_code] {
    auto out = cli::GenerateDemoCheckpoint(a->config, a->layers, a->out_dir);
    if (!out.ok()) {
      fmt::print(stderr, "shardwire generate: {}\n", out.status().ToString());
      *exit_code = 1;
      return;
    }
    fmt::print("{}\n", out->checkpoint);
  });
}

}  // namespace shardwire::cli
