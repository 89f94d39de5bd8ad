#include "core/error.h"

#include <cstring>

#include <fmt/format.h>

namespace shardcast {

const char* error_code_name(ErrorCode code) {
  switch (code) {
    case ErrorCode::kInvalidArgument: return "invalid argument";
    case ErrorCode::kCorruptCheckpoint: return "corrupt checkpoint";
    case ErrorCode::kSystem: return "system error";
    case ErrorCode::kTimeout: return "timeout";
    case ErrorCode::kRemoteRankFailed: return "remote rank failed";
    case ErrorCode::kCuda: return "CUDA error";
    case ErrorCode::kNccl: return "NCCL error";
  }
  return "unknown error";
}

Error Error::with_context(std::string_view context) const {
  return Error(code_, fmt::format("{}: {}", context, what()), ranks_);
}

void throw_system_error(std::string_view call, std::string_view subject, int errno_value) {
  throw Error(ErrorCode::kSystem,
              fmt::format("{}('{}') failed: {} (errno {})", call, subject, std::strerror(errno_value), errno_value));
}

}  // namespace shardcast
