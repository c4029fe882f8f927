// Text <-> token ids through the SentencePiece library (tokenizer.model in a model directory).
#pragma once

#include <memory>
#include <string>
#include <vector>

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace tinylora {

class Tokenizer {
 public:
  explicit Tokenizer(const std::string& model_path);  // Error (exit 2) naming the file
  // From a model's bytes (ModelWeights::tokenizer_model); `what` names them in errors.
  Tokenizer(const std::string& model_bytes, const std::string& what);
  ~Tokenizer();
  std::vector<int> Encode(const std::string& text, bool add_bos) const;
  std::string Decode(const std::vector<int>& ids) const;
  int vocab_size() const;
  int bos_id() const;
  int eos_id() const;

 private:
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
};

// Streams text as ids arrive: each Push returns the new text that decoding all ids so far
// adds, holding back an unfinished character: byte-fallback pieces arrive one byte at a time
// and decode to U+FFFD until the sequence is complete.
class TextStreamer {
 public:
  explicit TextStreamer(const Tokenizer& tok) : tok_(tok) {}
  // Ids already shown (the prompt): later text continues from them without being repeated.
  void Prime(const std::vector<int>& ids);
  std::string Push(int id);
  // Whatever is still held back (an unfinished byte sequence at the end of generation).
  std::string Finish();

 private:
  const Tokenizer& tok_;
  std::vector<int> ids_;
  size_t emitted_ = 0;  // bytes of the decoded text already returned
};

}  // namespace tinylora
