// SentencePiece's model file (a serialized ModelProto, sentencepiece_model.proto), read and
// written by hand for the parts that decide how text is encoded: the pieces (text, score, type),
// the model type, byte fallback, the special ids and pieces, and the normalizer. GGUF carries a
// tokenizer as exactly these parts (model/gguf_llama), so a GGUF file's tokenizer is rebuilt as
// such a model, and a tokenizer.model is written out as GGUF's arrays. Protobuf's wire format:
// each field a varint key (number << 3 | wire type) then a varint, 4 or 8 bytes, or a
// length-prefixed run (strings and nested messages).
#pragma once

#include <string>
#include <vector>

namespace tinylora {

// SentencePiece's piece types (also GGUF's tokenizer.ggml.token_type values).
enum class SpmPieceType : int {
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6
};

struct SpmPiece {
  std::string piece;
  float score = 0.0f;
  SpmPieceType type = SpmPieceType::kNormal;
};

struct SpmModel {
  std::vector<SpmPiece> pieces;
  int model_type = 1;  // TrainerSpec.ModelType: 1 unigram (the default), 2 BPE
  bool byte_fallback = false;
  int unk_id = 0, bos_id = 1, eos_id = 2, pad_id = -1;
  // NormalizerSpec
  std::string normalizer_name = "identity";
  std::string precompiled_charsmap;  // empty: no normalization
  bool add_dummy_prefix = true;
  bool remove_extra_whitespaces = true;
  bool escape_whitespaces = true;
};

// Error (exit 2) naming `what` when the bytes are not a well-formed ModelProto.
SpmModel ParseSpmModel(const std::string& bytes, const std::string& what);
std::string SerializeSpmModel(const SpmModel& m);

}  // namespace tinylora
