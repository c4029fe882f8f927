// tinylora: one binary, one subcommand per job (DESIGN.md §3).
// Exit codes: 0 ok, 1 runtime failure, 2 bad usage or input; errors are one `error:` line.
#include <cstdio>
#include <exception>
#include <iostream>
#include <new>

#include "cli/common.h"
#include "dist/comm.h"
#include "util/error.h"
#include "util/wait_policy.h"

namespace {

using namespace tinylora;

// An error: one line. Several ranks: one that all met together (Comm::Agree) is rank 0's to
// report and all exit with its code; one a rank met alone ends the whole job (MPI_Abort).
int Report(const char* what, int code, bool agreed) {
  Comm& comm = WorldComm();
  if (comm.size() > 1 && !agreed) {
    std::fprintf(ErrorStream(), "error: rank %d: %s\n", comm.rank(), what);
    AbortDistributed(code);
  }
  std::fprintf(stderr, "error: %s\n", what);
  return code;
}

int Run(int argc, char** argv) {
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
  AddExperimentCommand(app);
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
    return Report(what.c_str(), 2, /*agreed=*/true);  // every rank parses the same line
  } catch (const Error& e) {
    std::fflush(stdout);
    return Report(e.what(), static_cast<int>(e.code()), e.agreed());
  } catch (const std::bad_alloc&) {
    return Report("out of memory", 1, false);
  } catch (const std::exception& e) {
    return Report(e.what(), 1, false);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // generate and serve spend their time in decode: a short spin (util/wait_policy.h).
  const std::string command = argc > 1 ? argv[1] : "";
  tinylora::UseWaitPolicy(command == "generate" || command == "serve"
                              ? tinylora::WaitPolicy::kShortSpin
                              : tinylora::WaitPolicy::kPassive,
                          argv);
  tinylora::InitDistributed(&argc, &argv);
  const int code = Run(argc, argv);
  tinylora::FinalizeDistributed();
  return code;
}
