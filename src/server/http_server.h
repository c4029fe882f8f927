// The HTTP front of the engine (cpp-httplib): OpenAI's completion and chat endpoints, the
// model list, health, Prometheus metrics and adapter hot load / unload.
#pragma once

#include <atomic>
#include <memory>
#include <optional>
#include <string>

#include "server/chat_template.h"
#include "server/engine.h"

namespace httplib {
class Server;
}

namespace tinylora {

struct HttpOptions {
  std::string host = "127.0.0.1";
  int port = 8080;          // 0: any free port (Bind returns it)
  std::string api_key;      // when set: "Authorization: Bearer KEY" on every route but /health
  std::string adapter_dir;  // POST /v1/adapters loads only ADAPTER_DIR/NAME
  size_t max_body_bytes = 8u << 20;  // 413 above
  int threads = 0;  // handler threads (0: enough for every running and queued request)
  std::optional<ChatStyle> chat;  // none: /v1/chat/completions answers 400
};

class HttpServer {
 public:
  HttpServer(Engine& engine, const HttpOptions& o);
  ~HttpServer();
  int Bind();     // the port bound; Error (exit 1) when it cannot bind
  void Listen();  // serves until Shutdown
  // Refuses new requests (503), lets every running and queued one finish and its answer reach
  // the client, then stops Listen. Callable from any thread.
  void Shutdown();

 private:
  void Routes();
  Engine& engine_;
  HttpOptions o_;
  std::unique_ptr<httplib::Server> svr_;
  std::atomic<int> streaming_{0};  // answers still being written
  int listen_fd_ = -1;             // the listening socket (its backlog widened)
};

}  // namespace tinylora
