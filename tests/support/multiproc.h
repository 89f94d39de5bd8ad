// Forked ranks without a launcher (after gloo's multiproc_test): each child runs body(rank) and exits 0, or 1 when it
// throws (the message goes to stderr). The parent waits with a deadline and kills what is left.
#pragma once

#include <chrono>
#include <functional>
#include <string>
#include <vector>

namespace shardcast::testing {

struct RankOutcome {
  int exit_code = -1;
  bool signaled = false;
  int signal = 0;
  bool killed_at_deadline = false;
  std::string describe() const;
};

std::vector<RankOutcome> run_ranks(int size, const std::function<void(int rank)>& body,
                                   std::chrono::seconds timeout = std::chrono::seconds(120));

}  // namespace shardcast::testing
