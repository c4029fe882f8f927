// Chat templates: the model's Jinja chat_template is recognised by its text as one of the
// common styles (no Jinja engine), and messages are rendered to prompt ids the way that
// template writes them, with BOS and EOS as their ids (SentencePiece never makes them from text).
#pragma once

#include <string>
#include <vector>

#include "model/tokenizer.h"

namespace tinylora {

enum class ChatStyle { kZephyr, kChatMl, kLlama2 };

struct ChatMessage {
  std::string role;  // system, user or assistant
  std::string content;
};

// "zephyr", "chatml" or "llama2" (--chat-template); Error (exit 2) naming the choices.
ChatStyle ChatStyleNamed(const std::string& name);
const char* ChatStyleName(ChatStyle s);
// The style a Jinja template writes, by its markers; Error (exit 2) for one it does not know.
ChatStyle RecogniseChatTemplate(const std::string& jinja);

// BOS, the turns, then the opening of the assistant's reply. A role other than system, user
// or assistant: ApiError 400.
std::vector<int> RenderChat(ChatStyle s, const std::vector<ChatMessage>& messages,
                            const Tokenizer& tok);
// Text that ends the assistant's turn besides EOS (ChatML's <|im_end|>, written as text).
std::vector<std::string> ChatStopStrings(ChatStyle s);

}  // namespace tinylora
