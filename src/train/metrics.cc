#include "train/metrics.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <vector>

#include "util/error.h"
#include "util/file.h"

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
  const double W = 640, H = 400, left = 60, right = 20, top = 40, bottom = 50;
  double x0 = 0, x1 = 1, y0 = 1e30, y1 = -1e30;
  for (const auto* s : {&train, &val}) {
    for (auto [x, y] : *s) {
      x1 = std::max(x1, x);
      if (std::isfinite(y)) y0 = std::min(y0, y), y1 = std::max(y1, y);
    }
  }
  if (y0 > y1) y0 = 0, y1 = 1;
  if (y1 - y0 < 1e-9) y1 = y0 + 1;
  auto X = [&](double x) { return left + (x - x0) / (x1 - x0) * (W - left - right); };
  auto Y = [&](double y) { return top + (y1 - y) / (y1 - y0) * (H - top - bottom); };
  std::ostringstream svg;
  svg.precision(5);
  svg << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H
      << "\" font-family=\"sans-serif\" font-size=\"12\">\n"
      << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
      << "<text x=\"" << W / 2 << "\" y=\"22\" text-anchor=\"middle\" font-size=\"14\">" << title
      << "</text>\n";
  for (int k = 0; k <= 4; ++k) {  // axes ticks
    const double yv = y0 + (y1 - y0) * k / 4, xv = x0 + (x1 - x0) * k / 4;
    svg << "<line x1=\"" << left << "\" x2=\"" << W - right << "\" y1=\"" << Y(yv) << "\" y2=\""
        << Y(yv) << "\" stroke=\"#ddd\"/>\n"
        << "<text x=\"" << left - 6 << "\" y=\"" << Y(yv) + 4 << "\" text-anchor=\"end\">" << yv
        << "</text>\n"
        << "<text x=\"" << X(xv) << "\" y=\"" << H - bottom + 18 << "\" text-anchor=\"middle\">"
        << static_cast<int64_t>(xv) << "</text>\n";
  }
  svg << "<text x=\"" << W / 2 << "\" y=\"" << H - 12 << "\" text-anchor=\"middle\">step</text>\n";
  auto polyline = [&](const std::vector<std::pair<double, double>>& s, const char* color,
                      const char* label, int row) {
    if (s.empty()) return;
    svg << "<polyline fill=\"none\" stroke=\"" << color << "\" stroke-width=\"1.5\" points=\"";
    for (auto [x, y] : s)
      if (std::isfinite(y)) svg << X(x) << "," << Y(y) << " ";
    svg << "\"/>\n<text x=\"" << W - right - 4 << "\" y=\"" << top + 14 * row
        << "\" text-anchor=\"end\" fill=\"" << color << "\">" << label << "</text>\n";
  };
  polyline(train, "#1f77b4", "train loss", 1);
  polyline(val, "#d62728", "validation loss", 2);
  svg << "</svg>\n";
  WriteFileAtomic(svg_path, svg.str());
}

}  // namespace tinylora
