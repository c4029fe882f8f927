// Helpers shared by the tests: temporary directories, running the CLI, fixture JSON.
#pragma once

#include <gtest/gtest.h>
#include <hwy/targets.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "adapters/lora.h"
#include "formats/safetensors.h"
#include "model/llama.h"
#include "model/param_block.h"
#include "util/error.h"

namespace tinylora::test {

// Runs `body` once for every SIMD target compiled in and supported by this CPU.
template <typename F>
void ForEachTarget(F body) {
  for (int64_t target : hwy::SupportedAndGeneratedTargets()) {
    hwy::SetSupportedTargetsForTest(target);
    SCOPED_TRACE(hwy::TargetName(target));
    body();
  }
  hwy::SetSupportedTargetsForTest(0);
}

// A fresh directory under /tmp, removed (recursively) when destroyed.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

struct CliResult {
  int exit_code;
  std::string out, err;
};
// Runs the tinylora binary with these arguments, capturing stdout and stderr.
CliResult RunCli(const std::vector<std::string>& args);
// Runs argv[0] (found on PATH) with the rest as its arguments, capturing stdout and stderr.
CliResult RunCommand(const std::vector<std::string>& argv);

void WriteFile(const std::string& path, const std::string& bytes);
std::string FixturePath(const std::string& name);  // tests/fixtures/NAME
// Every line of `text` (of the file at `path`) as JSON; a line that is not JSON throws.
std::vector<nlohmann::json> ParseJsonLines(const std::string& text);
std::vector<nlohmann::json> ReadJsonLines(const std::string& path);

// A float64 tensor of a reference fixture (a test failure, and empty, when absent).
std::vector<double> ReadF64(const SafetensorsFile& f, const std::string& name);
// Every gradient of `params` against "grad.<name>" in the fixture: the largest error of each
// tensor within 1e-4 of its largest reference value (float32 drift is ~2e-6 of it).
// Every tensor of `a` equals the same-named tensor of `b`, bit for bit.
void ExpectSameValues(const ParamBlock& a, const ParamBlock& b);
// Every tensor's gradient against "grad.<name>" (F64, in file layout: pass the adapter whose
// tensors they are to convert a tree's leaf-major B).
void ExpectGradientsMatch(const ParamBlock& params, const SafetensorsFile& expected,
                          const Adapter* adapter = nullptr);

// n values drawn from N(0, scale²) by std::mt19937(seed).
std::vector<float> Random(size_t n, uint32_t seed, float scale = 1.0f);

// The message of the bad-input Error that f() throws (a test failure for another exit code), or
// "" when it throws none.
template <typename F>
std::string ErrorOf(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::kBadInput) << e.what();
    return e.what();
  }
  return "";
}

// The logits (T, V) of one sequence of ids, from position 0 in a fresh cache.
std::vector<float> Logits(LlamaModel& model, const std::vector<int>& ids);

// Trains a small SentencePiece model on generated text into `dir`/tokenizer.model.
std::string TrainTinyTokenizer(const std::string& dir, int vocab_size);

}  // namespace tinylora::test
