// Placement cuda on the torch side: finds and sets up each rank's device, allocates its tensors there, casts on the
// device when another dtype is asked, and runs the ring (safetensors) or the one-shard-at-a-time staging (.bin).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include <ATen/Tensor.h>

#include "worker/node_loader.h"

namespace shardcast {

struct GpuOptions {
  int device = -1;                 // CUDA device index; -1: the rank's LOCAL_RANK
  std::string transport = "auto";  // auto, h2d, nccl, scatter (worker/node_loader.h: Transport)
  int ring_slots = 2;              // pinned node-shared buffers: host memory stays at slots x slot bytes
  uint64_t ring_slot_bytes = 256ull << 20;
  bool host_stand_in = false;  // host memory plays the GPU: tests and CI run the GPU path without one
};

// Loads `checkpoint` onto this rank's device: (name, tensor) pairs, each the rank's tensor-parallel slice when a rule
// matches. Every rank of the group calls it; a rank without a usable device fails all of them, naming it.
std::vector<std::pair<std::string, at::Tensor>> load_on_device(NodeLoader& loader, const Group& group,
                                                               const std::filesystem::path& checkpoint,
                                                               const NodeLoadOptions& options, const GpuOptions& gpu,
                                                               LoadStats* stats);

// The same for a catalog `loader` has opened (a device_map load opens it once for all its devices).
std::vector<std::pair<std::string, at::Tensor>> load_on_device_opened(NodeLoader& loader, const Group& group,
                                                                      const NodeLoadOptions& options,
                                                                      const GpuOptions& gpu, LoadStats* stats);

}  // namespace shardcast
