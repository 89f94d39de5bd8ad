#include "coordinator/catalog_wire.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace shardcast {

using nlohmann::json;

std::string encode_catalog(const Catalog& c) {
  json j;
  j["root"] = c.root.string();
  j["index"] = c.index_path.string();
  j["format"] = static_cast<int>(c.format);
  if (c.index_total_size) j["total_size"] = *c.index_total_size;
  j["config_dtype"] = c.config_dtype;
  j["config_problem"] = c.config_problem;
  j["shards"] = json::array();
  for (const ShardInfo& s : c.shards) {
    j["shards"].push_back({{"file", s.file},
                           {"path", s.path.string()},
                           {"format", static_cast<int>(s.format)},
                           {"size", s.file_size},
                           {"identity", {s.identity.size, s.identity.inode, s.identity.mtime_ns}},
                           {"network_fs", s.network_fs},
                           {"data_start", s.data_start},
                           {"metadata", s.metadata},
                           {"tensors", s.tensor_count},
                           {"readable", s.readable}});
  }
  j["tensors"] = json::array();
  for (const TensorInfo& t : c.tensors) {
    j["tensors"].push_back(
        {t.name, static_cast<int>(t.dtype), t.shape, t.shard, t.has_file_range, t.file_offset, t.tied_to});
  }
  return j.dump();
}

Catalog decode_catalog(const std::string& bytes) {
  try {
    json j = json::parse(bytes);
    Catalog c;
    c.root = j.at("root").get<std::string>();
    c.index_path = j.at("index").get<std::string>();
    c.format = static_cast<CheckpointFormat>(j.at("format").get<int>());
    if (j.contains("total_size")) c.index_total_size = j["total_size"].get<uint64_t>();
    c.config_dtype = j.at("config_dtype").get<std::string>();
    c.config_problem = j.at("config_problem").get<std::string>();
    for (const json& s : j.at("shards")) {
      ShardInfo shard;
      shard.file = s.at("file").get<std::string>();
      shard.path = s.at("path").get<std::string>();
      shard.format = static_cast<CheckpointFormat>(s.at("format").get<int>());
      shard.file_size = s.at("size").get<uint64_t>();
      const json& id = s.at("identity");
      shard.identity = {id.at(0).get<uint64_t>(), id.at(1).get<uint64_t>(), id.at(2).get<int64_t>()};
      shard.network_fs = s.at("network_fs").get<bool>();
      shard.data_start = s.at("data_start").get<uint64_t>();
      shard.metadata = s.at("metadata").get<std::map<std::string, std::string>>();
      shard.tensor_count = s.at("tensors").get<size_t>();
      shard.readable = s.at("readable").get<bool>();
      c.shards.push_back(std::move(shard));
    }
    for (const json& t : j.at("tensors")) {
      TensorInfo info;
      info.name = t.at(0).get<std::string>();
      info.dtype = static_cast<DType>(t.at(1).get<int>());
      info.shape = t.at(2).get<std::vector<int64_t>>();
      info.shard = t.at(3).get<uint32_t>();
      info.has_file_range = t.at(4).get<bool>();
      info.file_offset = t.at(5).get<uint64_t>();
      info.tied_to = t.at(6).get<std::string>();
      c.tensors.push_back(std::move(info));
    }
    return c;
  } catch (const json::exception& e) {
    throw Error(ErrorCode::kInvalidArgument, fmt::format("malformed catalog from rank 0: {}", e.what()));
  }
}

}  // namespace shardcast
