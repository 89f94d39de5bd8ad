// Forked ranks that each open a Session over a file store, and what tests check about their loads: digests, the
// test's own segments in /dev/shm, the error each rank saw.
#pragma once

#include <chrono>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "tests/support/multiproc.h"
#include "tests/support/temp_dir.h"
#include "worker/session.h"

namespace shardcast::testing::forked {

// One digest line per tensor (device tensors are brought to the host first).
std::string digest_of(const StateDict& state);
std::string expected_digest(const std::filesystem::path& checkpoint);

// The job id of the forked ranks of the current test: segments are named after it, so the test can look for its own
// segments while other tests run in parallel.
std::string test_job();

// This test's segments left in /dev/shm.
std::vector<std::string> shardcast_segments();

// Each forked rank opens a session over the file store in `dir` and runs fn. ranks_per_node > 0 groups them into
// virtual nodes (SHARDCAST_RANKS_PER_NODE).
std::vector<RankOutcome> with_sessions(const TempDir& dir, int ranks, const std::function<void(Session&, int)>& fn,
                                       std::chrono::seconds deadline = std::chrono::seconds(120),
                                       int ranks_per_node = 0);

void expect_all_succeeded(const std::vector<RankOutcome>& outcomes);

// The file mapped at `address` in this process, as /proc/self/maps names it ("" when none: anonymous memory).
std::string mapped_file(const void* address);

// Runs fn and writes "<code> <message>" of the error it threw, or "ok", for outcome_file().
void record(const TempDir& dir, int rank, const std::function<void()>& fn);
std::string outcome_file(const TempDir& dir, int rank);

}  // namespace shardcast::testing::forked

#define EXPECT_CONTAINS(haystack, needle) EXPECT_NE(std::string(haystack).find(needle), std::string::npos) << (haystack)
