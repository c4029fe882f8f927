#include "data/fortunes.h"

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "util/error.h"
#include "util/file.h"

namespace tinylora {

namespace fs = std::filesystem;

const std::vector<FortuneLanguage>& FortuneLanguages() {
  static const std::vector<FortuneLanguage> kLanguages = {{"en", "", "fortunes"},
                                                          {"de", "de", "fortunes-de"},
                                                          {"es", "es", "fortunes-es"},
                                                          {"it", "it", "fortunes-it"}};
  return kLanguages;
}

namespace {

bool ValidUtf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (size_t k = 1; k < n; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
    }
    i += n;
  }
  return true;
}

std::string Latin1ToUtf8(const std::string& s) {
  std::string out;
  for (char ch : s) {
    const unsigned char c = static_cast<unsigned char>(ch);
    if (c < 0x80) {
      out.push_back(ch);
    } else {
      out.push_back(static_cast<char>(0xC0 | (c >> 6)));
      out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
    }
  }
  return out;
}

// "x\by" prints y over x: keep y. Other control characters but \n and \t go.
std::string Clean(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '\b') {
      if (!out.empty()) {  // drop the whole previous UTF-8 character
        while (!out.empty() && (static_cast<unsigned char>(out.back()) & 0xC0) == 0x80)
          out.pop_back();
        if (!out.empty()) out.pop_back();
      }
      continue;
    }
    if (c == '\r' || (static_cast<unsigned char>(c) < 0x20 && c != '\n' && c != '\t')) continue;
    out.push_back(c);
  }
  return out;
}

std::string Trim(const std::string& s) {
  size_t a = s.find_first_not_of(" \t\n");
  if (a == std::string::npos) return "";
  size_t b = s.find_last_not_of(" \t\n");
  return s.substr(a, b - a + 1);
}

}  // namespace

std::vector<std::string> SplitFortunes(const std::string& bytes, bool* latin1) {
  *latin1 = !ValidUtf8(bytes);
  const std::string text = *latin1 ? Latin1ToUtf8(bytes) : bytes;
  std::vector<std::string> entries;
  std::string current;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) nl = text.size();
    std::string line = text.substr(pos, nl - pos);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line == "%") {
      std::string e = Trim(Clean(current));
      if (!e.empty()) entries.push_back(e);
      current.clear();
    } else {
      current += line + "\n";
    }
    pos = nl + 1;
  }
  std::string e = Trim(Clean(current));
  if (!e.empty()) entries.push_back(e);
  return entries;
}

std::vector<FortuneStats> PrepareFortunes(const std::string& root, const std::string& out,
                                          int val_every) {
  if (val_every < 2) Fail("fortunes: val_every must be at least 2");
  MakeDirectories(out);
  std::vector<FortuneStats> all;
  for (const FortuneLanguage& lang : FortuneLanguages()) {
    const std::string dir = lang.subdir.empty() ? root : JoinPath(root, lang.subdir);
    const std::string install = "; install it with: apt-get install " + lang.package;
    if (!IsDirectory(dir)) Fail(dir + ": no fortune collections (" + lang.code + ")" + install);
    std::vector<std::string> files;
    for (const auto& e : fs::directory_iterator(dir)) {
      const std::string name = e.path().filename().string();
      if (e.is_symlink() || !e.is_regular_file()) continue;  // links into it/, the .u8 twins
      const std::string ext = e.path().extension().string();
      if (ext == ".dat" || ext == ".u8" || ext == ".gz" || name.rfind("README", 0) == 0) continue;
      files.push_back(e.path().string());
    }
    std::sort(files.begin(), files.end());
    if (files.empty()) Fail(dir + ": no fortune collections (" + lang.code + ")" + install);
    FortuneStats st;
    st.lang = lang.code;
    std::string train, val;
    for (const std::string& f : files) {
      // prefer the UTF-8 twin when the package ships one as a real file
      const std::string u8 = f + ".u8";
      const std::string path = FileExists(u8) && !fs::is_symlink(u8) ? u8 : f;
      bool latin1 = false;
      const std::vector<std::string> entries = SplitFortunes(ReadTextFile(path), &latin1);
      if (entries.empty()) continue;
      ++st.collections;
      st.latin1_files += latin1;
      const std::string source =
          (lang.subdir.empty() ? "" : lang.subdir + "/") + fs::path(f).filename().string();
      for (size_t k = 0; k < entries.size(); ++k) {
        const std::string line =
            nlohmann::json{{"text", entries[k]}, {"lang", lang.code}, {"source", source}}.dump() +
            "\n";
        if (static_cast<int>(k % static_cast<size_t>(val_every)) == val_every - 1) {
          val += line;
          ++st.val;
        } else {
          train += line;
          ++st.train;
        }
      }
    }
    if (st.train == 0) Fail(dir + ": no fortune entries (" + lang.code + ")" + install);
    WriteFileAtomic(JoinPath(out, lang.code + ".train.jsonl"), train);
    WriteFileAtomic(JoinPath(out, lang.code + ".val.jsonl"), val);
    all.push_back(st);
  }
  return all;
}

}  // namespace tinylora
