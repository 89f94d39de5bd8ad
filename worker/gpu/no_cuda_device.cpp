// A build without CUDA: asking for a GPU says so, and how to get one.
#include <fmt/format.h>

#include "core/error.h"
#include "worker/device.h"

namespace shardcast {

std::unique_ptr<Device> make_cuda_device(const DeviceRequest& request, Communicator&) {
  throw Error(ErrorCode::kInvalidArgument,
              fmt::format("placement cuda (cuda:{}) needs a build with CUDA: this shardcast was built without it "
                          "(SHARDCAST_WITH_CUDA=OFF, or no CUDA toolkit and NCCL at configure time)",
                          request.ordinal));
}

double pinned_h2d_bytes_per_second(int ordinal, uint64_t, int) {
  throw Error(ErrorCode::kInvalidArgument,
              fmt::format("measuring host-to-device bandwidth on cuda:{} needs a build with CUDA", ordinal));
}

}  // namespace shardcast
