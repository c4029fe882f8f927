#include "server/http_server.h"

#include <httplib.h>
#include <sys/socket.h>

#include <cstdio>

#include "server/api_error.h"
#include "server/openai.h"
#include "util/error.h"
#include "util/file.h"

namespace tinylora {
namespace {

using httplib::Request;
using httplib::Response;
using nlohmann::json;

void SendError(Response& res, const ApiError& e) {
  res.status = e.status;
  if (e.retry_after > 0) res.set_header("Retry-After", std::to_string(e.retry_after));
  res.set_content(ErrorBody(e), "application/json");
}

void SendJson(Response& res, const json& j) {
  res.set_content(j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n",
                  "application/json");
}

// Equal strings, in time that does not depend on where they differ.
bool SameKey(const std::string& a, const std::string& b) {
  unsigned diff = a.size() != b.size();
  for (size_t i = 0; i < a.size() && i < b.size(); ++i)
    diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

// An adapter name a client may give: letters, digits, '.', '_' and '-', not starting with '.'
// (so never a path out of --adapter-dir).
bool IsAdapterName(const std::string& s) {
  if (s.empty() || s.size() > 128 || s[0] == '.') return false;
  for (char c : s) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-')
      return false;
  }
  return true;
}

json ModelJson(const ModelInfo& m) {
  json j = {{"id", m.name}, {"object", "model"}, {"owned_by", "tinylora"}, {"kind", m.kind}};
  if (m.tree_depth > 0) j["tree_depth"] = m.tree_depth;
  if (m.deleting) j["deleting"] = true;
  return j;
}

}  // namespace

HttpServer::HttpServer(Engine& engine, const HttpOptions& o)
    : engine_(engine), o_(o), svr_(std::make_unique<httplib::Server>()) {
  // Every handler of a running or queued request blocks on it: one thread each, and a few for
  // /health, /metrics and the refusals (cpp-httplib's default pool has 8).
  const size_t threads = static_cast<size_t>(o.threads > 0 ? o.threads : engine.max_requests() + 8);
  svr_->new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  svr_->set_payload_max_length(o.max_body_bytes);
  svr_->set_tcp_nodelay(true);
  // cpp-httplib listens with a backlog of 5, too few for a burst of clients connecting at
  // once (the connections over it were reset): the listening socket is kept to widen it.
  svr_->set_socket_options([this](int sock) {
    httplib::default_socket_options(sock);
    listen_fd_ = sock;
  });
  Routes();
}

HttpServer::~HttpServer() = default;

int HttpServer::Bind() {
  int port = o_.port;
  if (port == 0) {
    port = svr_->bind_to_any_port(o_.host);
    if (port < 0) FailRuntime("serve: cannot bind to " + o_.host);
  } else if (!svr_->bind_to_port(o_.host, port)) {
    FailRuntime("serve: cannot bind to " + o_.host + ":" + std::to_string(port));
  }
  if (listen_fd_ >= 0) ::listen(listen_fd_, SOMAXCONN);  // Linux: a second listen resizes
  return port;
}

void HttpServer::Listen() { svr_->listen_after_bind(); }

void HttpServer::Shutdown() {
  engine_.Drain();
  // The engine has finished every answer; wait for the streams to write their last chunks.
  for (int i = 0; i < 3000 && streaming_.load() > 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  svr_->stop();
}

void HttpServer::Routes() {
  using HR = httplib::Server::HandlerResponse;
  svr_->set_pre_routing_handler([this](const Request& req, Response& res) {
    if (o_.api_key.empty() || req.path == "/health") return HR::Unhandled;
    if (SameKey(req.get_header_value("Authorization"), "Bearer " + o_.api_key))
      return HR::Unhandled;
    engine_.metrics().Refused(401);
    SendError(res, ApiError(401, "a valid API key is needed (Authorization: Bearer KEY)"));
    return HR::Handled;
  });
  svr_->set_error_handler(httplib::Server::HandlerWithResponse([this](const Request& req,
                                                                      Response& res) {
    if (!res.body.empty()) return HR::Unhandled;  // a handler's own error
    if (res.status == 413) {
      engine_.metrics().Refused(413);
      SendError(res,
                ApiError(413, "the body is over " + std::to_string(o_.max_body_bytes) + " bytes"));
    } else if (res.status == 404) {
      SendError(res, ApiError(404, "no route " + req.method + " " + req.path));
    } else {
      SendError(res, ApiError(res.status, "HTTP status " + std::to_string(res.status)));
    }
    return HR::Handled;
  }));
  svr_->set_exception_handler([](const Request&, Response& res, std::exception_ptr ep) {
    std::string what = "internal error";
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    SendError(res, ApiError(500, what));
  });

  svr_->Get("/health", [](const Request&, Response& res) { SendJson(res, {{"status", "ok"}}); });
  svr_->Get("/metrics", [this](const Request&, Response& res) {
    res.set_content(engine_.MetricsText(), "text/plain; version=0.0.4");
  });
  svr_->Get("/v1/models", [this](const Request&, Response& res) {
    json data = json::array();
    for (const ModelInfo& m : engine_.Models()) data.push_back(ModelJson(m));
    SendJson(res, {{"object", "list"}, {"data", data}});
  });

  svr_->Post("/v1/adapters", [this](const Request& req, Response& res) {
    try {
      if (o_.adapter_dir.empty())
        throw ApiError(400, "the server was started without --adapter-dir: it loads no adapter");
      const json j = json::parse(req.body, nullptr, false);
      if (!j.is_object() || !j.contains("name") || !j["name"].is_string())
        throw ApiError(400, "the body is {\"name\": NAME}, an adapter directory in --adapter-dir",
                       "name");
      const std::string name = j["name"].get<std::string>();
      if (!IsAdapterName(name)) {
        throw ApiError(400, "name: '" + name + "' is not an adapter name (letters, digits, . _ -)",
                       "name");
      }
      const std::string dir = JoinPath(o_.adapter_dir, name);
      if (!IsDirectory(dir))
        throw ApiError(404, "no adapter '" + name + "' in --adapter-dir", "name");
      std::unique_ptr<Adapter> adapter;
      try {
        adapter = Adapter::Load(dir, engine_.config(), /*with_grads=*/false);
      } catch (const Error& e) {
        throw ApiError(400, std::string("adapter '") + name + "': " + e.what(), "name");
      }
      const int depth = adapter->config().tree_depth;
      engine_.AddAdapter(name, std::move(adapter));
      SendJson(res, ModelJson({name, depth > 0 ? "tree" : "lora", depth, false}));
    } catch (const ApiError& e) {
      SendError(res, e);
    }
  });
  svr_->Delete(R"(/v1/adapters/([^/]+))", [this](const Request& req, Response& res) {
    try {
      const std::string name = req.matches[1];
      engine_.RemoveAdapter(name);
      SendJson(res, {{"id", name}, {"object", "model"}, {"deleted", true}});
    } catch (const ApiError& e) {
      SendError(res, e);
    }
  });

  for (const bool chat : {false, true}) {
    svr_->Post(chat ? "/v1/chat/completions" : "/v1/completions", [this, chat](const Request& req,
                                                                               Response& res) {
      try {
        ApiRequest r = ParseCompletionRequest(req.body, chat, engine_, o_.chat);
        const AnswerHeader h = NewAnswerHeader(r);
        std::shared_ptr<Generation> g = engine_.Submit(std::move(r.gen));
        if (!r.stream) {
          std::string text;
          while (!g->Wait(&text, 1000)) {
          }
          res.set_content(AnswerBody(h, text, *g), "application/json");
          return;
        }
        ++streaming_;
        auto first = std::make_shared<bool>(true);
        res.set_header("Cache-Control", "no-cache");
        res.set_chunked_content_provider(
            "text/event-stream",
            [g, h, first](size_t, httplib::DataSink& sink) {
              std::string text;
              const bool done = g->Wait(&text, 250);
              if (!text.empty() || (*first && h.chat)) {
                const std::string ev = ChunkEvent(h, text, *first, nullptr);
                *first = false;
                if (!sink.write(ev.data(), ev.size())) return false;
              }
              if (done) {
                const std::string last = ChunkEvent(h, "", false, g.get()) + "data: [DONE]\n\n";
                if (!sink.write(last.data(), last.size())) return false;
                sink.done();
              }
              return true;
            },
            [this, g](bool) {
              g->Cancel();   // a no-op once finished; frees a disconnected client's
              --streaming_;  // sequence at the next step
            });
      } catch (const ApiError& e) {
        SendError(res, e);
      }
    });
  }
}

}  // namespace tinylora
