// The serving benchmark's two tools, run in their own processes beside the server:
//   bench_serve adapters --model DIR --out DIR --count N [--depth D] [--rank R] [--seed S]
//       N random adapters OUT/NAME_0..N-1 (lora_ or tree_) with non-zero B, in PEFT layout.
//   bench_serve load --port P --concurrency C --requests R [--prompt-tokens 128]
//       [--max-tokens 128] [--models a,b,...] [--llama-server] [--vocab V]
//       C clients, each streaming requests back to back until R are done; request i names
//       models[i % n] (tinylora: "model"; --llama-server: "lora": [{id, scale 1}], "-" = none).
//       Prints one JSON line: generated tokens/s over the run, and p50/p99 of the time to the
//       first streamed token and of the time per output token after it.
#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "adapters/lora.h"
#include "model/weights.h"
#include "util/file.h"

namespace {

using nlohmann::json;

std::string Arg(int argc, char** argv, const std::string& name, const std::string& fallback) {
  for (int i = 2; i + 1 < argc; ++i)
    if (argv[i] == name) return argv[i + 1];
  return fallback;
}
bool Flag(int argc, char** argv, const std::string& name) {
  for (int i = 2; i < argc; ++i)
    if (argv[i] == name) return true;
  return false;
}

int MakeAdapters(int argc, char** argv) {
  using namespace tinylora;
  const auto w = ModelWeights::Load(Arg(argc, argv, "--model", ""));
  const std::string out = Arg(argc, argv, "--out", "");
  const int count = std::stoi(Arg(argc, argv, "--count", "1"));
  AdapterConfig ac;
  ac.r = std::stoi(Arg(argc, argv, "--rank", "8"));
  ac.alpha = 2.0 * ac.r;
  ac.tree_depth = std::stoi(Arg(argc, argv, "--depth", "0"));
  ac.targets = ParseTargets(Arg(argc, argv, "--targets", "q_proj,v_proj"), "--targets");
  const uint32_t seed = static_cast<uint32_t>(std::stoul(Arg(argc, argv, "--seed", "1")));
  for (int k = 0; k < count; ++k) {
    auto a = Adapter::Create(w->config, ac, seed + k, /*with_grads=*/false);
    std::mt19937 rng(seed + k);
    std::normal_distribution<float> nd(0.0f, 0.02f);
    for (int i = 0; i < a->params().size(); ++i)
      if (a->params().name(i).find("lora_A") == std::string::npos)
        for (int64_t j = 0; j < a->params().numel(i); ++j) a->params().value(i)[j] = nd(rng);
    a->Save(JoinPath(out, (ac.tree_depth > 0 ? "tree_" : "lora_") + std::to_string(k)));
  }
  return 0;
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())));
  return v[i];
}

int Load(int argc, char** argv) {
  const int port = std::stoi(Arg(argc, argv, "--port", "8080"));
  const int concurrency = std::stoi(Arg(argc, argv, "--concurrency", "1"));
  const int requests = std::stoi(Arg(argc, argv, "--requests", std::to_string(concurrency)));
  const int prompt_tokens = std::stoi(Arg(argc, argv, "--prompt-tokens", "128"));
  const int max_tokens = std::stoi(Arg(argc, argv, "--max-tokens", "128"));
  const int vocab = std::stoi(Arg(argc, argv, "--vocab", "300"));
  const bool llama = Flag(argc, argv, "--llama-server");
  std::vector<std::string> models;
  std::stringstream ms(Arg(argc, argv, "--models", "-"));
  for (std::string m; std::getline(ms, m, ',');) models.push_back(m);

  using Clock = std::chrono::steady_clock;
  std::atomic<int> next{0}, errors{0};
  std::atomic<int64_t> tokens{0};
  std::mutex mu;
  std::vector<double> ttft, tpot;
  const auto t0 = Clock::now();
  auto worker = [&] {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(600);
    for (int i; (i = next++) < requests;) {
      std::mt19937 rng(static_cast<uint32_t>(i));
      json prompt = json::array();
      for (int k = 0; k < prompt_tokens; ++k)
        prompt.push_back(k == 0 ? 1
                                : 3 + static_cast<int>(rng() % static_cast<uint32_t>(vocab - 3)));
      json body = {{"prompt", prompt},
                   {"max_tokens", max_tokens},
                   {"temperature", 0},
                   {"stream", true},
                   {"ignore_eos", true}};
      const std::string& m = models[static_cast<size_t>(i) % models.size()];
      if (llama) {
        body["lora"] = json::array();
        if (m != "-") body["lora"].push_back({{"id", std::stoi(m)}, {"scale", 1.0}});
      } else if (m != "-") {
        body["model"] = m;
      }
      const auto start = Clock::now();
      Clock::time_point first, last;
      bool got_first = false;
      int completion = 0;
      std::string buf;
      httplib::Request req;
      req.method = "POST";
      req.path = "/v1/completions";
      req.body = body.dump();
      req.set_header("Content-Type", "application/json");
      req.content_receiver = [&](const char* d, size_t n, uint64_t, uint64_t) {
        buf.append(d, n);
        for (size_t end; (end = buf.find("\n\n")) != std::string::npos; buf.erase(0, end + 2)) {
          const std::string ev = buf.substr(0, end);
          if (ev.rfind("data: {", 0) != 0) continue;
          const json j = json::parse(ev.substr(6), nullptr, false);
          if (j.is_discarded()) continue;
          if (!got_first) first = Clock::now(), got_first = true;
          last = Clock::now();
          if (j.contains("usage") && j["usage"].is_object())
            completion = j["usage"].value("completion_tokens", completion);
        }
        return true;
      };
      auto res = c.send(req);
      if (!res || res->status != 200 || !got_first || completion == 0) {
        if (errors++ == 0) {
          std::fprintf(stderr, "bench_serve: request %d failed: %s\n", i,
                       !res ? httplib::to_string(res.error()).c_str()
                            : ("HTTP " + std::to_string(res->status) + " " + res->body).c_str());
        }
        continue;
      }
      std::lock_guard<std::mutex> lk(mu);
      tokens += completion;
      ttft.push_back(std::chrono::duration<double>(first - start).count());
      if (completion > 1)
        tpot.push_back(std::chrono::duration<double>(last - first).count() / (completion - 1));
    }
  };
  std::vector<std::thread> threads;
  for (int k = 0; k < concurrency; ++k) threads.emplace_back(worker);
  for (auto& t : threads) t.join();
  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  json out = {{"server", llama ? "llama-server" : "tinylora"},
              {"concurrency", concurrency},
              {"requests", requests},
              {"errors", errors.load()},
              {"models", Arg(argc, argv, "--models", "-")},
              {"generated_tokens", tokens.load()},
              {"seconds", seconds},
              {"tokens_per_s", static_cast<double>(tokens.load()) / seconds},
              {"ttft_p50_s", Percentile(ttft, 0.5)},
              {"ttft_p99_s", Percentile(ttft, 0.99)},
              {"tpot_p50_s", Percentile(tpot, 0.5)},
              {"tpot_p99_s", Percentile(tpot, 0.99)}};
  std::printf("%s\n", out.dump().c_str());
  return errors.load() == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string cmd = argc > 1 ? argv[1] : "";
  try {
    if (cmd == "adapters") return MakeAdapters(argc, argv);
    if (cmd == "load") return Load(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  }
  std::fprintf(stderr, "usage: bench_serve adapters|load ... (see bench/bench_serve.cc)\n");
  return 2;
}
