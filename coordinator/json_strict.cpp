#include "coordinator/json_strict.h"

#include <set>
#include <vector>

#include <fmt/format.h>

#include "core/error.h"

namespace shardcast {
namespace {
// Checkpoint JSON is two or three levels deep; deeper input is refused before anything recurses over it.
constexpr int kMaxDepth = 16;
}  // namespace

nlohmann::json parse_json_strict(std::string_view text, const std::string& label, std::string_view what) {
  using nlohmann::json;
  std::vector<std::set<std::string>> open_objects;
  std::string duplicate;
  bool too_deep = false;
  auto callback = [&](int depth, json::parse_event_t event, json& parsed) {
    if ((event == json::parse_event_t::object_start || event == json::parse_event_t::array_start) &&
        depth > kMaxDepth) {
      too_deep = true;  // keep parsing flat from here: the value is discarded and the whole parse rejected below
      return false;
    }
    switch (event) {
      case json::parse_event_t::object_start: open_objects.emplace_back(); break;
      case json::parse_event_t::object_end: open_objects.pop_back(); break;
      case json::parse_event_t::key:
        if (!open_objects.back().insert(parsed.get<std::string>()).second && duplicate.empty()) {
          duplicate = parsed.get<std::string>();
        }
        break;
      default: break;
    }
    return true;
  };
  json parsed;
  try {
    parsed = json::parse(text.begin(), text.end(), callback);
  } catch (const json::parse_error& e) {
    throw Error(ErrorCode::kCorruptCheckpoint, fmt::format("'{}': {} is not valid JSON: {}", label, what, e.what()));
  }
  if (too_deep) {
    throw Error(ErrorCode::kCorruptCheckpoint,
                fmt::format("'{}': {} nests deeper than {} levels", label, what, kMaxDepth));
  }
  if (!duplicate.empty()) {
    throw Error(ErrorCode::kCorruptCheckpoint,
                fmt::format("'{}': {} has the key '{}' more than once", label, what, duplicate));
  }
  return parsed;
}

}  // namespace shardcast
