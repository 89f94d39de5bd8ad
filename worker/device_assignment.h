// device_map for a job: which device each selected tensor loads on. An explicit map is resolved on every rank; a
// strategy ("auto", "balanced", "sequential") is planned once, on rank 0, over budgets every rank agrees on, and
// broadcast. Torch-free.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "coordinator/device_map.h"
#include "worker/node_loader.h"

namespace shardcast {

struct DeviceMapOptions {
  DeviceMap map;         // explicit: prefix -> device
  std::string strategy;  // "auto", "balanced" or "sequential" plans the map instead; empty: `map` as given
  // Budgets by device ("cuda", "cuda:K", "cpu", "disk"). Empty: what the node has (free GPU memory less 10%,
  // MemAvailable, free /dev/shm), the least over the job's ranks; disk unbounded unless given.
  std::vector<std::pair<std::string, uint64_t>> max_memory;
};

struct DeviceAssignment {
  DeviceMap map;                                        // resolved: the planned map, or the one given
  std::vector<std::pair<std::string, uint64_t>> bytes;  // per device, tensor bytes (each storage once)
  // The names on each device, devices in fill order (cuda..., cpu, disk), names in the layout's order.
  std::vector<std::pair<std::string, std::vector<std::string>>> parts;
  std::vector<DeviceBudget> budgets;  // a strategy's: what it planned within (disk unbounded: UINT64_MAX)
};

// Every rank calls it with the same layout (the selected tensors) and options. cpu_placement and location say what a
// cpu byte costs the node (private: one copy per local rank) and what /dev/shm holds; gpu_ordinal is the rank's GPU
// for the automatic cuda budget.
DeviceAssignment assign_devices(NodeLoader& loader, const Group& group, const ModelLayout& layout,
                                const DeviceMapOptions& options, Placement cpu_placement, const shm::Location& location,
                                int gpu_ordinal, Timeout timeout);

}  // namespace shardcast
