// Runs a program (no shell) with a deadline, capturing stdout and stderr: for CLI tests and the PyTorch checks.
#pragma once

#include <chrono>
#include <string>
#include <vector>

namespace shardcast::testing {

struct CommandResult {
  int exit_code = -1;  // valid when !signaled
  bool signaled = false;
  int signal = 0;
  bool timed_out = false;  // killed at the deadline
  std::string out;
  std::string err;
};

CommandResult run_command(const std::vector<std::string>& argv,
                          std::chrono::seconds timeout = std::chrono::seconds(120));

// run_command({SHARDCAST_CLI_PATH, args...}).
CommandResult run_cli(const std::vector<std::string>& args, std::chrono::seconds timeout = std::chrono::seconds(120));

}  // namespace shardcast::testing
