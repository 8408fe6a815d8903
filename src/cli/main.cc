// The `shardwire` command-line tool.
#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include <cstdio>
#include <new>

#include "cli/convert_command.h"
#include "cli/describe_command.h"
#include "cli/generate_command.h"
#include "cli/info_command.h"
#include "cli/p2p_commands.h"
#include "cli/p2p_load_demo.h"
#include "cli/plan_command.h"
#include "cli/rl_sync_demo.h"
#include "cli/serve_command.h"
#include "shardwire/json_log.h"

int main(int argc, char** argv) {
  // Log lines go to stderr: stdout is the commands' output (`plan --json`, `serve`'s "listening on"
  // line, the demo workers' results), which a warning there corrupted. spdlog's default logger
  // writes to stdout.
  shardwire::LogToStderr();
  CLI::App app{"shardwire: move large-model weights between processes, resharding on the way"};
  app.require_subcommand(1);
  int exit_code = 0;
  bool verbose = false;
  app.add_flag("-v,--verbose", verbose, "log transport and rendezvous events");
  std::string log_format = "text";
  app.add_option("--log-format", log_format, "log lines as plain text or as one JSON object per line")
      ->check(CLI::IsMember({"text", "json"}))
      ->capture_default_str();
  app.parse_complete_callback([&] {
    spdlog::set_level(verbose ? spdlog::level::debug : spdlog::level::warn);
    if (log_format == "json") shardwire::UseJsonLogFormat();
  });
  CLI::App* demo = app.add_subcommand("demo", "end-to-end demonstrations");
  demo->require_subcommand(1);
  shardwire::cli::AddRlSyncCommand(*demo, &exit_code);
  shardwire::cli::AddP2pLoadCommand(*demo, &exit_code);
  shardwire::cli::AddRlSyncWorkerCommand(app, &exit_code);
  shardwire::cli::AddConvertCommand(app, &exit_code);
  shardwire::cli::AddGenerateCommand(app, &exit_code);
  shardwire::cli::AddInfoCommand(app, &exit_code);
  shardwire::cli::AddPlanCommand(app, &exit_code);
  shardwire::cli::AddServeCommand(app, &exit_code);
  shardwire::cli::AddSeedCommand(app, &exit_code);
  shardwire::cli::AddLoadCommand(app, &exit_code);
  shardwire::cli::AddDescribeCommand(app, &exit_code);
  // A command runs inside parse. Running out of memory on this thread (a plan of more boxes
  // than the machine holds, within the documented limits) is an error message and exit code 1,
  // not an abort; other threads' allocations still terminate the process.
  try {
    CLI11_PARSE(app, argc, argv);
  } catch (const std::bad_alloc&) {
    std::fputs("shardwire: resource exhausted: out of memory (a smaller input, or a machine with more memory)\n",
               stderr);
    return 1;
  }
  return exit_code;
}
