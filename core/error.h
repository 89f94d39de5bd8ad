// The one error type of shardcast: a code from a small set and a message that says what to do.
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace shardcast {

enum class ErrorCode {
  kInvalidArgument,    // the caller asked for something impossible (bad option, bad path, unsupported dtype)
  kCorruptCheckpoint,  // a checkpoint file or index breaks its format
  kSystem,             // a system call failed (open, read, mmap, ...)
  kTimeout,            // a wait ran past its deadline
  kRemoteRankFailed,   // another rank reported a failure
  kCuda,               // a CUDA runtime call failed
  kNccl,               // an NCCL call failed
};

const char* error_code_name(ErrorCode code);

class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message, std::vector<int> ranks = {})
      : std::runtime_error(message), code_(code), ranks_(std::move(ranks)) {}

  ErrorCode code() const { return code_; }
  // The other ranks (world numbering) this error is about: the rank that failed, or the ranks a wait timed out on.
  // Empty when the error is this rank's own. Bindings use it (Python's PeerError.ranks).
  const std::vector<int>& ranks() const { return ranks_; }

  // The same error with "context: " in front, added while unwinding (llama.cpp style):
  //   loading shard 3/8 'model-00003-of-00008.safetensors': tensor 'lm_head.weight': ...
  Error with_context(std::string_view context) const;

 private:
  ErrorCode code_;
  std::vector<int> ranks_;
};

// Throws kSystem naming the call, what it acted on and errno's text.
[[noreturn]] void throw_system_error(std::string_view call, std::string_view subject, int errno_value);

}  // namespace shardcast
