#include "coordinator/catalog.h"

#include <algorithm>
#include <cstdio>
#include <set>

#include <fmt/format.h>

#include "coordinator/index.h"
#include "coordinator/json_strict.h"
#include "coordinator/safetensors.h"
#include "coordinator/torch_bin.h"
#include "core/file.h"

namespace shardcast {
namespace fs = std::filesystem;
namespace {

bool ends_with(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

CheckpointFormat format_of_file(const std::string& name) {
  return ends_with(name, ".safetensors") ? CheckpointFormat::kSafetensors : CheckpointFormat::kTorchBin;
}

// transformers writes the model's dtype as "torch_dtype" (and, since 4.56, "dtype") in config.json.
void read_config_dtype(Catalog& catalog) {
  const fs::path path = catalog.root / "config.json";
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) return;
  try {
    if (fs::file_size(path) > (16u << 20)) throw Error(ErrorCode::kCorruptCheckpoint, "it is over 16 MiB");
    const nlohmann::json config = parse_json_strict(read_text_file(path), path.string(), "config.json");
    for (const char* key : {"torch_dtype", "dtype"}) {
      if (config.is_object() && config.contains(key) && config[key].is_string()) {
        catalog.config_dtype = config[key].get<std::string>();
        return;
      }
    }
  } catch (const std::exception& e) {
    catalog.config_problem = fmt::format("'{}': {}", path.string(), e.what());
  }
}

struct Located {
  fs::path root;
  fs::path index;   // empty when single file
  fs::path single;  // empty when indexed
};

Located locate(const fs::path& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    for (const char* name :
         {"model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json", "pytorch_model.bin"}) {
      fs::path candidate = path / name;
      if (fs::exists(candidate, ec)) {
        return ends_with(name, ".json") ? Located{path, candidate, {}} : Located{path, {}, candidate};
      }
    }
    throw Error(ErrorCode::kInvalidArgument,
                fmt::format("'{}' holds no checkpoint: looked for model.safetensors.index.json, model.safetensors, "
                            "pytorch_model.bin.index.json and pytorch_model.bin",
                            path.string()));
  }
  if (!fs::exists(path, ec)) {
    throw Error(ErrorCode::kInvalidArgument, fmt::format("checkpoint '{}' does not exist", path.string()));
  }
  fs::path root = path.has_parent_path() ? path.parent_path() : fs::path(".");
  if (ends_with(path.filename().string(), ".json")) return Located{root, path, {}};
  return Located{root, {}, path};
}

// What the shard's file is as rank 0 reads it: its size, its identity (mappings are checked against it), its file
// system.
void record_file(ShardInfo& shard, const File& file) {
  shard.identity = file.identity();
  shard.file_size = shard.identity.size;
  shard.network_fs = file.on_network_fs();
}

// Reads one shard's tensors into the catalog; the shard's own entry is already in catalog.shards.
void read_shard(Catalog& catalog, uint32_t shard_index, std::vector<TensorInfo>* out) {
  ShardInfo& shard = catalog.shards[shard_index];
  if (shard.format == CheckpointFormat::kSafetensors) {
    File file = File::open_read(shard.path);
    file.no_readahead();
    record_file(shard, file);
    SafetensorsHeader header = read_safetensors_header(file);
    shard.data_start = header.data_start;
    shard.metadata = header.metadata;
    for (auto& entry : header.tensors) {
      TensorInfo info;
      info.name = std::move(entry.name);
      info.dtype = entry.dtype;
      info.shape = std::move(entry.shape);
      info.shard = shard_index;
      info.has_file_range = true;
      info.file_offset = header.data_start + entry.begin;
      out->push_back(std::move(info));
    }
  } else {
    record_file(shard, File::open_read(shard.path));
    for (auto& t : read_torch_bin_metadata(shard.path)) {
      TensorInfo info;
      info.name = std::move(t.name);
      info.dtype = t.dtype;
      info.shape = std::move(t.shape);
      info.shard = shard_index;
      info.tied_to = std::move(t.tied_to);
      out->push_back(std::move(info));
    }
  }
  shard.tensor_count = out->size();
  shard.readable = true;
}

}  // namespace

std::string shard_context(const Catalog& catalog, uint32_t shard) {
  return fmt::format("reading shard {}/{} '{}'", shard + 1, catalog.shards.size(), catalog.shards[shard].file);
}

std::string_view format_name(CheckpointFormat format) {
  return format == CheckpointFormat::kSafetensors ? "safetensors" : "bin";
}

uint64_t Catalog::tensor_bytes() const {
  uint64_t total = 0;
  for (const TensorInfo& t : tensors) {
    if (t.tied_to.empty()) total += t.nbytes();
  }
  return total;
}

const TensorInfo* Catalog::find(std::string_view name) const {
  auto it = std::lower_bound(tensors.begin(), tensors.end(), name,
                             [](const TensorInfo& t, std::string_view n) { return t.name < n; });
  return it != tensors.end() && it->name == name ? &*it : nullptr;
}

Catalog scan_catalog(const fs::path& path, std::vector<Error>* problems, std::vector<std::string>* warnings) {
  Located where = locate(path);
  Catalog catalog;
  catalog.root = where.root;
  catalog.index_path = where.index;

  CheckpointIndex index;
  if (!where.index.empty()) {
    const std::string label = where.index.string();
    index = parse_index(read_text_file(where.index), label);
    catalog.index_total_size = index.total_size;
    std::set<std::string> files;
    for (const auto& [name, file] : index.weight_map) files.insert(file);
    for (const std::string& file : files) {
      ShardInfo shard;
      shard.file = file;
      shard.format = format_of_file(file);
      try {
        shard.path = resolve_shard_path(catalog.root, file, label);
        if (!fs::exists(shard.path)) {
          throw Error(ErrorCode::kCorruptCheckpoint,
                      fmt::format("'{}': shard '{}' is listed in weight_map but '{}' does not exist", label, file,
                                  shard.path.string()));
        }
      } catch (const Error& e) {
        problems->push_back(e);
        continue;
      }
      catalog.shards.push_back(std::move(shard));
    }
    catalog.format = ends_with(where.index.filename().string(), ".bin.index.json") ? CheckpointFormat::kTorchBin
                                                                                   : CheckpointFormat::kSafetensors;
  } else {
    ShardInfo shard;
    shard.file = where.single.filename().string();
    shard.path = where.single;
    shard.format = format_of_file(shard.file);
    catalog.format = shard.format;
    catalog.shards.push_back(std::move(shard));
  }

  std::map<std::string, uint32_t> found_in;  // tensor -> shard it was read from
  std::set<std::string> unreadable_shards;
  for (uint32_t i = 0; i < catalog.shards.size(); ++i) {
    std::vector<TensorInfo> tensors;
    try {
      read_shard(catalog, i, &tensors);
    } catch (const Error& e) {
      problems->push_back(e.with_context(shard_context(catalog, i)));
      unreadable_shards.insert(catalog.shards[i].file);
      continue;
    }
    for (TensorInfo& t : tensors) {
      const std::string& file = catalog.shards[i].file;
      auto [it, inserted] = found_in.emplace(t.name, i);
      if (!inserted) {
        problems->push_back(
            Error(ErrorCode::kCorruptCheckpoint, fmt::format("tensor '{}' lives in two shards: '{}' and '{}'", t.name,
                                                             catalog.shards[it->second].file, file)));
        continue;
      }
      if (!where.index.empty()) {
        auto mapped = index.weight_map.find(t.name);
        if (mapped == index.weight_map.end()) {
          problems->push_back(Error(ErrorCode::kCorruptCheckpoint,
                                    fmt::format("'{}': tensor '{}' is in shard '{}' but not in weight_map",
                                                where.index.string(), t.name, file)));
          continue;
        }
        if (mapped->second != file) {
          // Reported once, from the weight_map side below, when the mapped shard lacks it.
          continue;
        }
      }
      catalog.tensors.push_back(std::move(t));
    }
  }

  for (const auto& [name, file] : index.weight_map) {
    if (unreadable_shards.count(file)) continue;
    auto it = found_in.find(name);
    bool in_mapped_shard = it != found_in.end() && catalog.shards[it->second].file == file;
    if (in_mapped_shard) continue;
    std::string elsewhere =
        it != found_in.end() ? fmt::format(" (it is in '{}')", catalog.shards[it->second].file) : "";
    problems->push_back(
        Error(ErrorCode::kCorruptCheckpoint,
              fmt::format("'{}': weight_map maps tensor '{}' to '{}', but that shard does not hold it{}",
                          where.index.string(), name, file, elsewhere)));
  }

  std::sort(catalog.tensors.begin(), catalog.tensors.end(),
            [](const TensorInfo& a, const TensorInfo& b) { return a.name < b.name; });

  read_config_dtype(catalog);

  if (catalog.index_total_size && problems->empty()) {
    // transformers counts tied weights once (huggingface_hub) or twice (older shard_checkpoint): accept either.
    uint64_t once = catalog.tensor_bytes();
    uint64_t every = 0;
    for (const TensorInfo& t : catalog.tensors) every += t.nbytes();
    if (*catalog.index_total_size != once && *catalog.index_total_size != every) {
      warnings->push_back(fmt::format("'{}': metadata.total_size is {} but the shards hold {} bytes of tensors",
                                      where.index.string(), *catalog.index_total_size, once));
    }
  }
  return catalog;
}

Catalog open_catalog(const fs::path& path) {
  std::vector<Error> problems;
  std::vector<std::string> warnings;
  Catalog catalog = scan_catalog(path, &problems, &warnings);
  if (!problems.empty()) {
    if (problems.size() == 1) throw problems.front();
    throw problems.front().with_context(
        fmt::format("checkpoint '{}' has {} problems (shardcast verify lists them all); the first", path.string(),
                    problems.size()));
  }
  for (const std::string& w : warnings) std::fprintf(stderr, "shardcast: warning: %s\n", w.c_str());
  return catalog;
}

}  // namespace shardcast
