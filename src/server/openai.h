// OpenAI's completion and chat-completion API: request bodies parsed and checked into an
// engine request, and the answers, whole or as Server-Sent Events chunks.
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "server/api_error.h"
#include "server/chat_template.h"
#include "server/engine.h"

namespace tinylora {

struct ApiRequest {
  GenerationRequest gen;
  std::string model;  // as the answer names it: the request's, or the base's
  bool chat = false, stream = false;
};

// A /v1/completions (chat: /v1/chat/completions) body. Malformed JSON, a known field of the
// wrong type or out of range, n other than 1, or chat without a template: ApiError 400.
// Fields OpenAI's clients send that tinylora has no use for are ignored.
ApiRequest ParseCompletionRequest(const std::string& body, bool chat, const Engine& engine,
                                  std::optional<ChatStyle> style);

// {"error": {"message", "type", "param", "code"}}.
std::string ErrorBody(const ApiError& e);

// One answer's identity, shared by its chunks.
struct AnswerHeader {
  std::string id, model;
  int64_t created = 0;
  bool chat = false;
};
AnswerHeader NewAnswerHeader(const ApiRequest& r);

nlohmann::json Usage(const Generation& g);
// The whole answer, after the generation finished.
std::string AnswerBody(const AnswerHeader& h, const std::string& text, const Generation& g);
// One SSE event "data: {...}\n\n": new text (chat: as the delta; the first carries the role),
// or the last chunk (finish_reason and usage) when `g` is given.
std::string ChunkEvent(const AnswerHeader& h, const std::string& text, bool first,
                       const Generation* g);

}  // namespace tinylora
