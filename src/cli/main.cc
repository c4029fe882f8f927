// tinylora: one binary, one subcommand per job (DESIGN.md §3).
// Exit codes: 0 ok, 1 runtime failure, 2 bad usage or input; errors are one `error:` line.
#include <cstdio>
#include <exception>
#include <iostream>
#include <new>

#include "cli/common.h"
#include "util/error.h"
#include "util/wait_policy.h"

int main(int argc, char** argv) {
  using namespace tinylora;
  UsePassiveWaitPolicy(argv);
  CLI::App app{"tinylora: tree-routed LoRA for small Llama-family models"};
  app.require_subcommand(1);
  app.fallthrough(false);
  AddQuickstartCommand(app);
  AddInitCommand(app);
  AddGenerateCommand(app);
  AddEvalCommand(app);
  AddInspectCommand(app);
  AddTokenizerCommand(app);
  AddTrainCommands(app);
  AddMergeCommand(app);
  AddDataCommand(app);
  AddQuantizeCommand(app);
  AddExportLoraCommand(app);
  AddServeCommand(app);
  std::string help_topic;
  CLI::App* help = app.add_subcommand("help", "show the help of a command");
  help->add_option("command", help_topic, "the command to document");
  help->callback([&]() {
    if (help_topic.empty()) {  // the command list (app.help() would describe `help` itself)
      std::cout << app.get_formatter()->make_help(&app, "tinylora", CLI::AppFormatMode::Normal);
      return;
    }
    CLI::App* sub = nullptr;
    try {
      sub = app.get_subcommand(help_topic);
    } catch (const CLI::OptionNotFound&) {
      Fail("unknown command '" + help_topic + "'");
    }
    std::cout << sub->help();
  });
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    std::cout << app.help();
    return 0;
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);
    std::string what = e.what();
    if (argc < 2) {
      what = "no command given; try 'tinylora help'";
    } else if (argv[1][0] != '-' &&
               app.get_subcommands([&](const CLI::App* sub) { return sub->get_name() == argv[1]; })
                   .empty()) {
      what = std::string("unknown command '") + argv[1] + "'; try 'tinylora help'";
    }
    std::fprintf(stderr, "error: %s\n", what.c_str());
    return 2;
  } catch (const Error& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "error: %s\n", e.what());
    return static_cast<int>(e.code());
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "error: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
