#include "worker/gpu/gpu_check.h"

#include <unistd.h>

#include <fmt/format.h>

#include "core/error.h"

namespace shardcast::gpu {
namespace {

std::string where(const char* file, int line) {
  char host[256] = "?";
  gethostname(host, sizeof(host) - 1);
  return fmt::format("{}:{} on {} pid {}", file, line, host, getpid());
}

}  // namespace

void throw_cuda_error(cudaError_t status, const char* call, const char* file, int line) {
  cudaGetLastError();  // clear the sticky error so later calls are not reported as failing too
  throw Error(ErrorCode::kCuda, fmt::format("{} failed: {} ({}) at {}", call, cudaGetErrorName(status),
                                            cudaGetErrorString(status), where(file, line)));
}

void throw_nccl_error(ncclResult_t status, ncclComm_t comm, const char* call, const char* file, int line) {
  const char* last = ncclGetLastError(comm);
  throw Error(ErrorCode::kNccl, fmt::format("{} failed: {}{}{} at {}", call, ncclGetErrorString(status),
                                            last && *last ? ": " : "", last ? last : "", where(file, line)));
}

}  // namespace shardcast::gpu
