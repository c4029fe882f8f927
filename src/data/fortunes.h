// The quickstart's data: Debian's fortune-cookie collections (packages fortunes, fortunes-de,
// fortunes-es, fortunes-it) turned into UTF-8 JSONL, one document per entry, tagged by
// language, with a fixed held-out split.
//
// Layout read (ROOT = /usr/share/games/fortunes): English in ROOT itself (regular files only:
// the links there point into it/), German in ROOT/de, Spanish in ROOT/es, Italian in ROOT/it.
// A collection is a text file of entries separated by lines holding only "%"; its ".dat"
// index and ".u8" twin are skipped (the twin is preferred when it is a regular file), as is
// any "off" (offensive) directory. Text that is not valid UTF-8 is read as Latin-1;
// overstriking (x BACKSPACE y, old bold/underline) keeps the last character.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace tinylora {

struct FortuneLanguage {
  std::string code;     // en, de, es, it
  std::string subdir;   // "" for ROOT itself
  std::string package;  // the Debian package that provides it
};
const std::vector<FortuneLanguage>& FortuneLanguages();

struct FortuneStats {
  std::string lang;
  int64_t collections = 0, train = 0, val = 0, latin1_files = 0;
};

// Writes OUT/{lang}.train.jsonl and OUT/{lang}.val.jsonl ({"text", "lang", "source"} per line)
// for every language; entry k of a collection is held out when k % val_every == val_every − 1.
// Error (exit 2) naming the package to install when a language's directory is missing or
// holds no collection.
std::vector<FortuneStats> PrepareFortunes(const std::string& root, const std::string& out,
                                          int val_every = 10);

// One collection's entries, cleaned (UTF-8, overstriking resolved, surrounding blank lines
// trimmed; empty entries dropped). `latin1` tells whether the bytes were read as Latin-1.
std::vector<std::string> SplitFortunes(const std::string& bytes, bool* latin1);

}  // namespace tinylora
