// A Llama model in GGUF as llama.cpp reads and writes one: its metadata keys (llama.*,
// tokenizer.ggml.*), its tensor names (blk.N.attn_q.weight, …) and its row order of q and k
// (llama.cpp's converter permutes each head's rows from Hugging Face's rotate-half layout to
// interleaved pairs). Reading undoes the renaming and the permutation; writing redoes both.
#pragma once

#include <string>
#include <vector>

#include "formats/gguf.h"
#include "model/config.h"
#include "model/spm_model.h"
#include "ops/format.h"

namespace tinylora {

class ModelWeights;

// The config a GGUF file's llama.* keys (and its tensors: tied head, vocabulary) describe.
// Error (exit 2) naming the file and key for anything missing, mistyped or unsupported.
LlamaConfig ConfigFromGguf(const GgufHeader& h, const std::string& what);

// GGUF's name of a Hugging Face tensor name ("model.layers.3.self_attn.q_proj.weight" ->
// "blk.3.attn_q.weight"); empty for a name GGUF's llama has no tensor for.
std::string GgufTensorName(const std::string& hf_name);

// q_proj and k_proj: the GGUF row holding Hugging Face row r (heads of head_dim rows).
int64_t GgufRopeRow(int64_t r, int head_dim);
int64_t HfRopeRow(int64_t g, int head_dim);       // its inverse: the Hugging Face row of GGUF row g
bool PermutedInGguf(const std::string& hf_name);  // q_proj and k_proj weights

// The tinylora format of a GGML type, and back (Error naming `what` when GGUF has none: nf4).
Format FormatOfGgml(GgmlType t);
GgmlType GgmlOfFormat(Format f, const std::string& what);

// The tokenizer a GGUF file carries, rebuilt as a SentencePiece model (tokenizer.ggml.model
// "llama": pieces, scores and types; byte fallback when it has byte pieces; the special ids;
// add_space_prefix, remove_extra_whitespaces and a precompiled_charsmap when present). False,
// with `why` set, when the file has no SentencePiece tokenizer.
bool TokenizerFromGguf(const GgufHeader& h, const std::string& what, SpmModel* out,
                       std::string* why);
// The tokenizer.ggml.* keys of a SentencePiece model.
void AddTokenizerKeys(const SpmModel& m, std::vector<std::pair<std::string, GgufValue>>* kv);

// Writes the model as a GGUF file llama.cpp loads: the seven projections of every block in
// `format`, the embedding and head in `format` when it is a float format or `head` is set (else
// as they are held), norms in F32; the model's tokenizer when it has one (else
// tokenizer.ggml.model "no_vocab", as llama.cpp marks a model without one).
void WriteLlamaGguf(const ModelWeights& w, Format format, bool head, const std::string& path);

}  // namespace tinylora
