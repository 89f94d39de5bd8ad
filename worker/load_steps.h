// Helpers shared by the loaders' steps (node_loader.cpp, ring_loader.cpp): a step's outcome as text, so a failing rank
// still takes part in the next agreement, and phase timing.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "core/error.h"

namespace shardcast::detail {

using Clock = std::chrono::steady_clock;

inline double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Runs fn; returns "" or the error text (keeping the error in *own for the caller to rethrow after agreeing).
template <typename Fn>
std::string attempt(Fn&& fn, std::unique_ptr<Error>* own) {
  try {
    fn();
    return "";
  } catch (const Error& e) {
    *own = std::make_unique<Error>(e);
    return e.what();
  } catch (const std::exception& e) {
    *own = std::make_unique<Error>(ErrorCode::kSystem, e.what());
    return e.what();
  }
}

}  // namespace shardcast::detail
