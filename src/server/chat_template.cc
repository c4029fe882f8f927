#include "server/chat_template.h"

#include "server/api_error.h"
#include "util/error.h"

namespace tinylora {
namespace {

// A prompt built as text runs and special ids: each run is encoded on its own (SentencePiece's
// dummy prefix per run, as Hugging Face's legacy Llama tokenizer splits at special tokens).
class PromptBuilder {
 public:
  explicit PromptBuilder(const Tokenizer& tok) : tok_(tok) {}
  void Text(const std::string& s) { text_ += s; }
  void Id(int id) {
    Flush();
    ids_.push_back(id);
  }
  std::vector<int> Take() {
    Flush();
    return std::move(ids_);
  }

 private:
  void Flush() {
    if (text_.empty()) return;
    const std::vector<int> run = tok_.Encode(text_, /*add_bos=*/false);
    ids_.insert(ids_.end(), run.begin(), run.end());
    text_.clear();
  }
  const Tokenizer& tok_;
  std::string text_;
  std::vector<int> ids_;
};

std::string Strip(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1);
}

}  // namespace

ChatStyle ChatStyleNamed(const std::string& name) {
  if (name == "zephyr") return ChatStyle::kZephyr;
  if (name == "chatml") return ChatStyle::kChatMl;
  if (name == "llama2") return ChatStyle::kLlama2;
  Fail("--chat-template: unknown template '" + name + "' (zephyr, chatml or llama2)");
}

const char* ChatStyleName(ChatStyle s) {
  switch (s) {
    case ChatStyle::kZephyr:
      return "zephyr";
    case ChatStyle::kChatMl:
      return "chatml";
    case ChatStyle::kLlama2:
      return "llama2";
  }
  return "?";
}

ChatStyle RecogniseChatTemplate(const std::string& jinja) {
  if (jinja.find("<|im_start|>") != std::string::npos) return ChatStyle::kChatMl;
  if (jinja.find("<|user|>") != std::string::npos &&
      jinja.find("<|assistant|>") != std::string::npos)
    return ChatStyle::kZephyr;
  if (jinja.find("[INST]") != std::string::npos && jinja.find("[/INST]") != std::string::npos)
    return ChatStyle::kLlama2;
  Fail(
      "the model's chat template is not one tinylora recognises (Zephyr, ChatML, Llama-2); "
      "choose one with --chat-template zephyr|chatml|llama2");
}

std::vector<int> RenderChat(ChatStyle s, const std::vector<ChatMessage>& messages,
                            const Tokenizer& tok) {
  if (messages.empty()) throw ApiError(400, "messages: at least one message is needed", "messages");
  for (const ChatMessage& m : messages) {
    if (m.role != "system" && m.role != "user" && m.role != "assistant")
      throw ApiError(400, "messages: unknown role '" + m.role + "' (system, user or assistant)",
                     "messages");
  }
  PromptBuilder p(tok);
  p.Id(tok.bos_id());
  switch (s) {
    case ChatStyle::kZephyr:  // <|role|>\n content </s>\n ... <|assistant|>\n
      for (const ChatMessage& m : messages) {
        p.Text("<|" + m.role + "|>\n" + m.content);
        p.Id(tok.eos_id());
        p.Text("\n");
      }
      p.Text("<|assistant|>\n");
      break;
    case ChatStyle::kChatMl:  // <|im_start|>role\n content <|im_end|>\n ... <|im_start|>assistant\n
      for (const ChatMessage& m : messages)
        p.Text("<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n");
      p.Text("<|im_start|>assistant\n");
      break;
    case ChatStyle::kLlama2: {  // [INST] <<SYS>>\n sys \n<</SYS>>\n\n user [/INST] reply </s><s>...
      std::string system;
      bool first_user = true;
      for (size_t i = 0; i < messages.size(); ++i) {
        const ChatMessage& m = messages[i];
        if (m.role == "system") {
          system = Strip(m.content);
        } else if (m.role == "user") {
          if (!first_user) p.Id(tok.bos_id());
          std::string content = Strip(m.content);
          if (first_user && !system.empty())
            content = "<<SYS>>\n" + system + "\n<</SYS>>\n\n" + content;
          p.Text("[INST] " + content + " [/INST]");
          first_user = false;
        } else {
          p.Text(" " + Strip(m.content) + " ");
          p.Id(tok.eos_id());
        }
      }
      break;
    }
  }
  return p.Take();
}

std::vector<std::string> ChatStopStrings(ChatStyle s) {
  if (s == ChatStyle::kChatMl) return {"<|im_end|>"};
  return {};
}

}  // namespace tinylora
