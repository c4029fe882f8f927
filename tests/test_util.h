// Helpers shared by the tests: temporary directories, running the CLI, fixture JSON.
#pragma once

#include <string>
#include <vector>

namespace tinylora::test {

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

void WriteFile(const std::string& path, const std::string& bytes);
std::string FixturePath(const std::string& name);  // tests/fixtures/NAME

// Trains a small SentencePiece model on generated text into `dir`/tokenizer.model.
std::string TrainTinyTokenizer(const std::string& dir, int vocab_size);

}  // namespace tinylora::test
