#include "server/openai.h"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <limits>
#include <random>

namespace tinylora {
namespace {

using nlohmann::json;

// Generated text may hold invalid UTF-8 (a byte-fallback sequence the model never finished).
std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

ApiError Bad(const std::string& param, const std::string& message) {
  return ApiError(400, param + ": " + message, param);
}

// The field, or null when absent (OpenAI's clients send null for "not given").
const json& Field(const json& body, const char* name) {
  static const json kNull;
  auto it = body.find(name);
  return it == body.end() ? kNull : *it;
}

double Number(const json& body, const char* name, double lo, double hi, double fallback) {
  const json& v = Field(body, name);
  if (v.is_null()) return fallback;
  if (!v.is_number()) throw Bad(name, "must be a number");
  const double x = v.get<double>();
  if (!(x >= lo && x <= hi)) {
    throw Bad(name,
              "must be in [" + json(lo).dump() + ", " + json(hi).dump() + "], got " + v.dump());
  }
  return x;
}

int64_t Integer(const json& body, const char* name, int64_t lo, int64_t hi, int64_t fallback) {
  const json& v = Field(body, name);
  if (v.is_null()) return fallback;
  if (!v.is_number_integer()) throw Bad(name, "must be an integer");
  if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(hi))
    throw Bad(name, "must be at most " + std::to_string(hi) + ", got " + v.dump());
  const int64_t x = v.get<int64_t>();
  if (x < lo || x > hi) {
    throw Bad(name, "must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got " +
                        v.dump());
  }
  return x;
}

std::vector<int> PromptIds(const json& v, const Tokenizer* tok) {
  if (v.is_null()) throw Bad("prompt", "is required");
  if (v.is_array() && v.size() == 1 && v[0].is_string()) return PromptIds(v[0], tok);
  if (v.is_string()) {
    if (v.get<std::string>().empty()) throw Bad("prompt", "is empty");
    if (!tok) throw Bad("prompt", "the model has no tokenizer: give the prompt as token ids");
    return tok->Encode(v.get<std::string>(), /*add_bos=*/true);
  }
  if (v.is_array() && !v.empty()) {
    std::vector<int> ids;
    for (const json& e : v) {
      if (!e.is_number_integer() || e.get<int64_t>() < 0 ||
          e.get<int64_t>() > std::numeric_limits<int>::max())
        throw Bad("prompt", "a token id list holds only non-negative integers");
      ids.push_back(e.get<int>());
    }
    return ids;
  }
  throw Bad("prompt", "must be a non-empty string or array of token ids (one prompt: n = 1)");
}

std::vector<ChatMessage> Messages(const json& v) {
  if (!v.is_array() || v.empty()) throw Bad("messages", "must be a non-empty array");
  std::vector<ChatMessage> out;
  for (const json& m : v) {
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string())
      throw Bad("messages", "each message is an object with a string \"role\"");
    ChatMessage msg{m["role"].get<std::string>(), ""};
    const json& c = Field(m, "content");
    if (c.is_string()) {
      msg.content = c.get<std::string>();
    } else if (c.is_array()) {  // content parts: only text ones
      for (const json& part : c) {
        if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") ||
            !part["text"].is_string())
          throw Bad("messages", "only text content parts are supported");
        msg.content += part["text"].get<std::string>();
      }
    } else if (!c.is_null()) {
      throw Bad("messages", "a message's content is a string or an array of text parts");
    }
    out.push_back(std::move(msg));
  }
  return out;
}

std::vector<std::string> StopStrings(const json& v) {
  if (v.is_null()) return {};
  std::vector<std::string> out;
  if (v.is_string()) {
    out.push_back(v.get<std::string>());
  } else if (v.is_array() && v.size() <= 4) {
    for (const json& s : v) {
      if (!s.is_string()) throw Bad("stop", "must be a string or an array of up to 4 strings");
      out.push_back(s.get<std::string>());
    }
  } else {
    throw Bad("stop", "must be a string or an array of up to 4 strings");
  }
  for (const std::string& s : out)
    if (s.empty()) throw Bad("stop", "a stop string is empty");
  return out;
}

}  // namespace

ApiRequest ParseCompletionRequest(const std::string& body, bool chat, const Engine& engine,
                                  std::optional<ChatStyle> style) {
  const json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) throw ApiError(400, "the body is not valid JSON");
  if (!j.is_object()) throw ApiError(400, "the body must be a JSON object");
  ApiRequest r;
  r.chat = chat;
  const json& model = Field(j, "model");
  if (!model.is_null() && !model.is_string()) throw Bad("model", "must be a string");
  r.gen.model = model.is_string() ? model.get<std::string>() : "";
  r.model = r.gen.model.empty() ? engine.base_name() : r.gen.model;
  const json& stream = Field(j, "stream");
  if (!stream.is_null() && !stream.is_boolean()) throw Bad("stream", "must be true or false");
  r.stream = stream.is_boolean() && stream.get<bool>();
  if (Integer(j, "n", 1, 1, 1) != 1) throw Bad("n", "only 1 is supported");
  const json& ignore_eos = Field(j, "ignore_eos");
  if (!ignore_eos.is_null() && !ignore_eos.is_boolean())
    throw Bad("ignore_eos", "must be true or false");
  r.gen.ignore_eos = ignore_eos.is_boolean() && ignore_eos.get<bool>();

  const int ctx = engine.ctx();
  if (chat) {
    if (!style) {
      throw ApiError(400,
                     "the model has no chat template; start the server with --chat-template "
                     "zephyr|chatml|llama2, or use /v1/completions");
    }
    if (!engine.tokenizer()) throw ApiError(400, "the model has no tokenizer: chat needs one");
    r.gen.prompt = RenderChat(*style, Messages(Field(j, "messages")), *engine.tokenizer());
    const json& mct = Field(j, "max_completion_tokens");
    r.gen.max_tokens = static_cast<int>(
        Integer(j, mct.is_null() ? "max_tokens" : "max_completion_tokens", 1, ctx, ctx));
    r.gen.stop = ChatStopStrings(*style);
  } else {
    r.gen.prompt = PromptIds(Field(j, "prompt"), engine.tokenizer());
    r.gen.max_tokens = static_cast<int>(Integer(j, "max_tokens", 1, ctx, 16));
  }
  for (const std::string& s : StopStrings(Field(j, "stop"))) r.gen.stop.push_back(s);

  SamplerOptions& so = r.gen.sampler;
  so.temperature = static_cast<float>(Number(j, "temperature", 0, 2, 1));
  so.greedy = so.temperature == 0;
  if (so.greedy) so.temperature = 1;
  so.top_p = static_cast<float>(Number(j, "top_p", 0, 1, 1));
  if (so.top_p == 0) throw Bad("top_p", "must be > 0");
  so.top_k = static_cast<int>(Integer(j, "top_k", 0, 1 << 30, 0));
  static std::atomic<uint64_t> fresh{std::random_device{}()};
  const json& seed = Field(j, "seed");
  so.seed = seed.is_null()
                ? fresh.fetch_add(0x9E3779B97F4A7C15ull)
                : static_cast<uint64_t>(Integer(j, "seed", std::numeric_limits<int64_t>::min(),
                                                std::numeric_limits<int64_t>::max(), 0));
  return r;
}

std::string ErrorBody(const ApiError& e) {
  const char* type = e.status == 401   ? "authentication_error"
                     : e.status == 404 ? "not_found_error"
                     : e.status == 429 ? "rate_limit_error"
                     : e.status >= 500 ? "server_error"
                                       : "invalid_request_error";
  json err = {{"message", e.what()},
              {"type", type},
              {"param", e.param.empty() ? json(nullptr) : json(e.param)},
              {"code", e.status}};
  return Dump(json{{"error", err}}) + "\n";
}

AnswerHeader NewAnswerHeader(const ApiRequest& r) {
  static std::atomic<uint64_t> next{1};
  char id[40];
  std::snprintf(id, sizeof id, "%s-%016llx", r.chat ? "chatcmpl" : "cmpl",
                static_cast<unsigned long long>(next++));
  AnswerHeader h;
  h.id = id;
  h.model = r.model;
  h.chat = r.chat;
  h.created = std::chrono::duration_cast<std::chrono::seconds>(
                  std::chrono::system_clock::now().time_since_epoch())
                  .count();
  return h;
}

json Usage(const Generation& g) {
  return {{"prompt_tokens", g.prompt_tokens},
          {"completion_tokens", g.completion_tokens},
          {"total_tokens", g.prompt_tokens + g.completion_tokens}};
}

std::string AnswerBody(const AnswerHeader& h, const std::string& text, const Generation& g) {
  json choice = {{"index", 0}, {"finish_reason", g.finish_reason}};
  if (h.chat) {
    choice["message"] = {{"role", "assistant"}, {"content", text}};
  } else {
    choice["text"] = text;
    choice["logprobs"] = nullptr;
  }
  json j = {{"id", h.id},
            {"object", h.chat ? "chat.completion" : "text_completion"},
            {"created", h.created},
            {"model", h.model},
            {"choices", json::array({choice})},
            {"usage", Usage(g)}};
  return Dump(j) + "\n";
}

std::string ChunkEvent(const AnswerHeader& h, const std::string& text, bool first,
                       const Generation* g) {
  json choice = {{"index", 0}, {"finish_reason", g ? json(g->finish_reason) : json(nullptr)}};
  if (h.chat) {
    json delta = json::object();
    if (first) delta["role"] = "assistant";
    if (!text.empty() || !g) delta["content"] = text;
    choice["delta"] = delta;
  } else {
    choice["text"] = text;
    choice["logprobs"] = nullptr;
  }
  json j = {{"id", h.id},
            {"object", h.chat ? "chat.completion.chunk" : "text_completion"},
            {"created", h.created},
            {"model", h.model},
            {"choices", json::array({choice})}};
  if (g) j["usage"] = Usage(*g);
  return "data: " + Dump(j) + "\n\n";
}

}  // namespace tinylora
