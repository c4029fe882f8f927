// tinylora tokenizer train: a SentencePiece BPE tokenizer with Llama's conventions
// (byte fallback, split digits, identity normalisation, <unk> 0, <s> 1, </s> 2).
#include <sentencepiece_trainer.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>
#include <unordered_map>

#include "cli/commands.h"
#include "cli/common.h"
#include "model/tokenizer.h"
#include "util/error.h"
#include "util/file.h"

namespace tinylora {

namespace {

// Regular files under each path (a file, or a folder walked recursively), sorted.
std::vector<std::string> ListFiles(const std::vector<std::string>& paths) {
  std::vector<std::string> files;
  for (const std::string& p : paths) {
    if (FileExists(p)) {
      files.push_back(p);
    } else if (IsDirectory(p)) {
      std::vector<std::string> found;
      for (const auto& e : std::filesystem::recursive_directory_iterator(p)) {
        if (e.is_regular_file()) found.push_back(e.path().string());
      }
      if (found.empty()) Fail("--data: " + p + " holds no files");
      std::sort(found.begin(), found.end());
      files.insert(files.end(), found.begin(), found.end());
    } else {
      Fail("--data: " + p + ": no such file or directory");
    }
  }
  return files;
}

}  // namespace

TokenizerTrainResult RunTokenizerTrain(const TokenizerTrainOptions& o) {
  SetThreads(o.threads);
  const std::vector<std::string> files = ListFiles(o.data);
  std::string input;
  for (const std::string& f : files) {
    if (f.find(',') != std::string::npos)
      Fail("--data: file names with ',' are not supported: " + f);
    input += (input.empty() ? "" : ",") + f;
  }
  MakeDirectories(o.out);
  const std::string prefix = JoinPath(o.out, "tokenizer.tmp." + std::to_string(::getpid()));
  const int threads = o.threads > 0 ? o.threads : static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN));
  // Key-value form, so paths with spaces survive.
  const std::unordered_map<std::string, std::string> args = {
      {"input", input},
      {"model_prefix", prefix},
      {"vocab_size", std::to_string(o.vocab_size)},
      {"model_type", "bpe"},
      {"byte_fallback", "true"},
      {"split_digits", "true"},
      {"character_coverage", "0.9995"},
      {"normalization_rule_name", "identity"},
      {"remove_extra_whitespaces", "false"},
      {"allow_whitespace_only_pieces", "true"},
      {"unk_id", "0"},
      {"bos_id", "1"},
      {"eos_id", "2"},
      {"pad_id", "-1"},
      {"input_sentence_size", "2000000"},
      {"shuffle_input_sentence", "true"},
      {"minloglevel", "2"},
      {"num_threads", std::to_string(std::max(1, threads))},
  };
  const auto status = sentencepiece::SentencePieceTrainer::Train(args);
  std::remove((prefix + ".vocab").c_str());
  if (!status.ok()) {
    std::remove((prefix + ".model").c_str());
    Fail("tokenizer training failed: " + std::string(status.message()));
  }
  const std::string model = JoinPath(o.out, "tokenizer.model");
  const std::string bytes = ReadTextFile(prefix + ".model");
  std::remove((prefix + ".model").c_str());
  WriteFileAtomic(model, bytes);
  Tokenizer tok(model);  // check it loads
  std::cerr << "wrote " << model << ": " << tok.vocab_size() << " pieces from " << files.size()
            << " file(s)\n";
  return {model, tok.vocab_size(), files.size()};
}

void AddTokenizerCommand(CLI::App& app) {
  CLI::App* tok = app.add_subcommand("tokenizer", "tokenizer tools");
  tok->require_subcommand(1);
  auto o = std::make_shared<TokenizerTrainOptions>();
  CLI::App* cmd = tok->add_subcommand("train", "train a SentencePiece BPE tokenizer on text");
  cmd->add_option("--data", o->data, "text files or folders")->required();
  cmd->add_option("--out", o->out, "directory to write tokenizer.model into")->required();
  cmd->add_option("--vocab-size", o->vocab_size, "number of pieces")
      ->check(CLI::Range(300, 1 << 20));
  AddThreadsOption(cmd, &o->threads);
  cmd->callback([o]() {
    const TokenizerTrainResult r = RunTokenizerTrain(*o);
    std::cout << nlohmann::json{{"out", r.model_path}, {"vocab", r.vocab}}.dump() << "\n";
  });
}

}  // namespace tinylora
