#include "test_util.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sentencepiece_trainer.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <stdexcept>

namespace tinylora::test {

TempDir::TempDir() {
  char tmpl[] = "/tmp/tinylora_test_XXXXXX";
  if (::mkdtemp(tmpl) == nullptr) throw std::runtime_error("mkdtemp failed");
  path_ = tmpl;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

namespace {
std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}
}  // namespace

CliResult RunCli(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {TINYLORA_BINARY};
  argv.insert(argv.end(), args.begin(), args.end());
  return RunCommand(argv);
}

CliResult RunCommand(const std::vector<std::string>& args) {
  TempDir io;
  const std::string out_path = io / "stdout", err_path = io / "stderr";
  pid_t pid = ::fork();
  if (pid == 0) {
    int out = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int err = ::open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(out, 1);
    ::dup2(err, 2);
    std::vector<char*> argv;
    std::vector<std::string> copy = args;
    for (auto& a : copy) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execvp(argv[0], argv.data());
    ::_exit(127);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  CliResult r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = Slurp(out_path);
  r.err = Slurp(err_path);
  return r;
}

void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out << bytes;
}

std::vector<double> ReadF64(const SafetensorsFile& f, const std::string& name) {
  const TensorInfo* t = f.Find(name);
  EXPECT_NE(t, nullptr) << name;
  if (t == nullptr) return {};
  EXPECT_EQ(t->dtype, DType::kF64) << name;
  std::vector<double> v(static_cast<size_t>(t->numel()));
  std::memcpy(v.data(), f.Data(*t), t->nbytes);
  return v;
}

void ExpectSameValues(const ParamBlock& a, const ParamBlock& b) {
  ASSERT_EQ(a.size(), b.size());
  for (int i = 0; i < a.size(); ++i) {
    ASSERT_EQ(a.name(i), b.name(i));
    ASSERT_EQ(a.numel(i), b.numel(i)) << a.name(i);
    EXPECT_EQ(std::memcmp(a.value(i), b.value(i), sizeof(float) * static_cast<size_t>(a.numel(i))),
              0)
        << a.name(i);
  }
}

void ExpectGradientsMatch(const ParamBlock& params, const SafetensorsFile& expected,
                          const Adapter* adapter) {
  for (int i = 0; i < params.size(); ++i) {
    const std::vector<double> ref = ReadF64(expected, "grad." + params.name(i));
    ASSERT_EQ(static_cast<int64_t>(ref.size()), params.numel(i)) << params.name(i);
    std::vector<float> grad = params.DenseGrad(i);
    if (adapter != nullptr) grad = adapter->ToFileLayout(i, grad.data());
    double max_ref = 0, max_err = 0;
    for (size_t k = 0; k < ref.size(); ++k) {
      max_ref = std::max(max_ref, std::fabs(ref[k]));
      max_err = std::max(max_err, std::fabs(ref[k] - grad[k]));
    }
    EXPECT_LE(max_err, 1e-4 * max_ref + 1e-9) << params.name(i) << ": max |g| " << max_ref;
  }
}

std::vector<nlohmann::json> ParseJsonLines(const std::string& text) {
  std::vector<nlohmann::json> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) out.push_back(nlohmann::json::parse(line));
  return out;
}

std::vector<nlohmann::json> ReadJsonLines(const std::string& path) {
  return ParseJsonLines(ReadTextFile(path));
}

std::string FixturePath(const std::string& name) {
  return std::string(TINYLORA_FIXTURES) + "/" + name;
}

std::string TrainTinyTokenizer(const std::string& dir, int vocab_size) {
  const std::string text_path = dir + "/corpus.txt";
  std::ostringstream text;
  const char* words[] = {"the",    "quick", "brown",   "fox",   "jumps", "over", "lazy",
                         "dog",    "über",  "café",    "naïve", "model", "tree", "leaf",
                         "router", "token", "adapter", "small", "fast"};
  unsigned state = 12345;
  for (int line = 0; line < 400; ++line) {
    for (int w = 0; w < 12; ++w) {
      state = state * 1103515245u + 12345u;
      text << words[(state >> 16) % (sizeof(words) / sizeof(words[0]))] << (w == 11 ? "" : " ");
    }
    text << "\n";
  }
  WriteFile(text_path, text.str());
  const std::string prefix = dir + "/tokenizer";
  const auto status = sentencepiece::SentencePieceTrainer::Train(
      "--input=" + text_path + " --model_prefix=" + prefix +
      " --vocab_size=" + std::to_string(vocab_size) +
      " --model_type=bpe --byte_fallback=true --character_coverage=1.0 --minloglevel=2"
      " --unk_id=0 --bos_id=1 --eos_id=2 --pad_id=-1");
  if (!status.ok()) throw std::runtime_error("tokenizer training failed: " + status.ToString());
  return prefix + ".model";
}

std::vector<float> Random(size_t n, uint32_t seed, float scale) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

std::vector<float> Logits(LlamaModel& model, const std::vector<int>& ids) {
  KvCache cache(model.config(), 1, static_cast<int>(ids.size()));
  Batch b;
  for (size_t i = 0; i < ids.size(); ++i) b.Add(ids[i], 0, static_cast<int>(i), true);
  std::vector<float> logits;
  model.Forward(b, cache, &logits);
  return logits;
}

}  // namespace tinylora::test
