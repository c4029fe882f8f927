#include "cli/stage_cache.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>

#include "data/token_cache.h"
#include "util/error.h"
#include "util/file.h"

namespace tinylora {

namespace fs = std::filesystem;

namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// fsync every file below `dir`, then the directories, so a renamed stage survives a crash.
void SyncTree(const std::string& dir) {
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (e.is_directory()) {
      FsyncDirectory(e.path().string());
    } else if (e.is_regular_file()) {
      const int fd = ::open(e.path().c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) continue;
      ::fsync(fd);
      ::close(fd);
    }
  }
  FsyncDirectory(dir);
}

}  // namespace

StageCache::StageCache(std::string root) : root_(std::move(root)) { MakeDirectories(root_); }

std::string StageCache::Key(const nlohmann::json& inputs) {
  const std::string text = inputs.dump();
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx",
                static_cast<unsigned long long>(Fnv1a64(text.data(), text.size())));
  return hex;
}

void StageCache::RemoveStaleTemporaries(const std::string& final_name) {
  const std::string prefix = final_name + ".tmp-";
  for (const auto& e : fs::directory_iterator(root_)) {
    const std::string name = e.path().filename().string();
    if (name.rfind(prefix, 0) != 0) continue;
    const long pid = std::strtol(name.c_str() + prefix.size(), nullptr, 10);
    // A temporary of a live process (another run building the same stage) is left alone.
    if (pid > 0 && pid != ::getpid() && ::kill(static_cast<pid_t>(pid), 0) == 0) continue;
    std::error_code ec;
    fs::remove_all(e.path(), ec);
  }
}

Stage StageCache::Get(const std::string& name, const nlohmann::json& inputs,
                      const std::function<void(const std::string& dir)>& build) {
  Stage st;
  st.name = name;
  st.key = Key(inputs);
  const std::string final_name = name + "-" + st.key;
  st.dir = JoinPath(root_, final_name);
  const std::string marker = JoinPath(st.dir, "stage.json");
  if (FileExists(marker)) {
    st.cached = true;
    const nlohmann::json rec = nlohmann::json::parse(ReadTextFile(marker), nullptr, false);
    if (rec.is_object()) st.seconds = rec.value("seconds", 0.0);
    return st;
  }
  RemoveStaleTemporaries(final_name);
  const std::string tmp = st.dir + ".tmp-" + std::to_string(::getpid());
  std::error_code ec;
  fs::remove_all(tmp, ec);
  MakeDirectories(tmp);
  const double t0 = Now();
  try {
    build(tmp);
  } catch (...) {  // nothing of a failed build is kept (a killed one is removed next time)
    fs::remove_all(tmp, ec);
    throw;
  }
  st.seconds = Now() - t0;
  const nlohmann::json rec = {
      {"name", name}, {"key", st.key}, {"inputs", inputs}, {"seconds", st.seconds}};
  WriteFileAtomic(JoinPath(tmp, "stage.json"), rec.dump(2) + "\n");
  SyncTree(tmp);
  if (IsDirectory(st.dir) && !FileExists(marker)) fs::remove_all(st.dir, ec);  // not ours, broken
  if (::rename(tmp.c_str(), st.dir.c_str()) != 0) {
    if (FileExists(marker)) {  // another run finished the same stage first: use theirs
      fs::remove_all(tmp, ec);
    } else {
      FailRuntime(st.dir + ": cannot move the finished stage into place: " + std::strerror(errno));
    }
  }
  FsyncDirectory(root_);
  return st;
}

std::string DefaultWorkDir(const std::string& command) {
  const char* xdg = std::getenv("XDG_CACHE_HOME");
  if (xdg != nullptr && xdg[0] == '/') return JoinPath(xdg, "tinylora");
  const char* home = std::getenv("HOME");
  if (home == nullptr || home[0] == '\0') Fail(command + ": HOME is not set; give --work-dir DIR");
  return JoinPath(JoinPath(home, ".cache"), "tinylora");
}

std::string RunDir(const std::string& work, const std::string& out) {
  std::string dir = out;
  if (dir.empty()) {
    const std::time_t now = std::time(nullptr);
    std::tm tm{};
    localtime_r(&now, &tm);
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y%m%d-%H%M%S", &tm);
    const std::string stamp = JoinPath(JoinPath(work, "runs"), buf);
    dir = stamp;
    for (int i = 2; std::filesystem::exists(dir); ++i) dir = stamp + "-" + std::to_string(i);
  }
  MakeDirectories(dir);
  return dir;
}

void DropCheckpoint(const std::string& dir) {
  std::error_code ec;
  std::filesystem::remove_all(JoinPath(dir, "checkpoint"), ec);
  std::filesystem::remove_all(JoinPath(dir, "checkpoint.old"), ec);
}

}  // namespace tinylora
