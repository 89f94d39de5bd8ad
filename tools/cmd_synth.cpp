#include <fmt/format.h>

#include "coordinator/synth.h"
#include "core/error.h"
#include "core/size.h"
#include "tools/cli_checks.h"
#include "tools/commands.h"

namespace shardcast::cli {

void add_synth(CLI::App& app) {
  auto* cmd = app.add_subcommand("synth", "Write a deterministic, transformer-shaped checkpoint of a given size");
  static std::string dir, size = "256MB", max_shard, format = "safetensors", dtypes = "all";
  cmd->add_option("DIR", dir, "new or empty output directory")->required();
  cmd->add_option("--size", size, "total tensor bytes")->check(size_at_least(1))->capture_default_str();
  cmd->add_option("--max-shard-size", max_shard, "largest shard (default: a quarter of --size)")
      ->check(size_at_least(1));
  cmd->add_option("--format", format, "safetensors or bin")
      ->check(CLI::IsMember({"safetensors", "bin"}))
      ->capture_default_str();
  cmd->add_option("--dtypes", dtypes,
                  "all: every safetensors dtype; torch: only what Debian's LibTorch 1.13 loads (no U16/U32/U64/F8)")
      ->check(CLI::IsMember({"all", "torch"}))
      ->capture_default_str();
  cmd->callback([] {
    uint64_t bytes = parse_size(size);
    uint64_t shard = max_shard.empty() ? 0 : parse_size(max_shard);
    synthesize_checkpoint(dir, bytes, shard,
                          format == "bin" ? CheckpointFormat::kTorchBin : CheckpointFormat::kSafetensors,
                          dtypes == "torch");
    fmt::print("wrote a {} {} checkpoint to {}\n", format_size(bytes), format, dir);
  });
}

}  // namespace shardcast::cli
