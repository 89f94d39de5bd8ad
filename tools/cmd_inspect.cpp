#include <algorithm>
#include <map>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "coordinator/catalog.h"
#include "core/size.h"
#include "tools/commands.h"

namespace shardcast::cli {
namespace {

struct DTypeStats {
  size_t tensors = 0;
  uint64_t bytes = 0;
};

void run_inspect(const std::string& path, bool as_json) {
  Catalog catalog = open_catalog(path);
  std::map<std::string, DTypeStats> dtypes;
  for (const TensorInfo& t : catalog.tensors) {
    auto& s = dtypes[std::string(dtype_name(t.dtype))];
    ++s.tensors;
    s.bytes += t.nbytes();
  }
  uint64_t total_file_bytes = 0;
  const ShardInfo* largest = nullptr;
  for (const ShardInfo& s : catalog.shards) {
    total_file_bytes += s.file_size;
    if (!largest || s.file_size > largest->file_size) largest = &s;
  }
  std::map<std::string, std::string> metadata;
  for (const ShardInfo& s : catalog.shards) metadata.insert(s.metadata.begin(), s.metadata.end());
  size_t tied = std::count_if(catalog.tensors.begin(), catalog.tensors.end(),
                              [](const TensorInfo& t) { return !t.tied_to.empty(); });

  if (as_json) {
    nlohmann::ordered_json out;
    out["path"] = path;
    out["format"] = format_name(catalog.format);
    out["index"] = catalog.index_path.empty() ? nlohmann::ordered_json(nullptr)
                                              : nlohmann::ordered_json(catalog.index_path.string());
    out["index_total_size"] =
        catalog.index_total_size ? nlohmann::ordered_json(*catalog.index_total_size) : nlohmann::ordered_json(nullptr);
    out["tensor_count"] = catalog.tensors.size();
    out["tied_tensors"] = tied;
    out["tensor_bytes"] = catalog.tensor_bytes();
    out["file_bytes"] = total_file_bytes;
    out["largest_shard"] = {{"file", largest->file}, {"bytes", largest->file_size}};
    for (const ShardInfo& s : catalog.shards) {
      out["shards"].push_back({{"file", s.file}, {"bytes", s.file_size}, {"tensors", s.tensor_count}});
    }
    for (const auto& [name, s] : dtypes) out["dtypes"][name] = {{"tensors", s.tensors}, {"bytes", s.bytes}};
    out["metadata"] = metadata;
    fmt::print("{}\n", out.dump(2));
    return;
  }
  fmt::print("checkpoint   {}\n", path);
  fmt::print("format       {}{}\n", format_name(catalog.format),
             catalog.index_path.empty() ? " (single file)"
                                        : fmt::format(" (index {})", catalog.index_path.filename().string()));
  fmt::print("shards       {}, {} on disk, largest {} ({})\n", catalog.shards.size(), format_size(total_file_bytes),
             format_size(largest->file_size), largest->file);
  fmt::print("tensors      {} holding {}{}\n", catalog.tensors.size(), format_size(catalog.tensor_bytes()),
             tied ? fmt::format(" ({} tied to another name)", tied) : "");
  if (catalog.index_total_size) fmt::print("total_size   {} (index metadata)\n", *catalog.index_total_size);
  fmt::print("dtypes\n");
  for (const auto& [name, s] : dtypes)
    fmt::print("  {:<8} {:>6} tensors  {:>10}\n", name, s.tensors, format_size(s.bytes));
  if (!metadata.empty()) {
    fmt::print("metadata\n");
    for (const auto& [k, v] : metadata) fmt::print("  {} = {}\n", k, v);
  }
  fmt::print("files\n");
  for (const ShardInfo& s : catalog.shards)
    fmt::print("  {:<40} {:>10}  {} tensors\n", s.file, format_size(s.file_size), s.tensor_count);
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
