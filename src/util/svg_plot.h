// Line plots as SVG files (the training loss curve, the capacity experiment's bits): one
// function, so every plot the project writes looks the same.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace tinylora {

struct PlotSeries {
  std::string label, color;
  std::vector<std::pair<double, double>> points;  // (x, y); non-finite y are skipped
  bool dashed = false;
  bool markers = false;  // a dot at every point (series of one or few points)
};

struct PlotAxes {
  std::string title, x_label, y_label;
  bool log_x = false, log_y = false;  // base 10; points at x <= 0 (y <= 0) are skipped
  bool integer_x = false;             // x tick labels as integers (steps)
};

// Writes the plot to `path` atomically.
void WriteLinePlot(const std::string& path, const PlotAxes& axes,
                   const std::vector<PlotSeries>& series);

}  // namespace tinylora
