// Errors that reach the user: one line of text and the process exit code.
//   kBadInput (2): bad usage or bad input (a file, a flag, a token id).
//   kRuntime  (1): the input was fine but the run failed (I/O, out of memory).
#pragma once

#include <stdexcept>
#include <string>

namespace tinylora {

enum class ExitCode : int { kOk = 0, kRuntime = 1, kBadInput = 2 };

class Error : public std::runtime_error {
 public:
  Error(ExitCode code, const std::string& message, bool agreed = false)
      : std::runtime_error(message), code_(code), agreed_(agreed) {}
  ExitCode code() const { return code_; }
  // Raised on every rank of a distributed run at once (dist/comm.h Agree): rank 0 reports it.
  bool agreed() const { return agreed_; }

 private:
  ExitCode code_;
  bool agreed_;
};

// Bad input: exit 2.
[[noreturn]] inline void Fail(const std::string& message) {
  throw Error(ExitCode::kBadInput, message);
}
// Runtime failure: exit 1.
[[noreturn]] inline void FailRuntime(const std::string& message) {
  throw Error(ExitCode::kRuntime, message);
}

}  // namespace tinylora
