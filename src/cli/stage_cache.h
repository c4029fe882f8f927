// A pipeline's stages cached on disk (the quickstart's tokenizer, base, adapters, ...).
//
// A stage's directory is ROOT/NAME-KEY, KEY = 16 hex digits of a hash of its inputs: the
// options that shape its output plus the keys of the stages it reads, so a change anywhere
// upstream gives every stage below it a new key. A stage is built in ROOT/NAME-KEY.tmp-PID,
// which gets a stage.json (inputs, seconds) last and is then renamed into place: a directory
// under the final name is always complete, and an interrupted stage leaves only a temporary
// directory, removed by the next run (once its process is gone) and built again.
#pragma once

#include <functional>
#include <nlohmann/json.hpp>
#include <string>

namespace tinylora {

struct Stage {
  std::string name, key, dir;
  bool cached = false;  // reused from an earlier run
  double seconds = 0;   // time the build took (in the run that built it)
};

class StageCache {
 public:
  explicit StageCache(std::string root);  // creates ROOT
  const std::string& root() const { return root_; }

  // Hash of the canonical JSON text of `inputs` (object keys sorted), as 16 hex digits.
  static std::string Key(const nlohmann::json& inputs);

  // The stage NAME for these inputs: reused when ROOT/NAME-KEY is complete, else built by
  // `build(dir)` into a fresh temporary directory that is then moved into place. Errors and
  // signals from `build` propagate and leave nothing under the final name.
  Stage Get(const std::string& name, const nlohmann::json& inputs,
            const std::function<void(const std::string& dir)>& build);

 private:
  void RemoveStaleTemporaries(const std::string& final_name);
  std::string root_;
};

// Where a pipeline (quickstart, experiment) keeps its stages and runs by default:
// $XDG_CACHE_HOME/tinylora or ~/.cache/tinylora. Error naming `command` when HOME is unset.
std::string DefaultWorkDir(const std::string& command);
// `out`, created, or else a fresh WORK/runs/YYYYmmdd-HHMMSS[-N].
std::string RunDir(const std::string& work, const std::string& out);
// A training stage keeps its result, metrics.jsonl and loss.svg; the checkpoint (optimizer
// moments, only for --resume) is dropped.
void DropCheckpoint(const std::string& dir);

}  // namespace tinylora
