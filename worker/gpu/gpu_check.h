// Checks for CUDA runtime and NCCL calls: the call, the error's name and text, file:line; CUDA's sticky error is
// cleared so the next call starts clean, NCCL adds ncclGetLastError. Include only from .cpp files built with CUDA.
#pragma once

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <string>

namespace shardcast::gpu {

[[noreturn]] void throw_cuda_error(cudaError_t status, const char* call, const char* file, int line);
[[noreturn]] void throw_nccl_error(ncclResult_t status, ncclComm_t comm, const char* call, const char* file, int line);

}  // namespace shardcast::gpu

#define SHARDCAST_CUDA_CHECK(call)                                                      \
  do {                                                                                  \
    cudaError_t shardcast_status_ = (call);                                             \
    if (shardcast_status_ != cudaSuccess)                                               \
      ::shardcast::gpu::throw_cuda_error(shardcast_status_, #call, __FILE__, __LINE__); \
  } while (0)

#define SHARDCAST_NCCL_CHECK(comm, call)                                                      \
  do {                                                                                        \
    ncclResult_t shardcast_status_ = (call);                                                  \
    if (shardcast_status_ != ncclSuccess)                                                     \
      ::shardcast::gpu::throw_nccl_error(shardcast_status_, comm, #call, __FILE__, __LINE__); \
  } while (0)
