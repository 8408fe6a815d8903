#include "cli/describe_command.h"

#include <fstream>
#include <memory>

#include <fmt/format.h>

#include "cli/model_rules_option.h"
#include "shardwire/checkpoint.h"
#include "shardwire/model_config.h"
#include "shardwire/model_rules.h"

namespace shardwire::cli {
namespace {

struct Args {
  std::string checkpoint;
  std::string config;
  std::string write_rules;
  bool infer = false;
};

Status Run(const Args& a) {
  SW_ASSIGN_OR_RETURN(Checkpoint checkpoint, Checkpoint::Open(a.checkpoint));
  std::string config_path = a.config.empty() ? checkpoint.config_path() : a.config;
  if (config_path.empty()) {
    return NotFound(fmt::format("no config.json beside checkpoint {}; pass --config", checkpoint.path()));
  }
  SW_ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(config_path));
  if (!config.torch_dtype.has_value()) {
    if (auto embed = checkpoint.Get("model.embed_tokens.weight"); embed.ok()) config.torch_dtype = embed->spec.dtype;
  }
  const std::vector<TensorSpec> tensors = checkpoint.tensors();
  std::optional<ModelRules> rules;
  std::string origin;
  if (!a.infer) {
    SW_ASSIGN_OR_RETURN(rules, FindModelRules(config.model_type));
    if (rules.has_value()) origin = rules->file_name();
  }
  if (!rules.has_value()) {
    SW_ASSIGN_OR_RETURN(ModelRules inferred, InferModelRules(config, tensors, checkpoint.path()));
    rules = std::move(inferred);
    origin = "inferred from the checkpoint and its config";
  }
  SW_ASSIGN_OR_RETURN(ModelDescription d, rules->Describe(config));
  SW_RETURN_IF_ERROR(CheckCheckpointMatchesModel(d, tensors, checkpoint.path()));
  SW_RETURN_IF_ERROR(CheckRulesCoverCheckpoint(d, tensors, checkpoint.path()));

  fmt::print("{} ({}): {} tensors, {} fused parameters; rules: {}\n", checkpoint.path(), config.model_type,
             d.tensors.size(), d.fused.size(), origin);
  fmt::print("{:<64} {:<8} {:<18} {:<10} {:>5} {:>6}  {}\n", "tensor", "dtype", "shape", "role", "layer", "expert",
             "engine");
  for (const auto& t : d.tensors) {
    std::string engine = t.quantizable ? "fp8-block-quantisable" : "";
    if (t.engine_dtype.has_value())
      engine += fmt::format("{}{}", engine.empty() ? "" : ", ", DTypeName(*t.engine_dtype));
    if (t.shared_expert) engine += engine.empty() ? "shared expert" : ", shared expert";
    fmt::print("{:<64} {:<8} {:<18} {:<10} {:>5} {:>6}  {}\n", t.spec.name, DTypeName(t.spec.dtype),
               fmt::format("[{}]", fmt::join(t.spec.shape, ", ")), ParallelRoleName(t.role), t.layer, t.expert, engine);
  }
  for (const auto& f : d.fused) fmt::print("fused {} = [{}]\n", f.name, fmt::join(f.parts, "; "));
  if (!a.write_rules.empty()) {
    std::ofstream out(a.write_rules, std::ios::binary | std::ios::trunc);
    out << rules->text();
    out.close();
    if (!out) return IoError(fmt::format("cannot write {}", a.write_rules));
    fmt::print("rules written to {}\n", a.write_rules);
  }
  return Status::Ok();
}

}  // namespace

void AddDescribeCommand(CLI::App& app, int* exit_code) {
  auto a = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand("describe",
                                     "print a checkpoint's tensors with their parallel roles; infers a rules file when "
                                     "its family has none");
  cmd->add_option("--checkpoint", a->checkpoint, "safetensors file, index or checkpoint directory")->required();
  cmd->add_option("--config", a->config, "HF config.json (default: the one beside the checkpoint)");
  cmd->add_option("--write-rules", a->write_rules, "write the rules file used (or inferred) here");
  cmd->add_flag("--infer", a->infer, "infer the rules even when the family has a rules file");
  AddModelRulesOption(cmd);
  cmd->callback([a, exit_code] {
    Status s = Run(*a);
    if (!s.ok()) {
      fmt::print(stderr, "shardwire describe: {}\n", s.ToString());
      *exit_code = 1;
    }
  });
}

}  // namespace shardwire::cli
