// The pinned host-to-device ceiling that GPU placement is measured against (shardcast-bench gpu).
#include <algorithm>
#include <vector>

#include "worker/device.h"
#include "worker/gpu/gpu_check.h"

namespace shardcast {

double pinned_h2d_bytes_per_second(int ordinal, uint64_t bytes, int repeats) {
  SHARDCAST_CUDA_CHECK(cudaSetDevice(ordinal));
  void* host = nullptr;
  void* device = nullptr;
  cudaStream_t stream = nullptr;
  cudaEvent_t start = nullptr, stop = nullptr;
  auto release = [&] {
    if (start) cudaEventDestroy(start);
    if (stop) cudaEventDestroy(stop);
    if (stream) cudaStreamDestroy(stream);
    if (device) cudaFree(device);
    if (host) cudaFreeHost(host);
  };
  try {
    SHARDCAST_CUDA_CHECK(cudaHostAlloc(&host, bytes, cudaHostAllocDefault));
    SHARDCAST_CUDA_CHECK(cudaMalloc(&device, bytes));
    SHARDCAST_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    SHARDCAST_CUDA_CHECK(cudaEventCreate(&start));
    SHARDCAST_CUDA_CHECK(cudaEventCreate(&stop));
    std::fill_n(static_cast<char*>(host), bytes, 1);  // fault every page in before timing
    std::vector<double> rates;
    for (int i = -1; i < repeats; ++i) {  // i = -1: warm-up
      SHARDCAST_CUDA_CHECK(cudaEventRecord(start, stream));
      SHARDCAST_CUDA_CHECK(cudaMemcpyAsync(device, host, bytes, cudaMemcpyHostToDevice, stream));
      SHARDCAST_CUDA_CHECK(cudaEventRecord(stop, stream));
      SHARDCAST_CUDA_CHECK(cudaEventSynchronize(stop));
      float ms = 0;
      SHARDCAST_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
      if (i >= 0) rates.push_back(bytes / (ms / 1000.0));
    }
    release();
    std::sort(rates.begin(), rates.end());
    return rates[rates.size() / 2];
  } catch (...) {
    release();
    throw;
  }
}

}  // namespace shardcast
