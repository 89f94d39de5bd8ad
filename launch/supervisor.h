// Runs a node's ranks as child processes and watches them, as torchrun's agent does: each child's stdout and stderr
// stream through with a "[rankN]: " prefix on every line; SIGINT, SIGTERM and SIGHUP are forwarded; when a child fails
// the others are stopped (SIGTERM, then SIGKILL after a grace period) and the launcher exits with that child's status.
#pragma once

#include <chrono>
#include <string>
#include <utility>
#include <vector>

namespace shardcast {

struct ChildSpec {
  std::vector<std::string> argv;                         // argv[0] is looked up in PATH
  std::vector<std::pair<std::string, std::string>> env;  // set on top of the launcher's environment
  std::string name;                                      // "rank 3": in the launcher's messages
  std::string prefix;                                    // "[rank3]: ": before each line of the child's output
};

struct SupervisorOptions {
  std::chrono::milliseconds stop_grace{std::chrono::seconds(10)};  // SIGTERM to SIGKILL when stopping the children
};

// Starts every child and returns when all have ended: 0 when all exited 0; else the first failed child's exit status
// (128 + signal when a signal killed it), or 128 + the signal that stopped the launcher. Says on stderr which child
// failed and how.
int supervise(const std::vector<ChildSpec>& children, const SupervisorOptions& options);

}  // namespace shardcast
