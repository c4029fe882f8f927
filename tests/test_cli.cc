// The binary as a user runs it: init → inspect → generate → eval, and bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "test_util.h"

namespace tinylora {
namespace {

using test::RunCli;

int CountErrorLines(const std::string& err) {
  int n = 0;
  size_t pos = 0;
  while ((pos = err.find("error:", pos)) != std::string::npos) {
    if (pos == 0 || err[pos - 1] == '\n') ++n;
    pos += 6;
  }
  return n;
}

// Exit 2 and exactly one `error:` line containing `needle`.
void ExpectBadInput(const std::vector<std::string>& args, const std::string& needle) {
  test::CliResult r = RunCli(args);
  std::string cmd;
  for (const auto& a : args) cmd += a + " ";
  EXPECT_EQ(r.exit_code, 2) << cmd << "\n" << r.err;
  EXPECT_EQ(CountErrorLines(r.err), 1) << cmd << "\n" << r.err;
  EXPECT_NE(r.err.find(needle), std::string::npos) << cmd << "\nexpected '" << needle << "' in: " << r.err;
}

}  // namespace
}  // namespace tinylora
