// JSON parsing for checkpoint files: linear in the text, and stricter than nlohmann's defaults where a lenient
// reader would load something other than what the file says (nlohmann keeps the last of two equal keys silently).
#pragma once

#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace shardcast {

// Throws kCorruptCheckpoint "'label': <what> is not valid JSON: ..." (syntax, a number past a double's range,
// anything but whitespace after the value), "... has a NUL byte at byte N", "... has the key 'k' more than once", or
// "... nests deeper than 16 levels" (a deeply nested value would overflow the stack of anything recursing over it).
nlohmann::json parse_json_strict(std::string_view text, const std::string& label, std::string_view what);

}  // namespace shardcast
