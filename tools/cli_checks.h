// Option validators shared by shardcast, shardcast-bench and shardcast-run, so that a bad value is refused while the
// command line is parsed (exit 2, CLI11 names the option) rather than after a long load. CLI11's own PositiveNumber
// is not used: its message prints the upper bound, DBL_MAX, in 300 digits.
#pragma once

#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <filesystem>
#include <string>

#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include "core/dtype.h"
#include "core/error.h"
#include "core/size.h"

namespace shardcast::cli {

// A value that `parse` (which throws Error on bad input) accepts; its message becomes CLI11's.
template <typename Parse>
CLI::Validator parsed_by(Parse parse, const std::string& name) {
  return CLI::Validator(
      [parse](std::string& text) -> std::string {
        try {
          parse(text);
        } catch (const Error& e) {
          return e.what();
        }
        return {};
      },
      name);
}

// A whole number of at least `min`: timeouts, counts, group sizes, device indices.
inline CLI::Validator whole_number_at_least(int min) {
  return CLI::Validator(
      [min](std::string& text) -> std::string {
        int value = 0;
        const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
        if (ec == std::errc::result_out_of_range) return fmt::format("{} is too large", text);
        if (ec != std::errc() || end != text.data() + text.size()) {
          return fmt::format("'{}' is not a whole number", text);
        }
        if (value < min) return fmt::format("must be at least {}, not {}", min, text);
        return {};
      },
      fmt::format("INT>={}", min));
}

// A byte size as parse_size reads it ("200MB", "2GiB"), of at least `min` bytes.
inline CLI::Validator size_at_least(uint64_t min) {
  return parsed_by(
      [min](const std::string& text) {
        if (parse_size(text) < min) {
          throw Error(ErrorCode::kInvalidArgument, fmt::format("must be at least {} byte(s), not '{}'", min, text));
        }
      },
      "SIZE");
}

// A dtype as users name it ("bf16", "float16", ...); "auto" and "keep" too where the command has them.
inline CLI::Validator dtype_name(bool allow_auto) {
  return CLI::Validator(
      [allow_auto](std::string& name) -> std::string {
        if ((allow_auto && (name == "auto" || name == "keep")) || dtype_from_user_name(name)) return {};
        return fmt::format("unknown dtype '{}'", name);
      },
      "DTYPE");
}

// Why a file cannot be written at `path` (empty when it can): its directory must exist and let this process create
// files, and the path must not be a directory. Checked before the work whose result goes there, not after it.
inline std::string output_file_problem(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (path.empty()) return "the path is empty";
  if (fs::is_directory(path, ec)) return fmt::format("'{}' is a directory, not a file", path);
  fs::path dir = fs::path(path).parent_path();
  if (dir.empty()) dir = ".";
  if (!fs::is_directory(dir, ec))
    return fmt::format("cannot write '{}': directory '{}' does not exist", path, dir.string());
  if (::access(dir.c_str(), W_OK | X_OK) != 0) {
    return fmt::format("cannot write '{}': no permission to create files in '{}' ({})", path, dir.string(),
                       std::strerror(errno));
  }
  return {};
}

inline CLI::Validator output_file() {
  return CLI::Validator([](std::string& path) { return output_file_problem(path); }, "FILE");
}

// A node-shared pinned ring, "2x256MiB": at least two slots (one fills while one drains) of at least one byte.
struct RingShape {
  int slots = 0;
  uint64_t slot_bytes = 0;
};

inline RingShape parse_ring(const std::string& text) {
  const size_t x = text.find('x');
  RingShape ring;
  try {
    if (x == std::string::npos) throw Error(ErrorCode::kInvalidArgument, "no 'x'");
    ring.slots = std::stoi(text.substr(0, x));
    ring.slot_bytes = parse_size(text.substr(x + 1));
  } catch (const std::exception& e) {
    throw Error(ErrorCode::kInvalidArgument, fmt::format("'{}' is not SLOTSxSIZE, e.g. 2x256MiB ({})", text, e.what()));
  }
  if (ring.slots < 2 || ring.slot_bytes == 0) {
    throw Error(
        ErrorCode::kInvalidArgument,
        fmt::format("'{}': the ring needs at least 2 slots of at least 1 byte (one fills while one drains)", text));
  }
  return ring;
}

inline CLI::Validator ring_shape() {
  return parsed_by([](const std::string& text) { parse_ring(text); }, "SLOTSxSIZE");
}

}  // namespace shardcast::cli
