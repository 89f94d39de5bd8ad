#include <fmt/format.h>

#include "core/error.h"
#include "launch/communicator.h"
#include "launch/launch_env.h"
#include "shardcast/config.h"
#include "tools/cli_checks.h"
#include "tools/commands.h"
#include "worker/gpu_info.h"
#include "worker/session.h"

namespace shardcast::cli {

void add_info(CLI::App& app) {
  auto* cmd = app.add_subcommand("info", "Print this build's version, GPU support and the detected launcher");
  static bool join = false;
  static int timeout_s = 120;
  cmd->add_flag("--join", join, "join the job (every rank runs this) and print each rank's place in it");
  cmd->add_option("--timeout", timeout_s, "seconds to wait for the other ranks")
      ->check(whole_number_at_least(1))
      ->capture_default_str();
  cmd->callback([] {
    if (join) {
      // One line per rank, whole, so that lines of concurrent ranks do not interleave.
      Session session = Session::from_env(std::chrono::seconds(timeout_s));
      fmt::print("{}\n", session.topology().describe());
      return;
    }
    fmt::print("shardcast {}\n", SHARDCAST_VERSION);
    fmt::print("gpu        {}\n", describe(query_gpu_info()));
    fmt::print("comms      {}\n", built_communicators());
    try {
      fmt::print("launcher   {}\n", detect_launch_env().describe());
    } catch (const Error& e) {
      fmt::print("launcher   unusable: {}\n", e.what());
    }
  });
}

}  // namespace shardcast::cli
