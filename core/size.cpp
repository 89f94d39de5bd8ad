#include "core/size.h"

#include <cctype>
#include <limits>
#include <string>

#include <fmt/format.h>

#include "core/error.h"

namespace shardcast {
namespace {

bool iends_with(std::string_view text, std::string_view suffix) {
  if (text.size() < suffix.size()) return false;
  for (size_t i = 0; i < suffix.size(); ++i) {
    if (std::toupper(static_cast<unsigned char>(text[text.size() - suffix.size() + i])) != suffix[i]) return false;
  }
  return true;
}

}  // namespace

uint64_t parse_size(std::string_view text) {
  auto invalid = [&](std::string_view why) {
    return Error(
        ErrorCode::kInvalidArgument,
        fmt::format("size '{}' {}; write bytes (1000000) or a number with a unit: 200MB, 5GB, 2GiB", text, why));
  };
  struct Unit {
    std::string_view suffix;
    uint64_t factor;
  };
  // Longest suffixes first so "GIB" is not taken for "B".
  static constexpr Unit kUnits[] = {
      {"KIB", 1ull << 10},   {"MIB", 1ull << 20},      {"GIB", 1ull << 30},
      {"TIB", 1ull << 40},   {"KB", 1000ull},          {"MB", 1000000ull},
      {"GB", 1000000000ull}, {"TB", 1000000000000ull}, {"B", 1},
  };
  std::string_view digits = text;
  uint64_t factor = 1;
  bool bits = false;
  for (const auto& u : kUnits) {
    if (iends_with(text, u.suffix)) {
      digits = text.substr(0, text.size() - u.suffix.size());
      factor = u.factor;
      bits = u.suffix.size() == 2 && text.back() == 'b';  // transformers: "5Gb" is bits; "5Gib" is not
      break;
    }
  }
  if (digits.empty()) throw invalid("has no number");
  uint64_t value = 0;
  for (char c : digits) {
    if (!std::isdigit(static_cast<unsigned char>(c))) throw invalid("is not a whole number with a unit");
    uint64_t digit = static_cast<uint64_t>(c - '0');
    if (value > (std::numeric_limits<uint64_t>::max() - digit) / 10) throw invalid("overflows 64 bits");
    value = value * 10 + digit;
  }
  if (value > std::numeric_limits<uint64_t>::max() / factor) throw invalid("overflows 64 bits");
  value *= factor;
  return bits ? value / 8 : value;
}

std::string format_size(uint64_t bytes) {
  static constexpr std::string_view kUnits[] = {"kB", "MB", "GB", "TB", "PB"};
  if (bytes < 1000) return fmt::format("{} B", bytes);
  double value = static_cast<double>(bytes) / 1000.0;
  size_t unit = 0;
  while (value >= 1000.0 && unit + 1 < std::size(kUnits)) {
    value /= 1000.0;
    ++unit;
  }
  return fmt::format("{:.2f} {}", value, kUnits[unit]);
}

}  // namespace shardcast
