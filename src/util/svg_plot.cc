#include "util/svg_plot.h"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "util/file.h"

namespace tinylora {

void WriteLinePlot(const std::string& path, const PlotAxes& axes,
                   const std::vector<PlotSeries>& series) {
  // Coordinates in plot space: log10 where the axis is logarithmic.
  auto px = [&](double x) { return axes.log_x ? std::log10(x) : x; };
  auto py = [&](double y) { return axes.log_y ? std::log10(y) : y; };
  auto usable = [&](double x, double y) {
    return std::isfinite(x) && std::isfinite(y) && (!axes.log_x || x > 0) && (!axes.log_y || y > 0);
  };
  double x0 = 1e300, x1 = -1e300, y0 = 1e300, y1 = -1e300;
  for (const PlotSeries& s : series) {
    for (auto [x, y] : s.points) {
      if (!usable(x, y)) continue;
      x0 = std::min(x0, px(x)), x1 = std::max(x1, px(x));
      y0 = std::min(y0, py(y)), y1 = std::max(y1, py(y));
    }
  }
  if (x0 > x1) x0 = 0, x1 = 1;
  if (y0 > y1) y0 = 0, y1 = 1;
  if (x1 - x0 < 1e-9) x1 = x0 + 1;
  if (y1 - y0 < 1e-9) y1 = y0 + 1;
  const double W = 640, H = 400, left = 70, right = 20, top = 40, bottom = 50;
  auto X = [&](double x) { return left + (px(x) - x0) / (x1 - x0) * (W - left - right); };
  auto Y = [&](double y) { return top + (y1 - py(y)) / (y1 - y0) * (H - top - bottom); };
  auto label = [](double v, bool log, bool integer) {
    std::ostringstream t;
    t.precision(4);
    const double value = log ? std::pow(10.0, v) : v;
    if (integer) {
      t << static_cast<long long>(std::llround(value));
    } else {
      t << value;
    }
    return t.str();
  };
  std::ostringstream svg;
  svg.precision(5);
  svg << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H
      << "\" font-family=\"sans-serif\" font-size=\"12\">\n"
      << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
      << "<text x=\"" << W / 2 << "\" y=\"22\" text-anchor=\"middle\" font-size=\"14\">"
      << axes.title << "</text>\n";
  for (int k = 0; k <= 4; ++k) {  // grid and tick labels
    const double yv = y0 + (y1 - y0) * k / 4, xv = x0 + (x1 - x0) * k / 4;
    const double yp = top + (y1 - yv) / (y1 - y0) * (H - top - bottom);
    const double xp = left + (xv - x0) / (x1 - x0) * (W - left - right);
    svg << "<line x1=\"" << left << "\" x2=\"" << W - right << "\" y1=\"" << yp << "\" y2=\"" << yp
        << "\" stroke=\"#ddd\"/>\n"
        << "<text x=\"" << left - 6 << "\" y=\"" << yp + 4 << "\" text-anchor=\"end\">"
        << label(yv, axes.log_y, false) << "</text>\n"
        << "<text x=\"" << xp << "\" y=\"" << H - bottom + 18 << "\" text-anchor=\"middle\">"
        << label(xv, axes.log_x, axes.integer_x) << "</text>\n";
  }
  svg << "<text x=\"" << W / 2 << "\" y=\"" << H - 12 << "\" text-anchor=\"middle\">"
      << axes.x_label << "</text>\n";
  if (!axes.y_label.empty()) {
    svg << "<text x=\"16\" y=\"" << H / 2 << "\" text-anchor=\"middle\" transform=\"rotate(-90 16 "
        << H / 2 << ")\">" << axes.y_label << "</text>\n";
  }
  int row = 0;
  for (const PlotSeries& s : series) {
    std::vector<std::pair<double, double>> pts;
    for (auto [x, y] : s.points)
      if (usable(x, y)) pts.push_back({X(x), Y(y)});
    if (pts.empty()) continue;
    svg << "<polyline fill=\"none\" stroke=\"" << s.color << "\" stroke-width=\"1.5\""
        << (s.dashed ? " stroke-dasharray=\"5,4\"" : "") << " points=\"";
    for (auto [x, y] : pts) svg << x << "," << y << " ";
    svg << "\"/>\n";
    if (s.markers) {
      for (auto [x, y] : pts)
        svg << "<circle cx=\"" << x << "\" cy=\"" << y << "\" r=\"3\" fill=\"" << s.color
            << "\"/>\n";
    }
    svg << "<text x=\"" << W - right - 4 << "\" y=\"" << top + 14 * ++row
        << "\" text-anchor=\"end\" fill=\"" << s.color << "\">" << s.label << "</text>\n";
  }
  svg << "</svg>\n";
  WriteFileAtomic(path, svg.str());
}

}  // namespace tinylora
