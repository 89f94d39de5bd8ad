// What GPU support this build and this machine have, for `shardcast info` and for clear errors when GPU placement
// is asked for without a GPU.
#pragma once

#include <cstdint>
#include <string>

namespace shardcast {

struct GpuInfo {
  bool built_with_cuda = false;  // SHARDCAST_HAVE_CUDA
  int cuda_runtime_version = 0;  // e.g. 13000
  int cuda_driver_version = 0;   // 0 when no driver is installed
  int nccl_version = 0;          // e.g. 22805
  int device_count = 0;
  std::string problem;  // why no device is usable, empty when device_count > 0
};

GpuInfo query_gpu_info();

// Free bytes on CUDA device `ordinal` (cudaMemGetInfo), or 0 when there is no such device or no CUDA: the GPU budget of
// device_map "auto" when max_memory does not give one.
uint64_t gpu_free_bytes(int ordinal);
std::string describe(const GpuInfo& info);

}  // namespace shardcast
