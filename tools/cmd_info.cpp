#include <fmt/format.h>

#include "shardcast/config.h"
#include "tools/commands.h"
#include "worker/gpu_info.h"

namespace shardcast::cli {

void add_info(CLI::App& app) {
  auto* cmd = app.add_subcommand("info", "Print this build's version and GPU support");
  cmd->callback([] {
    fmt::print("shardcast {}\n", SHARDCAST_VERSION);
    fmt::print("gpu        {}\n", describe(query_gpu_info()));
  });
}

}  // namespace shardcast::cli
