// A small line chart as SVG (no plotting library on these machines): one line per series over shared x values.
#pragma once

#include <string>
#include <vector>

namespace shardcast::bench {

struct Series {
  std::string name;
  std::vector<double> y;  // one value per x; NaN where there is none
};

std::string line_chart_svg(const std::string& title, const std::string& x_label, const std::string& y_label,
                           const std::vector<double>& x, const std::vector<Series>& series);

}  // namespace shardcast::bench
