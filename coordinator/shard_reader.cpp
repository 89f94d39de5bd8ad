#include "coordinator/shard_reader.h"

#include <algorithm>
#include <map>

#include <fmt/format.h>

#include "coordinator/torch_bin.h"
#include "core/file.h"

namespace shardcast {

std::vector<const TensorInfo*> shard_tensors_in_read_order(const Catalog& catalog, uint32_t shard) {
  std::vector<const TensorInfo*> tensors;
  for (const TensorInfo& t : catalog.tensors) {  // catalog order is name order
    if (t.shard == shard) tensors.push_back(&t);
  }
  std::stable_sort(tensors.begin(), tensors.end(),
                   [](const TensorInfo* a, const TensorInfo* b) { return a->file_offset < b->file_offset; });
  return tensors;
}

std::map<std::string, Bytes> decode_bin_shard(const Catalog& catalog, uint32_t shard) {
  std::map<std::string, Bytes> decoded;
  for (BinTensor& t : read_torch_bin(catalog.shards.at(shard).path)) decoded.emplace(t.name, std::move(t.bytes));
  for (const TensorInfo& t : catalog.tensors) {
    if (t.shard != shard) continue;
    auto it = decoded.find(t.name);
    if (it == decoded.end() || it->second.size != t.nbytes()) {
      throw Error(ErrorCode::kCorruptCheckpoint, fmt::format("tensor '{}' changed since the catalog was read", t.name));
    }
  }
  return decoded;
}

void read_shard_tensors(const Catalog& catalog, uint32_t shard_index, const TensorVisitor& visit) {
  const ShardInfo& shard = catalog.shards.at(shard_index);
  const std::vector<const TensorInfo*> tensors = shard_tensors_in_read_order(catalog, shard_index);
  try {
    if (shard.format == CheckpointFormat::kSafetensors) {
      File file = File::open_read(shard.path);
      if (file.size() != shard.file_size) {
        throw Error(ErrorCode::kCorruptCheckpoint, fmt::format("'{}' changed size from {} to {} bytes while loading",
                                                               shard.path.string(), shard.file_size, file.size()));
      }
      for (const TensorInfo* t : tensors) {
        std::vector<uint8_t> buffer(t->nbytes());
        file.read_exact_at(buffer.data(), buffer.size(), t->file_offset);
        visit(*t, Bytes::from_vector(std::move(buffer)));
      }
    } else {
      std::map<std::string, Bytes> decoded = decode_bin_shard(catalog, shard_index);
      for (const TensorInfo* t : tensors) visit(*t, decoded.at(t->name));
    }
  } catch (const Error& e) {
    throw e.with_context(shard_context(catalog, shard_index));
  }
}

void read_all_tensors(const Catalog& catalog, const TensorVisitor& visit) {
  for (uint32_t i = 0; i < catalog.shards.size(); ++i) read_shard_tensors(catalog, i, visit);
}

}  // namespace shardcast
