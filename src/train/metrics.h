// What a user sees of a training run: metrics.jsonl (one JSON object per logged step) and a
// loss-curve picture (SVG) drawn from it.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>

namespace tinylora {

class MetricsLog {
 public:
  // Opens OUT/metrics.jsonl for appending; with `keep_until_step` >= 0 (a resumed run) first
  // drops lines of steps after it, so the file reads as one uninterrupted run.
  MetricsLog(const std::string& path, int64_t keep_until_step);
  ~MetricsLog();
  void Write(const std::string& json_line);  // one line, flushed
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::FILE* f_ = nullptr;
};

// Draws train "loss" and "val_loss" against "step" from a metrics.jsonl into an SVG file.
void WriteLossCurve(const std::string& metrics_path, const std::string& svg_path,
                    const std::string& title);

}  // namespace tinylora
