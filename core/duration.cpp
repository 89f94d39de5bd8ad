#include "core/duration.h"

#include <cctype>
#include <cmath>
#include <cstdlib>
#include <string>

#include <fmt/format.h>

#include "core/error.h"

namespace shardcast {

std::chrono::seconds parse_duration(std::string_view text) {
  auto bad = [&](const char* why) {
    return Error(ErrorCode::kInvalidArgument,
                 fmt::format("duration '{}' {}: write seconds (600) or a number with a unit s, m, h, d (10m, 1h30m)",
                             text, why));
  };
  if (text.empty()) throw bad("is empty");
  double total = 0;
  size_t at = 0;
  while (at < text.size()) {
    const std::string rest(text.substr(at));
    char* end = nullptr;
    const double value = std::strtod(rest.c_str(), &end);
    const size_t used = static_cast<size_t>(end - rest.c_str());
    if (used == 0 || !std::isdigit(static_cast<unsigned char>(rest[0])) || !std::isfinite(value)) {
      throw bad("is not a duration");
    }
    at += used;
    if (at == text.size()) {
      if (at != used) throw bad("has a number without a unit at its end");  // "1h30" is ambiguous
      total = value;
      break;
    }
    switch (text[at++]) {
      case 's': total += value; break;
      case 'm': total += value * 60; break;
      case 'h': total += value * 3600; break;
      case 'd': total += value * 86400; break;
      default: throw bad("has an unknown unit");
    }
  }
  if (total > 10.0 * 365 * 86400) throw bad("is longer than ten years");
  return std::chrono::seconds(static_cast<int64_t>(std::llround(total)));
}

std::string format_duration(std::chrono::seconds duration) {
  int64_t s = duration.count();
  const char* sign = s < 0 ? "-" : "";
  s = std::llabs(s);
  if (s < 60) return fmt::format("{}{}s", sign, s);
  if (s < 3600) return fmt::format("{}{}m{:02}s", sign, s / 60, s % 60);
  if (s < 86400) return fmt::format("{}{}h{:02}m", sign, s / 3600, s % 3600 / 60);
  return fmt::format("{}{}d{:02}h", sign, s / 86400, s % 86400 / 3600);
}

}  // namespace shardcast
