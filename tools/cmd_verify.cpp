#include <fmt/format.h>

#include "coordinator/verify.h"
#include "core/size.h"
#include "tools/commands.h"

namespace shardcast::cli {

void add_verify(CLI::App& app) {
  auto* cmd = app.add_subcommand("verify", "Validate a checkpoint fully, reading every byte; exit 0 only if sound");
  static std::string path;
  cmd->add_option("PATH", path, "checkpoint directory, index file, or .safetensors/.bin file")->required();
  cmd->callback([] {
    VerifyReport report = verify_checkpoint(path);
    for (const std::string& p : report.problems) fmt::print(stderr, "problem: {}\n", p);
    if (report.problems.empty()) {
      fmt::print("ok: {} shards, {} tensors, {} read\n", report.shards, report.tensors, format_size(report.bytes_read));
    } else {
      fmt::print("FAILED: {} problem(s) in '{}'\n", report.problems.size(), path);
      exit_code = 1;
    }
  });
}

}  // namespace shardcast::cli
