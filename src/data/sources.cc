#include "data/sources.h"

#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "util/error.h"
#include "util/file.h"

namespace tinylora {

namespace {

SourceFile StatSource(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) Fail(path + ": cannot stat: " + std::strerror(errno));
  SourceFile f;
  f.path = path;
  f.size = static_cast<int64_t>(st.st_size);
  f.mtime_ns = static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
  return f;
}

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool IsJsonl(const std::string& path) {
  std::string lower = path;
  for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return EndsWith(lower, ".jsonl");
}

// Length of the well-formed UTF-8 sequence at s[i] (Unicode table 3-7), or 0 if ill-formed.
size_t Utf8Length(const std::string& s, size_t i) {
  const auto byte = [&](size_t k) -> unsigned {
    return i + k < s.size() ? static_cast<unsigned char>(s[i + k]) : 0x100u;
  };
  const auto in = [](unsigned b, unsigned lo, unsigned hi) { return b >= lo && b <= hi; };
  const unsigned b0 = byte(0);
  if (b0 < 0x80) return 1;
  if (in(b0, 0xC2, 0xDF)) return in(byte(1), 0x80, 0xBF) ? 2 : 0;
  if (in(b0, 0xE0, 0xEF)) {
    const unsigned lo = b0 == 0xE0 ? 0xA0 : 0x80, hi = b0 == 0xED ? 0x9F : 0xBF;
    return in(byte(1), lo, hi) && in(byte(2), 0x80, 0xBF) ? 3 : 0;
  }
  if (in(b0, 0xF0, 0xF4)) {
    const unsigned lo = b0 == 0xF0 ? 0x90 : 0x80, hi = b0 == 0xF4 ? 0x8F : 0xBF;
    return in(byte(1), lo, hi) && in(byte(2), 0x80, 0xBF) && in(byte(3), 0x80, 0xBF) ? 4 : 0;
  }
  return 0;
}

// `s` with every byte that is not part of well-formed UTF-8 replaced by U+FFFD.
std::string ReplaceInvalidUtf8(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    const size_t n = Utf8Length(s, i);
    if (n == 0) {
      out += "\xEF\xBF\xBD";
      ++i;
    } else {
      out.append(s, i, n);
      i += n;
    }
  }
  return out;
}

bool IsValidUtf8(const std::string& s) {
  for (size_t i = 0; i < s.size();) {
    const size_t n = Utf8Length(s, i);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

// nlohmann's message without its tag and its "line 1" (ours is the file's line).
std::string JsonErrorText(const char* what) {
  std::string s = what;
  const size_t column = s.find("column ");
  if (column != std::string::npos) return s.substr(column);
  const size_t tag = s.find("] ");
  return tag == std::string::npos ? s : s.substr(tag + 2);
}

// Where a piece of `s` that starts at `begin` ends, given that s holds more than `limit` bytes
// from there: after the last line break within `limit` bytes, else at a character boundary.
size_t PieceEnd(const std::string& s, size_t begin, size_t limit) {
  const size_t end = begin + limit;  // < s.size()
  const size_t nl = s.rfind('\n', end - 1);
  if (nl != std::string::npos && nl >= begin) return nl + 1;
  size_t cut = end;  // back up over UTF-8 continuation bytes so s[cut] starts a character
  for (int k = 0; k < 3 && cut > begin + 1 && (static_cast<unsigned char>(s[cut]) & 0xC0) == 0x80;
       ++k) {
    --cut;
  }
  return cut;
}

// Passes `doc` on, cut into pieces of at most `piece_bytes` of text when it is longer.
void EmitPieces(Document& doc, size_t piece_bytes, const std::function<void(Document&)>& fn) {
  if (doc.text.size() <= piece_bytes) {
    fn(doc);
    return;
  }
  const std::string text = std::move(doc.text);
  for (size_t pos = 0; pos < text.size();) {
    const size_t cut =
        text.size() - pos <= piece_bytes ? text.size() : PieceEnd(text, pos, piece_bytes);
    Document piece;
    if (pos == 0) piece.prompt = std::move(doc.prompt);
    piece.text = text.substr(pos, cut - pos);
    piece.continuation = doc.continuation || pos > 0;
    fn(piece);
    pos = cut;
  }
}

// A plain text file is one document, read and passed on in pieces (so it may exceed memory).
void ReadPlainText(const SourceFile& file, const std::function<void(Document&)>& fn,
                   size_t piece_bytes) {
  std::ifstream in(file.path, std::ios::binary);
  if (!in) Fail(file.path + ": cannot open: " + std::strerror(errno));
  const size_t read_bytes = std::max(piece_bytes, size_t{1} << 20);
  std::string buf;
  size_t pos = 0;  // buf[pos, size) is not passed on yet
  bool eof = false, first = true;
  for (;;) {
    if (!eof && buf.size() - pos <= piece_bytes) {
      buf.erase(0, pos);
      pos = 0;
      const size_t old = buf.size();
      buf.resize(old + read_bytes);
      in.read(buf.data() + old, static_cast<std::streamsize>(read_bytes));
      const size_t got = static_cast<size_t>(in.gcount());
      if (in.bad()) Fail(file.path + ": read error");
      buf.resize(old + got);
      eof = got < read_bytes;
      continue;
    }
    if (pos == buf.size()) break;
    const size_t cut =
        buf.size() - pos <= piece_bytes ? buf.size() : PieceEnd(buf, pos, piece_bytes);
    Document piece;
    piece.text = buf.substr(pos, cut - pos);
    piece.continuation = !first;
    first = false;
    fn(piece);
    pos = cut;
  }
}

const std::string& StringField(const nlohmann::json& j, const char* key, const std::string& where) {
  const nlohmann::json& v = j.at(key);
  if (!v.is_string()) {
    Fail(where + ": \"" + key + "\" must be a string, got " + std::string(v.type_name()));
  }
  return v.get_ref<const std::string&>();
}

void ReadJsonl(const SourceFile& file, const std::function<void(Document&)>& fn,
               size_t piece_bytes) {
  std::ifstream in(file.path, std::ios::binary);
  if (!in) Fail(file.path + ": cannot open: " + std::strerror(errno));
  std::string line;
  for (int64_t line_no = 1; std::getline(in, line); ++line_no) {
    if (line.find_first_not_of(" \t\r\n") == std::string::npos) continue;
    const std::string where = file.path + ":" + std::to_string(line_no);
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(IsValidUtf8(line) ? line : ReplaceInvalidUtf8(line));
    } catch (const nlohmann::json::parse_error& e) {
      Fail(where + ": not valid JSON (" + JsonErrorText(e.what()) + ")");
    }
    if (!j.is_object()) {
      Fail(where + ": expected a JSON object, got " + std::string(j.type_name()));
    }
    const bool has_text = j.contains("text");
    const bool has_prompt = j.contains("prompt"), has_completion = j.contains("completion");
    Document doc;
    if (has_text && (has_prompt || has_completion)) {
      Fail(where + ": has both \"text\" and \"prompt\"/\"completion\"; expected one or the other");
    } else if (has_text) {
      doc.text = StringField(j, "text", where);
    } else if (has_prompt && has_completion) {
      doc.prompt = StringField(j, "prompt", where);
      doc.text = StringField(j, "completion", where);
    } else if (has_prompt || has_completion) {
      Fail(where + ": has \"" + (has_prompt ? "prompt" : "completion") + "\" but no \"" +
           (has_prompt ? "completion" : "prompt") + "\"");
    } else {
      Fail(where + ": no \"text\" field and no \"prompt\" and \"completion\" fields");
    }
    if (doc.prompt.empty() && doc.text.empty()) continue;
    EmitPieces(doc, piece_bytes, fn);
  }
  if (in.bad()) Fail(file.path + ": read error");
}

}  // namespace

std::vector<SourceFile> ListSources(const std::vector<std::string>& paths) {
  std::vector<SourceFile> files;
  for (const std::string& p : paths) {
    if (FileExists(p)) {
      files.push_back(StatSource(p));
    } else if (IsDirectory(p)) {
      std::vector<std::string> found;
      try {
        for (const auto& e : std::filesystem::recursive_directory_iterator(p)) {
          if (e.is_regular_file()) found.push_back(e.path().string());
        }
      } catch (const std::filesystem::filesystem_error& e) {
        Fail(p + ": cannot list the folder: " + e.code().message());
      }
      if (found.empty()) Fail(p + ": folder holds no files");
      std::sort(found.begin(), found.end());
      for (const std::string& f : found) files.push_back(StatSource(f));
    } else {
      Fail(p + ": no such file or directory");
    }
  }
  return files;
}

void ReadDocuments(const std::vector<SourceFile>& files, const std::function<void(Document&)>& fn,
                   size_t piece_bytes) {
  for (const SourceFile& f : files) {
    if (IsJsonl(f.path)) {
      ReadJsonl(f, fn, std::max<size_t>(piece_bytes, 8));
    } else {
      ReadPlainText(f, fn, std::max<size_t>(piece_bytes, 8));
    }
  }
}

}  // namespace tinylora
