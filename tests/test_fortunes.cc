// The fortune data prep on crafted collections: separators, encodings, overstriking, the
// links and twins a Debian installation holds, the held-out rule, and a missing package.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>

#include "data/fortunes.h"
#include "test_util.h"
#include "util/error.h"
#include "util/file.h"

namespace tinylora {
namespace {

TEST(Fortunes, SplitsCleansAndDecodes) {
  bool latin1 = true;
  auto e = SplitFortunes("first\r\n%\n\n%\n  _\b_\bHi there\n\n%\nlast one", &latin1);
  EXPECT_FALSE(latin1);
  ASSERT_EQ(e.size(), 3u);  // the empty entry is dropped
  EXPECT_EQ(e[0], "first");
  EXPECT_EQ(e[1], "Hi there");  // overstrike keeps the last character; blank lines trimmed
  EXPECT_EQ(e[2], "last one");
  e = SplitFortunes("M\xfcnchen ist sch\xf6n\n%\n", &latin1);
  EXPECT_TRUE(latin1);
  ASSERT_EQ(e.size(), 1u);
  EXPECT_EQ(e[0], "München ist schön");
}

TEST(Fortunes, PreparesEveryLanguageWithAFixedSplit) {
  test::TempDir tmp;
  const std::string root = tmp / "fortunes";
  for (const char* d : {"", "/de", "/es", "/it"}) std::filesystem::create_directories(root + d);
  std::string many;
  for (int i = 0; i < 25; ++i) many += "entry " + std::to_string(i) + "\n%\n";
  test::WriteFile(root + "/wisdom", many);
  test::WriteFile(root + "/wisdom.dat", "binary index");
  test::WriteFile(root + "/it/italia", "Ciao\n%\nCiao di nuovo\n");
  std::filesystem::create_symlink("it/italia", root + "/italia");  // Debian links it/ into ROOT
  test::WriteFile(root + "/de/sprueche", "Gr\xfc\xdf Gott\n%\n");  // Latin-1
  test::WriteFile(root + "/es/arte.fortunes", "mal codificado \xe1\n");
  test::WriteFile(root + "/es/arte.fortunes.u8", "el arte \xc3\xa1\n%\notra\n");  // the UTF-8 twin
  const auto stats = PrepareFortunes(root, tmp / "out", 10);
  ASSERT_EQ(stats.size(), 4u);
  EXPECT_EQ(stats[0].lang, "en");
  EXPECT_EQ(stats[0].collections, 1);  // the link to it/italia and the .dat are skipped
  EXPECT_EQ(stats[0].train, 23);       // entries 9 and 19 are held out
  EXPECT_EQ(stats[0].val, 2);
  const auto val = test::ReadJsonLines(tmp / "out/en.val.jsonl");
  EXPECT_EQ(val[0]["text"], "entry 9");
  EXPECT_EQ(val[1]["text"], "entry 19");
  EXPECT_EQ(val[0]["lang"], "en");
  EXPECT_EQ(val[0]["source"], "wisdom");
  const auto de = test::ReadJsonLines(tmp / "out/de.train.jsonl");
  EXPECT_EQ(de[0]["text"], "Grüß Gott");
  EXPECT_EQ(stats[1].latin1_files, 1);
  const auto es = test::ReadJsonLines(tmp / "out/es.train.jsonl");
  EXPECT_EQ(es[0]["text"], "el arte á");
  EXPECT_EQ(es[0]["source"], "es/arte.fortunes");
  EXPECT_EQ(test::ReadJsonLines(tmp / "out/it.train.jsonl").size(), 2u);
}

TEST(Fortunes, MissingPackageNamesIt) {
  test::TempDir tmp;
  const std::string root = tmp / "fortunes";
  std::filesystem::create_directories(root + "/de");
  std::filesystem::create_directories(root + "/it");
  test::WriteFile(root + "/wisdom", "a\n%\nb\n");
  test::WriteFile(root + "/de/x", "a\n");
  try {
    PrepareFortunes(root, tmp / "out", 10);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("apt-get install fortunes-es"), std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace tinylora
