// tinylora serve: an OpenAI-compatible HTTP server over one base and its adapters, batching
// requests for different adapters in one forward (server/engine.h).
#include <signal.h>

#include <cstdio>
#include <memory>
#include <thread>

#include "cli/commands.h"
#include "cli/common.h"
#include "server/chat_template.h"
#include "server/engine.h"
#include "server/http_server.h"
#include "util/error.h"
#include "util/file.h"

namespace tinylora {
namespace {

struct ServeOptions {
  std::string model, adapter_dir, chat_template;
  std::vector<std::string> adapters;  // NAME=DIR
  HttpOptions http;
  EngineOptions engine;
  bool bf16 = false;
  QuantizeFlags quantize;
  int threads = 0;
};

std::string LastComponent(std::string path) {
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

void RunServe(ServeOptions o) {
  SetThreads(o.threads);
  // SIGTERM and SIGINT are taken by a thread of their own (blocked here, so in every thread
  // started after); a client gone mid-write is an error return, not SIGPIPE.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  if (!o.adapter_dir.empty() && !IsDirectory(o.adapter_dir))
    Fail("--adapter-dir: " + o.adapter_dir + " is not a directory");
  auto weights = ModelWeights::Load(o.model, o.quantize.Get(o.bf16));
  if (!o.chat_template.empty()) {
    o.http.chat = ChatStyleNamed(o.chat_template);
  } else if (!weights->chat_template.empty()) {
    o.http.chat = RecogniseChatTemplate(weights->chat_template);
  }
  std::vector<std::pair<std::string, std::unique_ptr<Adapter>>> adapters;
  for (const std::string& spec : o.adapters) {
    const size_t eq = spec.find('=');
    if (eq == 0 || eq == std::string::npos || eq + 1 == spec.size())
      Fail("--adapter: '" + spec + "' is not NAME=DIR");
    adapters.emplace_back(spec.substr(0, eq),
                          Adapter::Load(spec.substr(eq + 1), weights->config, false));
  }
  o.engine.bf16 = o.bf16;
  Engine engine(std::move(weights), LastComponent(o.model), o.engine);
  for (auto& [name, a] : adapters) {
    try {
      engine.AddAdapter(name, std::move(a));
    } catch (const std::exception& e) {
      Fail(std::string("--adapter: ") + e.what());
    }
  }
  o.http.adapter_dir = o.adapter_dir;
  HttpServer server(engine, o.http);
  const int port = server.Bind();
  std::thread waiter([&] {
    int sig = 0;
    sigwait(&stop_signals, &sig);
    std::fprintf(stderr, "serve: %s: finishing the running requests\n",
                 sig == SIGTERM ? "SIGTERM" : "SIGINT");
    server.Shutdown();
  });
  std::fprintf(stderr,
               "serve: %s on http://%s:%d (ctx %d, %d sequences, %zu adapters, chat template "
               "%s)\n",
               engine.base_name().c_str(), o.http.host.c_str(), port, engine.ctx(),
               o.engine.max_sequences, adapters.size(),
               o.http.chat ? ChatStyleName(*o.http.chat) : "none");
  server.Listen();
  waiter.join();
  std::fprintf(stderr, "serve: stopped\n");
}

}  // namespace

void AddServeCommand(CLI::App& app) {
  auto o = std::make_shared<ServeOptions>();
  CLI::App* cmd = app.add_subcommand(
      "serve", "an OpenAI-compatible server batching requests for different adapters");
  cmd->add_option("--model", o->model, "model directory, GGUF file or bitsandbytes 4-bit directory")
      ->required();
  cmd->add_option("--adapter", o->adapters, "NAME=DIR: an adapter to serve as model NAME");
  cmd->add_option("--adapter-dir", o->adapter_dir,
                  "the directory POST /v1/adapters loads adapters from, by name");
  cmd->add_option("--host", o->http.host, "address to listen on");
  cmd->add_option("--port", o->http.port, "port (0: any free one)")->check(CLI::Range(0, 65535));
  cmd->add_option("--max-batch-tokens", o->engine.max_batch_tokens,
                  "tokens per forward: every decoding sequence's, then prompt chunks")
      ->check(kPositive);
  cmd->add_option("--max-sequences", o->engine.max_sequences, "sequences decoded together")
      ->check(kPositive);
  cmd->add_option("--max-queue", o->engine.max_queue,
                  "requests waiting before 429 (default 4 × --max-sequences)")
      ->check(kPositive);
  cmd->add_option("--ctx", o->engine.ctx, "positions of one sequence (default the model's, ≤ 4096)")
      ->check(kPositive);
  cmd->add_option("--kv-budget", o->engine.kv_budget,
                  "KV positions over all sequences (default --max-sequences × --ctx)")
      ->check(kPositive);
  cmd->add_option("--api-key", o->http.api_key, "require Authorization: Bearer KEY");
  cmd->add_option("--chat-template", o->chat_template,
                  "zephyr, chatml or llama2 (default: recognised from the model's template)");
  AddBf16Flag(cmd, &o->bf16,
              "every product in the BF16 GEMM (faster prefill; outputs then depend on the batch),");
  AddQuantizeFlags(cmd, &o->quantize);
  AddThreadsOption(cmd, &o->threads);
  cmd->callback([o]() { RunServe(*o); });
}

}  // namespace tinylora
