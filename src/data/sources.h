// Training documents from files: plain text (one file = one document), and JSONL with a
// "text" field or "prompt" + "completion" fields per line (one line = one document).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace tinylora {

// One file to read, with what identifies its version (the token cache compares these).
struct SourceFile {
  std::string path;      // as given (or as found walking a given folder)
  int64_t size = 0;      // bytes
  int64_t mtime_ns = 0;  // modification time, nanoseconds since the Unix epoch
};

// Regular files under each path (a file, or a folder walked recursively with its files sorted
// by path), in the order given. Error (exit 2) for a missing path or a folder without files.
std::vector<SourceFile> ListSources(const std::vector<std::string>& paths);

// A document: `prompt` carries no loss, `text` does (plain text and "text" lines leave
// `prompt` empty; "prompt"/"completion" lines put the completion in `text`). The document's
// text is prompt + text.
//
// A text longer than kTextPieceBytes (a whole file, a long JSONL field) comes in pieces that
// end at line breaks (else at a character boundary): the first carries the prompt, the others
// are marked `continuation` and extend the same document. SentencePiece's BPE gets slower per
// byte and much hungrier for memory as its input grows (a 16 MiB string takes ~1.6 GB and is
// ~6x slower than 4 KiB ones), and pieces let files larger than memory stream. Tokens differ
// from encoding the whole text at once only where a piece starts (SentencePiece's dummy "▁"
// prefix: about one token per piece).
struct Document {
  std::string prompt;
  std::string text;
  bool continuation = false;  // this piece continues the previous document
};

inline constexpr size_t kTextPieceBytes = size_t{16} << 10;

// Calls `fn` for every non-empty document of `files`, in order. A file ending in ".jsonl"
// holds one JSON object per line (empty lines skipped); anything else is plain text. Errors
// (exit 2) name the file and, for JSONL, the 1-based line: unreadable file, a line that is not
// JSON or not an object, no "text" and no "prompt"+"completion", a field that is not a string.
// Invalid UTF-8 is not an error (in JSONL it becomes U+FFFD, as SentencePiece would read it).
// `piece_bytes` is for tests.
void ReadDocuments(const std::vector<SourceFile>& files, const std::function<void(Document&)>& fn,
                   size_t piece_bytes = kTextPieceBytes);

}  // namespace tinylora
