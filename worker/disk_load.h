// Device "disk" of a device_map: tensors never staged in RAM, read through the page cache (reclaimable, the node's one
// copy) from files every rank maps.
#pragma once

#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include <ATen/Tensor.h>

#include "worker/node_loader.h"

namespace shardcast {

// Every rank of the group calls it with the same names (of the opened catalog). A safetensors tensor loaded in its own
// dtype is a view of the checkpoint file itself. Any other (a .bin tensor, or one to convert) is written once per
// node by the node leader into a new folder under `offload_folder`, as safetensors in shards of at most 1 GB (the
// leader's transient peak: one such shard, plus for .bin the decoded source shard), mapped by every local rank, and
// the folder removed again, also on failure: the mappings keep the data. `request`'s dtype is resolved. Views are
// read-only under placement shared (a write faults, naming the file) and copy-on-write otherwise. A tensor-parallel
// rule slices the view. Returns (name, tensor) sorted by name.
std::vector<std::pair<std::string, at::Tensor>> load_from_disk(NodeLoader& loader, const Group& group,
                                                               const std::vector<std::string>& names,
                                                               const LoadRequest& request, Placement placement,
                                                               const std::filesystem::path& offload_folder,
                                                               const TensorParallel& tp, Timeout timeout,
                                                               LoadStats* stats);

}  // namespace shardcast
