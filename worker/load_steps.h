// Helpers shared by the loaders' steps (node_loader.cpp, ring_loader.cpp): a step's outcome as text, so a failing rank
// still takes part in the next agreement, and phase timing.
#pragma once

#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
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

// The fault-injection hook of the kill tests (docs/reliability.md): SHARDCAST_KILL_AT=PHASE:RANK makes world rank RANK
// SIGKILL itself as PHASE first starts: catalog, create, stage, attach, materialize, exchange; ring, stream (placement
// cuda).
inline void kill_point(const std::string& phase, int rank) {
  static const char* spec = std::getenv("SHARDCAST_KILL_AT");
  if (spec == nullptr || phase + ":" + std::to_string(rank) != spec) return;
  timespec now{};
  clock_gettime(CLOCK_REALTIME, &now);  // the kill tests time the survivors from here
  std::fprintf(stderr, "shardcast: SHARDCAST_KILL_AT=%s: rank %d (pid %d) kills itself at %lld.%03ld\n", spec, rank,
               ::getpid(), static_cast<long long>(now.tv_sec), now.tv_nsec / 1000000);
  std::fflush(stderr);
  ::kill(::getpid(), SIGKILL);
}

}  // namespace shardcast::detail
