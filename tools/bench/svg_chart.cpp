#include "tools/bench/svg_chart.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

namespace shardcast::bench {

std::string line_chart_svg(const std::string& title, const std::string& x_label, const std::string& y_label,
                           const std::vector<double>& x, const std::vector<Series>& series) {
  const double width = 820, height = 420, left = 60, right = 290, top = 40, bottom = 50;
  const double plot_w = width - left - right, plot_h = height - top - bottom;
  double y_max = 1;
  for (const Series& s : series) {
    for (double v : s.y) {
      if (!std::isnan(v)) y_max = std::max(y_max, v);
    }
  }
  y_max = std::ceil(y_max * 1.1);
  auto px = [&](size_t i) { return left + (x.size() > 1 ? plot_w * i / (x.size() - 1) : plot_w / 2); };
  auto py = [&](double v) { return top + plot_h * (1 - v / y_max); };
  static const char* kColors[] = {"#d62728", "#ff7f0e", "#1f77b4", "#2ca02c", "#9467bd", "#8c564b"};

  std::string svg = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" font-family=\"sans-serif\" "
      "font-size=\"12\">\n"
      "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
      "<text x=\"{}\" y=\"22\" font-size=\"15\" text-anchor=\"middle\">{}</text>\n",
      width, height, left + plot_w / 2, title);
  const int ticks = 5;
  for (int t = 0; t <= ticks; ++t) {
    double v = y_max * t / ticks;
    svg += fmt::format("<line x1=\"{}\" x2=\"{}\" y1=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"#ddd\"/>\n", left, left + plot_w,
                       py(v), py(v));
    svg += fmt::format("<text x=\"{}\" y=\"{:.1f}\" text-anchor=\"end\">{:.1f}</text>\n", left - 6, py(v) + 4, v);
  }
  for (size_t i = 0; i < x.size(); ++i) {
    svg +=
        fmt::format("<text x=\"{:.1f}\" y=\"{}\" text-anchor=\"middle\">{:g}</text>\n", px(i), top + plot_h + 18, x[i]);
  }
  svg += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n", left + plot_w / 2, height - 10,
                     x_label);
  svg += fmt::format("<text transform=\"translate(16,{}) rotate(-90)\" text-anchor=\"middle\">{}</text>\n",
                     top + plot_h / 2, y_label);
  svg += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#333\"/>\n", left, top,
                     plot_w, plot_h);
  for (size_t s = 0; s < series.size(); ++s) {
    const char* color = kColors[s % std::size(kColors)];
    std::string points;
    for (size_t i = 0; i < series[s].y.size() && i < x.size(); ++i) {
      if (std::isnan(series[s].y[i])) continue;  // a skipped configuration
      points += fmt::format("{:.1f},{:.1f} ", px(i), py(series[s].y[i]));
      svg +=
          fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"3\" fill=\"{}\"/>\n", px(i), py(series[s].y[i]), color);
    }
    svg += fmt::format("<polyline points=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\"/>\n", points, color);
    svg += fmt::format("<line x1=\"{}\" x2=\"{}\" y1=\"{}\" y2=\"{}\" stroke=\"{}\" stroke-width=\"2\"/>\n",
                       width - right + 12, width - right + 32, top + 10 + 18 * s, top + 10 + 18 * s, color);
    svg += fmt::format("<text x=\"{}\" y=\"{}\">{}</text>\n", width - right + 38, top + 14 + 18 * s, series[s].name);
  }
  return svg + "</svg>\n";
}

}  // namespace shardcast::bench
