// JSON parsing that rejects duplicate keys (nlohmann keeps the last one silently).
#pragma once

#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace shardcast {

// Throws kCorruptCheckpoint "'label': <what> is not valid JSON: ...", "... has the key 'k' more than once", or
// "... nests deeper than 16 levels" (a deeply nested value would overflow the stack of anything recursing over it).
nlohmann::json parse_json_strict(std::string_view text, const std::string& label, std::string_view what);

}  // namespace shardcast
