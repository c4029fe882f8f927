// Pieces shared by the subcommands: option groups, id lists, thread setup, timing.
#pragma once

#include <CLI/CLI.hpp>
#include <chrono>
#include <string>
#include <vector>

namespace tinylora {

// Whitespace-separated token ids; `what` names the flag or file in errors.
std::vector<int> ParseIds(const std::string& text, const std::string& what);

// Sets OpenMP and OpenBLAS threads (0 = all cores).
void SetThreads(int n);
void AddThreadsOption(CLI::App* cmd, int* threads);
// --bf16 of train, eval and generate: `what` products in BF16; the help names the kernel this
// CPU would use and whether it is faster than the F32 path.
void AddBf16Flag(CLI::App* cmd, bool* bf16, const std::string& what);
// --quantize FORMAT [--double-quant] [--quantize-head] (cli/commands.h QuantizeFlags).
struct QuantizeFlags;
void AddQuantizeFlags(CLI::App* cmd, QuantizeFlags* q);
// Bound checks whose errors say the bound ("--steps: must be > 0, got -5"), not CLI11's
// range to the largest double.
extern const CLI::Validator kPositive, kNonNegative;

// The mean of x (0 when empty) and its sample standard deviation (0 below two values): the
// spread over seeds in the quickstart's and the experiments' reports.
double Mean(const std::vector<double>& x);
double SampleStdDev(const std::vector<double>& x);

inline double Seconds() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

// Subcommands, one file each.
void AddInitCommand(CLI::App& app);
void AddQuantizeCommand(CLI::App& app);
void AddExportLoraCommand(CLI::App& app);
void AddGenerateCommand(CLI::App& app);
void AddEvalCommand(CLI::App& app);
void AddInspectCommand(CLI::App& app);
void AddTokenizerCommand(CLI::App& app);
void AddTrainCommands(CLI::App& app);
void AddMergeCommand(CLI::App& app);
void AddDataCommand(CLI::App& app);
void AddExperimentCommand(CLI::App& app);
void AddQuickstartCommand(CLI::App& app);
void AddServeCommand(CLI::App& app);

}  // namespace tinylora
