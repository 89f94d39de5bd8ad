// The public C++ API: a Session per process, load() into a state dict, load_into() an existing torch::nn::Module.
#pragma once

#include <chrono>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <torch/nn/module.h>
#include <torch/ordered_dict.h>

#include "coordinator/tensor_parallel.h"
#include "launch/topology.h"
#include "worker/device_placement.h"
#include "worker/node_loader.h"

namespace shardcast {

struct LoadOptions {
  Placement placement = Placement::kShared;  // shared (read-only views), cow, private copies, or cuda
  // shared, cow, private: tensors in their file's dtype may be mappings of the safetensors files themselves (the page
  // cache is the node's one copy; nothing staged in /dev/shm). auto: unless on a network file system. LoadStats'
  // tensor_sources says which tensors were mapped, and why the others were staged.
  MapFiles map_files = MapFiles::kAuto;
  // Floating tensors: "keep" each one's own dtype; "auto" as transformers' torch_dtype="auto" (config.json's
  // torch_dtype, else the first floating tensor's); or bf16, f16, f32, f64. Converted once per node (or on the GPU).
  std::string dtype = "keep";
  std::vector<std::string> keep_in_fp32;  // with dtype f16/bf16: modules loaded in F32 (transformers' keep_in_fp32)
  std::vector<std::string> tensors;       // empty = all; "prefix*" or exact names
  std::filesystem::path shm_dir;          // empty: /dev/shm (or $SHARDCAST_SHM_DIR); else file-backed segments here
  std::chrono::seconds timeout{600};      // for each wait between ranks, staging included
  // Keep the node's staged copy this long after the load (docs/loading.md "Kept copies"): the next job on the node
  // asking for the same bytes attaches to it and reads nothing. 0: keep nothing. Placement shared, cow, private and
  // the device_map's "cpu" part; LoadStats::kept says what became of it.
  std::chrono::seconds keep_for{0};
  bool parallel_read = true;  // every local rank reads part of the shards (false: the leader alone)
  // Across nodes each node reads at most S/nodes plus this; a segment or tensor is cut between nodes only beyond it.
  uint64_t node_share_slack = 64ull << 20;
  GpuOptions gpu;  // placement cuda: device, transport, ring
  // Tensor-parallel slices: tensors matching a rule come back as this rank's slice (rank r holds slice r % tp.size;
  // tp.rank is ignored). Views for shared/cow, copies of the slice alone for private and cuda.
  TensorParallel tp;
  // Where each tensor lives (docs/loading.md "device_map"): module or parameter prefixes -> "cuda" (the rank's GPU),
  // "cuda:K", "cpu" (the node's one copy, by `placement`: shared, cow or private) or "disk" (mapped from the checkpoint
  // file, or from offload_folder). Empty: every tensor by `placement`.
  DeviceMap device_map;
  // "auto", "balanced" or "sequential": plan the map (accelerate's infer_auto_device_map) within max_memory, keeping
  // no_split_modules whole; replaces device_map.
  std::string device_map_strategy;
  std::vector<std::pair<std::string, uint64_t>> max_memory;  // "cuda"/"cuda:K"/"cpu"/"disk" -> bytes; empty: free
  std::vector<std::string> no_split_modules;  // module paths (load_into a Module: also class names, Module::name())
  std::filesystem::path offload_folder;       // where disk tensors that cannot be mapped in place are written
  // Called as each step of each batch starts: "create", "stage", "attach", "materialize" (progress displays).
  std::function<void(const std::string& step, size_t batch, size_t batches)> progress;
  // Called as the node's copy fills: bytes of this load done and in all (byte progress bars).
  std::function<void(uint64_t done, uint64_t total)> progress_bytes;
};

using StateDict = torch::OrderedDict<std::string, torch::Tensor>;

// A module's tensors by name, as state_dict() lists them: tied parameters appear under each of their names and share
// one TensorImpl. What load_into fills (or, with assign, replaces).
using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

struct LoadReport {
  std::vector<std::string> missing_keys;     // in the module, not in the checkpoint
  std::vector<std::string> unexpected_keys;  // in the checkpoint, not in the module
  std::vector<std::string> mismatched_keys;  // "name: checkpoint [a,b] vs module [c,d]"
  size_t loaded = 0;                         // module tensors that received checkpoint data
  LoadStats stats;                           // with a device_map: stats.device_map, stats.device_bytes
};

// What a device_map comes to for a checkpoint, without loading it (Session::plan, `shardcast plan`).
struct DevicePlan {
  DeviceMap device_map;                                        // resolved (planned for a strategy)
  std::vector<std::pair<std::string, uint64_t>> device_bytes;  // tensor bytes per device
  std::vector<std::pair<std::string, uint64_t>> budgets;       // a strategy's budgets (UINT64_MAX: unbounded)
  size_t tensors = 0;
  uint64_t tensor_bytes = 0;
};

// Writes a state dict as a Hugging Face style sharded safetensors checkpoint into a new or empty directory:
// model-00001-of-0000N.safetensors + model.safetensors.index.json, or one model.safetensors when it fits.
// max_shard_size as transformers reads it ("5GB" = 5x10^9, "2GiB" = 2x2^30). safe_serialization = false writes
// torch.save shards instead (pytorch_model-0000K-of-0000N.bin + pytorch_model.bin.index.json). Returns the files
// written.
std::vector<std::filesystem::path> save_sharded(const StateDict& state, const std::filesystem::path& dir,
                                                const std::string& max_shard_size = "5GB",
                                                bool safe_serialization = true);

class Session {
 public:
  // Whatever launched this process (launch/launch_env.h): MPI under mpirun, srun --mpi=pmix or PMI launchers; a c10d
  // TCPStore under torchrun or shardcast-run; otherwise a job of one. `timeout` bounds meeting the other ranks.
  static Session from_env(Timeout timeout = std::chrono::minutes(2));
  // Any communicator (forked test ranks use a file store); `env` supplies the job id and virtual nodes.
  explicit Session(std::unique_ptr<Communicator> world, Timeout timeout = std::chrono::minutes(2),
                   const LaunchEnv& env = detect_launch_env());
  ~Session();
  Session(Session&&) noexcept;
  Session& operator=(Session&&) noexcept;

  const Topology& topology() const;

  // Every tensor (or those options.tensors selects), as the placement says.
  StateDict load(const std::filesystem::path& checkpoint, const LoadOptions& options = {});

  // Fills the module's parameters and buffers by name without a second copy: with shared/cow they become views of the
  // node's segments; with private they are filled in place. strict: missing, unexpected or mismatched keys throw
  // kInvalidArgument (after listing them); otherwise they are only reported. Tied parameters are loaded once.
  LoadReport load_into(torch::nn::Module& module, const std::filesystem::path& checkpoint,
                       const LoadOptions& options = {}, bool strict = true);

  // The same over named tensors (the Python binding passes a module's state_dict(keep_vars=True)). assign = false:
  // each target keeps its identity and is filled as above (a target on the meta device is an error). assign = true:
  // each loaded target's tensor is replaced by the loaded one (every name of a tied group by the same tensor), as
  // nn.Module.load_state_dict(assign=True) does; the caller puts them into its module. Targets may be on meta.
  LoadReport load_into(NamedTensors& targets, const std::filesystem::path& checkpoint, const LoadOptions& options,
                       bool strict, bool assign);

  // The device_map (options.device_map or device_map_strategy) this load would use, without loading: every rank of
  // the session calls it; a strategy is planned on rank 0 with budgets all ranks agree on.
  DevicePlan plan(const std::filesystem::path& checkpoint, const LoadOptions& options = {});

  const LoadStats& last_stats() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace shardcast
