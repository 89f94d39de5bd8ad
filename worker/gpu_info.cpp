#include "worker/gpu_info.h"

#include <fmt/format.h>

#include "shardcast/config.h"

#if SHARDCAST_HAVE_CUDA
#include <cuda_runtime_api.h>
#include <nccl.h>
#endif

namespace shardcast {

GpuInfo query_gpu_info() {
  GpuInfo info;
#if SHARDCAST_HAVE_CUDA
  info.built_with_cuda = true;
  cudaRuntimeGetVersion(&info.cuda_runtime_version);
  cudaDriverGetVersion(&info.cuda_driver_version);
  ncclGetVersion(&info.nccl_version);
  cudaError_t status = cudaGetDeviceCount(&info.device_count);
  if (status != cudaSuccess) {
    info.device_count = 0;
    info.problem = fmt::format("{}: {}", cudaGetErrorName(status), cudaGetErrorString(status));
    cudaGetLastError();
  } else if (info.device_count == 0) {
    info.problem = "no CUDA device visible";
  }
#else
  info.problem = "built without CUDA (SHARDCAST_WITH_CUDA=OFF or no toolkit at configure time)";
#endif
  return info;
}

uint64_t gpu_free_bytes(int ordinal) {
#if SHARDCAST_HAVE_CUDA
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || ordinal < 0 || ordinal >= count) {
    cudaGetLastError();
    return 0;
  }
  int before = 0;
  size_t free = 0, total = 0;
  cudaGetDevice(&before);
  const bool ok = cudaSetDevice(ordinal) == cudaSuccess && cudaMemGetInfo(&free, &total) == cudaSuccess;
  cudaSetDevice(before);
  cudaGetLastError();
  return ok ? free : 0;
#else
  (void)ordinal;
  return 0;
#endif
}

std::string describe(const GpuInfo& info) {
  if (!info.built_with_cuda) return info.problem;
  auto version = [](int v) { return v ? fmt::format("{}.{}", v / 1000, v % 1000 / 10) : std::string("none"); };
  std::string text =
      fmt::format("CUDA runtime {}, driver {}, NCCL {}.{}.{}, {} device(s)", version(info.cuda_runtime_version),
                  version(info.cuda_driver_version), info.nccl_version / 10000, info.nccl_version / 100 % 100,
                  info.nccl_version % 100, info.device_count);
  if (!info.problem.empty()) text += fmt::format(" ({})", info.problem);
  return text;
}

}  // namespace shardcast
