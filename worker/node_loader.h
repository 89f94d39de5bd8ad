// The rank side of one load: rank 0 reads the catalog, every node stages its segments once (the leader creates them,
// the local ranks fill them), every rank maps them, and the leader unlinks the names once all have attached.
// Torch-free: the torch bridge turns the LoadedTensors into torch::Tensor.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "coordinator/catalog.h"
#include "coordinator/plan.h"
#include "launch/topology.h"
#include "shm/segment.h"

namespace shardcast {

enum class Placement {
  kShared,       // read-only zero-copy views of the node's segments (writing to them faults)
  kCopyOnWrite,  // zero-copy views whose writes stay in the writing rank (private mapping)
  kPrivate,      // the rank's own copies, staged one shard at a time: peak = model + one shard
};
std::string_view placement_name(Placement placement);
Placement parse_placement(const std::string& name);  // "shared", "cow", "private"; throws kInvalidArgument

struct NodeLoadOptions {
  Placement placement = Placement::kShared;
  LoadRequest request;
  // When set, chooses request.tensors from the catalog (load_into asks for exactly the module's keys).
  std::function<std::vector<std::string>(const Catalog&)> select;
  shm::Location location;  // where segments live: /dev/shm, or a directory (--shm-dir)
  // Called as each step starts ("create", "stage", "attach", "materialize") with the batch number and count: the
  // CLI's progress display, and tests that make a rank fail at a chosen point.
  std::function<void(const std::string& step, size_t batch, size_t batches)> on_step;
  Timeout timeout = std::chrono::minutes(10);  // for each wait between ranks (staging included)
};

struct LoadedTensor {
  const TensorInfo* info = nullptr;  // name, source dtype, shape
  DType dtype = DType::kF32;         // as staged
  uint8_t* data = nullptr;           // in a segment mapping; valid while `mapping` lives
  uint64_t nbytes = 0;
  std::shared_ptr<shm::Segment> mapping;
};

struct PhaseTime {
  std::string name;
  double seconds = 0;
};

struct LoadStats {
  std::vector<PhaseTime> phases;
  uint64_t node_bytes_staged = 0;  // the node's segments (plan total)
  uint64_t rank_bytes_staged = 0;  // what this rank wrote into them
  uint64_t rank_bytes_read = 0;    // from checkpoint files, by this rank (headers and index included)
  size_t tensors = 0;
  size_t segments = 0;
};

class NodeLoader {
 public:
  explicit NodeLoader(Group& group) : group_(group) {}

  // Loads `checkpoint`. consume() runs once per batch while the batch's segments are mapped (for kPrivate it must
  // copy; for shared/cow the tensors keep their mapping alive through LoadedTensor::mapping).
  LoadStats load(const std::filesystem::path& checkpoint, const NodeLoadOptions& options,
                 const std::function<void(std::vector<LoadedTensor>&)>& consume);

  const Catalog& catalog() const { return catalog_; }

 private:
  // Every rank of the job reports its outcome of `step`; if any failed, all throw (the failing rank its own error).
  void agree(const std::string& step, const std::string& my_error, Timeout timeout);

  Group& group_;
  Catalog catalog_;
  int load_count_ = 0;
};

}  // namespace shardcast
