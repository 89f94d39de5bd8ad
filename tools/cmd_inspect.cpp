#include <fmt/format.h>

#include "coordinator/inspect.h"
#include "core/size.h"
#include "tools/commands.h"

namespace shardcast::cli {
namespace {

void run_inspect(const std::string& path, bool as_json) {
  const CheckpointSummary s = summarize_checkpoint(path);
  if (as_json) {
    fmt::print("{}\n", summary_json(s).dump(2));
    return;
  }
  const Catalog& catalog = s.catalog;
  fmt::print("checkpoint   {}\n", path);
  fmt::print("format       {}{}\n", format_name(catalog.format),
             catalog.index_path.empty() ? " (single file)"
                                        : fmt::format(" (index {})", catalog.index_path.filename().string()));
  fmt::print("shards       {}, {} on disk", catalog.shards.size(), format_size(s.file_bytes));
  if (s.largest) {
    const ShardInfo& largest = catalog.shards[*s.largest];
    fmt::print(", largest {} ({})", format_size(largest.file_size), largest.file);
  }
  fmt::print("\n");
  fmt::print("tensors      {} holding {}{}\n", catalog.tensors.size(), format_size(catalog.tensor_bytes()),
             s.tied ? fmt::format(" ({} tied to another name)", s.tied) : "");
  if (catalog.index_total_size) fmt::print("total_size   {} (index metadata)\n", *catalog.index_total_size);
  fmt::print("dtypes\n");
  for (const auto& [name, d] : s.dtypes)
    fmt::print("  {:<8} {:>6} tensors  {:>10}\n", name, d.tensors, format_size(d.bytes));
  if (!s.metadata.empty()) {
    fmt::print("metadata\n");
    for (const auto& [k, v] : s.metadata) fmt::print("  {} = {}\n", k, v);
  }
  fmt::print("files\n");
  for (const ShardInfo& shard : catalog.shards)
    fmt::print("  {:<40} {:>10}  {} tensors\n", shard.file, format_size(shard.file_size), shard.tensor_count);
}

}  // namespace

void add_inspect(CLI::App& app) {
  auto* cmd = app.add_subcommand("inspect", "Summarize a checkpoint: shards, tensors, dtypes, sizes, metadata");
  static std::string path;
  static bool as_json = false;
  cmd->add_option("PATH", path, "checkpoint directory, index file, or .safetensors/.bin file")->required();
  cmd->add_flag("--json", as_json, "print JSON instead of text");
  cmd->callback([] { run_inspect(path, as_json); });
}

}  // namespace shardcast::cli
