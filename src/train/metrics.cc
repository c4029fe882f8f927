#include "train/metrics.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <vector>

#include "util/error.h"
#include "util/file.h"
#include "util/svg_plot.h"

namespace tinylora {

MetricsLog::MetricsLog(const std::string& path, int64_t keep_until_step) : path_(path) {
  if (keep_until_step >= 0 && FileExists(path)) {
    std::istringstream in(ReadTextFile(path));
    std::string line, kept;
    while (std::getline(in, line)) {
      auto j = nlohmann::json::parse(line, nullptr, false);
      if (j.is_object() && j.contains("step") && j["step"].is_number_integer() &&
          j["step"].get<int64_t>() <= keep_until_step) {
        kept += line + "\n";
      }
    }
    WriteFileAtomic(path, kept);
  } else if (keep_until_step < 0) {
    WriteFileAtomic(path, "");
  }
  f_ = std::fopen(path.c_str(), "a");
  if (f_ == nullptr) FailRuntime(path + ": cannot open for writing");
}

MetricsLog::~MetricsLog() {
  if (f_ != nullptr) std::fclose(f_);
}

void MetricsLog::Write(const std::string& json_line) {
  std::fputs(json_line.c_str(), f_);
  std::fputc('\n', f_);
  std::fflush(f_);
}

void WriteLossCurve(const std::string& metrics_path, const std::string& svg_path,
                    const std::string& title) {
  std::vector<std::pair<double, double>> train, val;
  std::istringstream in(FileExists(metrics_path) ? ReadTextFile(metrics_path) : "");
  std::string line;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (!j.is_object() || !j.contains("step")) continue;
    const double step = j["step"].get<double>();
    if (j.contains("loss") && j["loss"].is_number())
      train.push_back({step, j["loss"].get<double>()});
    if (j.contains("val_loss") && j["val_loss"].is_number())
      val.push_back({step, j["val_loss"].get<double>()});
  }
  PlotAxes axes;
  axes.title = title;
  axes.x_label = "step";
  axes.integer_x = true;
  WriteLinePlot(
      svg_path, axes,
      {PlotSeries{"train loss", "#1f77b4", train}, PlotSeries{"validation loss", "#d62728", val}});
}

}  // namespace tinylora
