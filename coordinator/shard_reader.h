// Brings the bytes of one shard's tensors into memory, one shard at a time (a bounded peak for any checkpoint size).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "coordinator/catalog.h"

namespace shardcast {

// The tensors of one shard in the order read_shard_tensors visits them: by file offset (then name) for safetensors,
// by name for .bin.
std::vector<const TensorInfo*> shard_tensors_in_read_order(const Catalog& catalog, uint32_t shard);

// A .bin shard decoded once: the bytes of each of its catalog tensors, by name. Throws kCorruptCheckpoint when the
// file no longer holds what the catalog says.
std::map<std::string, Bytes> decode_bin_shard(const Catalog& catalog, uint32_t shard);

using TensorVisitor = std::function<void(const TensorInfo& tensor, const Bytes& bytes)>;

// Calls visit for every catalog tensor of shard `shard`, in file order. safetensors: each tensor is read with pread
// into its own buffer; .bin: the shard is decoded once. Errors name the shard and tensor.
void read_shard_tensors(const Catalog& catalog, uint32_t shard, const TensorVisitor& visit);

// Every shard in catalog order.
void read_all_tensors(const Catalog& catalog, const TensorVisitor& visit);

}  // namespace shardcast
