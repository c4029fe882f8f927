#include "train/checkpoint.h"

#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "formats/safetensors.h"
#include "util/error.h"
#include "util/file.h"

namespace tinylora {

namespace fs = std::filesystem;

std::string CheckpointDir(const std::string& out_dir) { return JoinPath(out_dir, "checkpoint"); }

void SaveCheckpoint(const std::string& out_dir, const ParamBlock& params, AdamW& opt,
                    const TrainState& state,
                    const std::function<void(const std::string& dir)>& extra) {
  const std::string final_dir = CheckpointDir(out_dir);
  const std::string tmp = final_dir + ".tmp", old = final_dir + ".old";
  std::error_code ec;
  fs::remove_all(tmp, ec);
  MakeDirectories(tmp);
  std::vector<TensorToWrite> values, moments;
  for (int i = 0; i < params.size(); ++i) {
    values.push_back({params.name(i), DType::kF32, params.shape(i), params.value(i)});
    const int64_t off = params.value(i) - params.values().data();
    moments.push_back({"m." + params.name(i), DType::kF32, params.shape(i), opt.m().data() + off});
    moments.push_back({"v." + params.name(i), DType::kF32, params.shape(i), opt.v().data() + off});
  }
  WriteSafetensors(JoinPath(tmp, "params.safetensors"), values);
  WriteSafetensors(JoinPath(tmp, "optimizer.safetensors"), moments);
  if (extra) extra(tmp);
  nlohmann::json j = {{"step", state.step},           {"epoch", state.epoch},
                      {"position", state.position},   {"tokens", state.tokens},
                      {"elapsed_s", state.elapsed_s}, {"run", nlohmann::json::parse(state.run)}};
  WriteFileAtomic(JoinPath(tmp, "state.json"), j.dump(2) + "\n");
  FsyncDirectory(tmp);
  // Swap in: checkpoint -> checkpoint.old, tmp -> checkpoint, drop old.
  // When only checkpoint.old exists (a crash between the renames), it is the last good one:
  // keep it until the new checkpoint is in place.
  if (IsDirectory(final_dir)) {
    fs::remove_all(old, ec);
    fs::rename(final_dir, old, ec);
    if (ec) FailRuntime(final_dir + ": cannot move aside: " + ec.message());
  }
  fs::rename(tmp, final_dir, ec);
  if (ec) FailRuntime(final_dir + ": cannot install checkpoint: " + ec.message());
  FsyncDirectory(out_dir);
  fs::remove_all(old, ec);
}

namespace {
void ReadInto(const SafetensorsFile& f, const std::string& name, const std::vector<int64_t>& shape,
              float* dst) {
  const TensorInfo* t = f.Find(name);
  if (t == nullptr) Fail(f.path() + ": tensor '" + name + "' is missing");
  if (t->dtype != DType::kF32 || t->shape != shape) {
    Fail(f.path() + ": tensor '" + name + "' does not match this run (dtype or shape)");
  }
  std::memcpy(dst, f.Data(*t), t->nbytes);
}
}  // namespace

bool LoadCheckpoint(const std::string& out_dir, ParamBlock* params, AdamW* opt, TrainState* state) {
  std::string dir = CheckpointDir(out_dir);
  if (!FileExists(JoinPath(dir, "state.json"))) {
    dir += ".old";  // a crash between the renames of SaveCheckpoint
    if (!FileExists(JoinPath(dir, "state.json"))) return false;
  }
  const std::string state_path = JoinPath(dir, "state.json");
  nlohmann::json j = nlohmann::json::parse(ReadTextFile(state_path), nullptr, false);
  if (j.is_discarded() || !j.is_object()) Fail(state_path + ": not valid JSON");
  try {
    state->step = j.at("step").get<int64_t>();
    state->epoch = j.at("epoch").get<int64_t>();
    state->position = j.at("position").get<int64_t>();
    state->tokens = j.at("tokens").get<int64_t>();
    state->elapsed_s = j.at("elapsed_s").get<double>();
    state->run = j.at("run").dump();
  } catch (const nlohmann::json::exception& e) {
    Fail(state_path + ": " + e.what());
  }
  SafetensorsFile values(JoinPath(dir, "params.safetensors"));
  SafetensorsFile moments(JoinPath(dir, "optimizer.safetensors"));
  for (int i = 0; i < params->size(); ++i) {
    ReadInto(values, params->name(i), params->shape(i), params->value(i));
    const int64_t off = params->value(i) - params->values().data();
    ReadInto(moments, "m." + params->name(i), params->shape(i), opt->m().data() + off);
    ReadInto(moments, "v." + params->name(i), params->shape(i), opt->v().data() + off);
  }
  return true;
}

}  // namespace tinylora
