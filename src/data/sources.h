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
struct Document {
  std::string prompt;
  std::string text;
  // True when this piece continues the previous document: a plain text file larger than
  // kTextPieceBytes is read in pieces that end at line breaks.
  bool continuation = false;
};

inline constexpr size_t kTextPieceBytes = size_t{16} << 20;

// Calls `fn` for every non-empty document of `files`, in order. A file ending in ".jsonl"
// holds one JSON object per line (empty lines skipped); anything else is plain text. Errors
// (exit 2) name the file and, for JSONL, the 1-based line: unreadable file, a line that is not
// JSON or not an object, no "text" and no "prompt"+"completion", a field that is not a string.
// Invalid UTF-8 is not an error (in JSONL it becomes U+FFFD, as SentencePiece would read it).
// `piece_bytes` is for tests.
void ReadDocuments(const std::vector<SourceFile>& files, const std::function<void(Document&)>& fn,
                   size_t piece_bytes = kTextPieceBytes);

}  // namespace tinylora
