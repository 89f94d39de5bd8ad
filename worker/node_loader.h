// The rank side of one load: rank 0 reads the catalog, every node stages its segments once (the leader creates them
// unnamed and hands them to the local ranks over the node link, the local ranks fill them), and every rank maps them.
// Torch-free: the torch bridge turns the LoadedTensors into torch::Tensor.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "coordinator/catalog.h"
#include "coordinator/device_map.h"
#include "coordinator/plan.h"
#include "coordinator/tensor_parallel.h"
#include "launch/topology.h"
#include "shm/file_view.h"
#include "shm/node_link.h"
#include "shm/segment.h"
#include "worker/device.h"
#include "worker/kept_load.h"

namespace shardcast {

enum class Placement {
  kShared,       // read-only zero-copy views of the node's segments (writing to them faults)
  kCopyOnWrite,  // zero-copy views whose writes stay in the writing rank (private mapping)
  kPrivate,      // the rank's own copies, staged one shard at a time: peak = model + one shard
  kCuda,         // tensors on the rank's GPU, streamed through a bounded ring of pinned node-shared buffers
};
std::string_view placement_name(Placement placement);
Placement parse_placement(const std::string& name);  // "shared", "cow", "private", "cuda"; throws kInvalidArgument

// How bytes reach the GPUs (placement cuda).
enum class Transport {
  kAuto,     // h2d on one node; across nodes broadcast, or scatter for tensor-parallel slices
  kH2D,      // every rank copies what it needs from its node's pinned ring (each node reads the checkpoint)
  kNccl,     // rank 0 copies each chunk to its GPU and broadcasts it (the job reads the checkpoint once)
  kScatter,  // as nccl, but chunks holding only sliced tensors go to each rank as its slice alone
};
std::string_view transport_name(Transport transport);
Transport parse_transport(const std::string& name);  // "auto", "h2d", "nccl", "scatter"

struct NodeLoadOptions {
  Placement placement = Placement::kShared;
  LoadRequest request;
  // When set, chooses request.tensors from the catalog (load_into asks for exactly the module's keys).
  std::function<std::vector<std::string>(const Catalog&)> select;
  shm::Location location;  // where segments live: /dev/shm, or a directory (--shm-dir)
  // Called as each step starts ("create", "stage", "attach", "materialize") with the batch number and count: the
  // CLI's progress display, and tests that make a rank fail at a chosen point.
  std::function<void(const std::string& step, size_t batch, size_t batches)> on_step;
  // Called as the node's copy fills: bytes of the load done (estimated from this rank's share while a batch stages,
  // exact between batches) and in all. Progress bars.
  std::function<void(uint64_t done, uint64_t total)> on_bytes;
  Timeout timeout = std::chrono::minutes(10);  // for each wait between ranks (staging included)
  TensorParallel tp;                           // tp.rank is ignored: rank r holds slice r % tp.size
  // Keep the node's staged segments this long after the load (worker/kept_load.h); a later load asking for the same
  // bytes reuses them, with or without a keep time of its own. 0: nothing is kept.
  std::chrono::seconds keep_for{0};
};

struct RingOptions {
  Transport transport = Transport::kAuto;
  int slots = 2;
  uint64_t slot_bytes = 256ull << 20;
};

// Where one tensor's bytes go on the device (placement cuda), in the checkpoint's dtype: the caller allocates it for
// the rank's slice and is told when every byte has arrived.
struct DeviceTensorSink {
  std::function<uint8_t*(const TensorInfo& info, const RankSlice& slice, DType target)> allocate;
  std::function<void(const TensorInfo& info)> complete;  // the device has synchronized; cast and keep
};

struct LoadedTensor {
  const TensorInfo* info = nullptr;  // name, source dtype, shape
  DType dtype = DType::kF32;         // as staged
  uint8_t* data = nullptr;           // valid while `mapping` or `file` lives
  uint64_t nbytes = 0;
  std::shared_ptr<shm::Segment> mapping;  // the segment it was staged into
  std::shared_ptr<shm::FileView> file;    // or the checkpoint file it is mapped from
};

struct PhaseTime {
  std::string name;
  double seconds = 0;
};

struct LoadStats {
  std::vector<PhaseTime> phases;
  uint64_t node_bytes_staged = 0;  // the node's segments
  uint64_t node_bytes_mapped = 0;  // mapped from the checkpoint files instead (the page cache holds them)
  uint64_t tensor_bytes = 0;       // the loaded tensors' bytes, tied weights once
  uint64_t rank_bytes_staged = 0;  // what this rank wrote into them
  uint64_t rank_bytes_read = 0;    // from checkpoint files, by this rank (headers and index included)
  size_t tensors = 0;
  size_t segments = 0;
  // Each tensor's source on this node: mapped from its file, or staged and why (coordinator/plan.h).
  std::vector<std::pair<std::string, TensorSource>> tensor_sources;
  KeptUse kept;  // this node's kept copy: reused, kept, or why not (the note is the node leader's)
  // Placement cuda:
  std::string device;                        // "cuda:0 (NVIDIA H100 80GB HBM3)"
  std::string transport_choice;              // what auto chose and why
  std::map<std::string, size_t> transports;  // tensors by how they arrived: h2d, broadcast, scatter, staged-shard
  uint64_t ring_bytes = 0;                   // the node's pinned ring (0: no ring on this node)
  uint64_t rank_bytes_to_device = 0;         // host-to-device bytes this rank copied
  uint64_t rank_bytes_received = 0;          // bytes this rank's GPU received over NCCL
  // With a device_map: the map as resolved (planned for "auto"), and the tensor bytes each device holds.
  DeviceMap device_map;
  std::vector<std::pair<std::string, uint64_t>> device_bytes;
};

// Which load and batch a segment descriptor belongs to, on the node link (the ring: batch 0xffffffff).
uint64_t descriptor_tag(int load_id, uint64_t batch);

class NodeLoader {
 public:
  explicit NodeLoader(Group& group) : group_(group) {}
  ~NodeLoader();

  // Loads `checkpoint`. consume() runs once per batch while the batch's segments are mapped (for kPrivate it must
  // copy; for shared/cow the tensors keep their mapping alive through LoadedTensor::mapping).
  LoadStats load(const std::filesystem::path& checkpoint, const NodeLoadOptions& options,
                 const std::function<void(std::vector<LoadedTensor>&)>& consume);

  // The same in two steps: rank 0 reads the catalog and every rank gets it (open), then the load of that catalog.
  void open(const std::filesystem::path& checkpoint, Timeout timeout);
  LoadStats load_opened(const NodeLoadOptions& options, const std::function<void(std::vector<LoadedTensor>&)>& consume);

  // Placement cuda for an opened safetensors checkpoint (worker/ring_loader.cpp): the selected tensors stream
  // through a ring of pinned node-shared buffers onto every rank's device, by options.transport.
  LoadStats load_to_device(const NodeLoadOptions& options, const RingOptions& ring, Device& device,
                           const DeviceTensorSink& sink);

  const Catalog& catalog() const { return catalog_; }

  // Every rank of the job reports its outcome of `step`; if any failed, all throw (the failing rank its own error).
  void agree(const std::string& step, const std::string& my_error, Timeout timeout);

 private:
  // agree(), then this rank's own error (`own`) if it had one; a failed step also drops the segment descriptors this
  // rank was sent for the load and will not take.
  void finish_step(const std::string& step, const std::string& my_error, const std::unique_ptr<Error>& own,
                   Timeout timeout);
  // Links the node's ranks on first use (shm/node_link.h) and makes every wait watch the link.
  void link_node(Timeout timeout);
  // Every rank's plan hash and each node leader's kept-copy choice, gathered from the whole job; throws when a rank
  // planned otherwise. Returns each node's choice.
  std::vector<KeptUse> agree_on_plan(uint64_t layout_hash, const KeptUse& kept, Timeout timeout);
  std::string describe_segment(int load_id, const std::string& what) const;

  Group& group_;
  std::unique_ptr<shm::NodeLink> link_;
  Catalog catalog_;
  int load_count_ = 0;
};

}  // namespace shardcast
