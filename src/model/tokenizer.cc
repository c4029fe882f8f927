#include "model/tokenizer.h"

#include <sentencepiece_processor.h>

#include "util/error.h"
#include "util/file.h"

namespace tinylora {

Tokenizer::Tokenizer(const std::string& model_path)
    : sp_(new sentencepiece::SentencePieceProcessor()) {
  if (!FileExists(model_path)) Fail(model_path + ": tokenizer file not found");
  const auto status = sp_->Load(model_path);
  if (!status.ok()) Fail(model_path + ": not a SentencePiece model (" + status.ToString() + ")");
}

Tokenizer::Tokenizer(const std::string& model_bytes, const std::string& what)
    : sp_(new sentencepiece::SentencePieceProcessor()) {
  const auto status = sp_->LoadFromSerializedProto(model_bytes);
  if (!status.ok()) Fail(what + ": not a SentencePiece model (" + status.ToString() + ")");
}

Tokenizer::~Tokenizer() = default;

std::vector<int> Tokenizer::Encode(const std::string& text, bool add_bos) const {
  std::vector<int> ids;
  const auto status = sp_->Encode(text, &ids);
  if (!status.ok()) Fail("cannot tokenize text: " + status.ToString());
  if (add_bos && sp_->bos_id() >= 0) ids.insert(ids.begin(), sp_->bos_id());
  return ids;
}

std::string Tokenizer::Decode(const std::vector<int>& ids) const {
  std::string text;
  const auto status = sp_->Decode(ids, &text);
  if (!status.ok()) Fail("cannot decode ids: " + status.ToString());
  return text;
}

int Tokenizer::vocab_size() const { return sp_->GetPieceSize(); }
int Tokenizer::bos_id() const { return sp_->bos_id(); }
int Tokenizer::eos_id() const { return sp_->eos_id(); }

namespace {
// Length of the prefix of s without a trailing run of U+FFFD (what SentencePiece makes of
// byte pieces that do not yet form a character) or a trailing incomplete UTF-8 sequence.
size_t StablePrefix(const std::string& s) {
  static const std::string kReplacement = "\xEF\xBF\xBD";
  size_t n = s.size();
  while (n >= 3 && s.compare(n - 3, 3, kReplacement) == 0) n -= 3;
  size_t back = 0;
  while (back < 4 && back < n && (static_cast<unsigned char>(s[n - 1 - back]) & 0xC0) == 0x80)
    ++back;
  if (back == n) return n;
  const unsigned char lead = static_cast<unsigned char>(s[n - 1 - back]);
  const size_t need = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1;
  return back + 1 >= need ? n : n - back - 1;
}
}  // namespace

void TextStreamer::Prime(const std::vector<int>& ids) {
  ids_ = ids;
  emitted_ = tok_.Decode(ids_).size();
}

std::string TextStreamer::Push(int id) {
  ids_.push_back(id);
  const std::string text = tok_.Decode(ids_);
  const size_t ready = StablePrefix(text);
  if (ready <= emitted_) return "";
  std::string out = text.substr(emitted_, ready - emitted_);
  emitted_ = ready;
  return out;
}

std::string TextStreamer::Finish() {
  const std::string text = tok_.Decode(ids_);
  if (text.size() <= emitted_) return "";
  std::string out = text.substr(emitted_);
  emitted_ = text.size();
  return out;
}

}  // namespace tinylora
