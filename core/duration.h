// Durations as users write them ("10m", "90s", "1h30m") and as shardcast prints them.
#pragma once

#include <chrono>
#include <string>
#include <string_view>

namespace shardcast {

// A plain number is seconds; otherwise numbers each followed by a unit: s, m, h, d ("1h30m", "2.5h"). Throws
// kInvalidArgument naming the text on anything else, on a negative value, or beyond ten years.
std::chrono::seconds parse_duration(std::string_view text);

// "45s", "9m48s", "2h05m", "3d04h": the two largest units.
std::string format_duration(std::chrono::seconds duration);

}  // namespace shardcast
