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
  std::vector<std::vector<int64_t>> index(static_cast<size_t>(params.size()));  // kept alive
  for (int i = 0; i < params.size(); ++i) {
    const std::string& name = params.name(i);
    values.push_back({name, DType::kF32, params.shape(i), params.value(i)});
    if (!params.sparse(i)) {
      moments.push_back({"m." + name, DType::kF32, params.shape(i), opt.m(i)});
      moments.push_back({"v." + name, DType::kF32, params.shape(i), opt.v(i)});
      continue;
    }
    // A segmented tensor: only the segments with state, as (k, segment) rows, with their
    // indices and update counts.
    const std::vector<int> segs = opt.SegmentsWithState(i);
    std::vector<int64_t>& rows = index[static_cast<size_t>(i)];
    for (int s : segs) rows.push_back(s);
    for (int s : segs) rows.push_back(opt.SegmentSteps(i, s));
    const int64_t k = static_cast<int64_t>(segs.size()), n = params.segment_numel(i);
    for (const char* which : {"m.", "v."}) {
      const bool is_m = which[0] == 'm';
      moments.push_back({which + name,
                         DType::kF32,
                         {k, n},
                         nullptr,
                         [&opt, i, segs, is_m, n](const ByteSink& sink) {
                           for (int s : segs) {
                             sink(is_m ? opt.SegmentM(i, s) : opt.SegmentV(i, s),
                                  sizeof(float) * static_cast<size_t>(n));
                           }
                         }});
    }
    moments.push_back({"segments." + name, DType::kI64, {2, k}, rows.data()});
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
    const std::string& name = params->name(i);
    ReadInto(values, name, params->shape(i), params->value(i));
    if (!params->sparse(i)) {
      ReadInto(moments, "m." + name, params->shape(i), opt->m(i));
      ReadInto(moments, "v." + name, params->shape(i), opt->v(i));
      continue;
    }
    const TensorInfo* idx = moments.Find("segments." + name);
    if (idx == nullptr || idx->dtype != DType::kI64 || idx->shape.size() != 2 ||
        idx->shape[0] != 2) {
      Fail(moments.path() + ": tensor 'segments." + name + "' is missing or malformed");
    }
    const int64_t k = idx->shape[1], n = params->segment_numel(i);
    std::vector<int64_t> rows(static_cast<size_t>(2 * k));
    std::memcpy(rows.data(), moments.Data(*idx), idx->nbytes);
    std::vector<float> m(static_cast<size_t>(k * n)), v(m.size());
    ReadInto(moments, "m." + name, {k, n}, m.data());
    ReadInto(moments, "v." + name, {k, n}, v.data());
    for (int64_t r = 0; r < k; ++r) {
      const int64_t s = rows[static_cast<size_t>(r)];
      if (s < 0 || s >= params->segments(i)) {
        Fail(moments.path() + ": tensor 'segments." + name + "' names segment " +
             std::to_string(s) + " of " + std::to_string(params->segments(i)));
      }
      const int seg = static_cast<int>(s);
      std::memcpy(opt->SegmentM(i, seg), &m[static_cast<size_t>(r * n)], sizeof(float) * n);
      std::memcpy(opt->SegmentV(i, seg), &v[static_cast<size_t>(r * n)], sizeof(float) * n);
      opt->SegmentSteps(i, seg) = rows[static_cast<size_t>(k + r)];
    }
  }
  return true;
}

}  // namespace tinylora
