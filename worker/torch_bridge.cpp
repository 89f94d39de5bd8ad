#include "worker/torch_bridge.h"

#include <cstring>

#include <ATen/ATen.h>
#include <fmt/format.h>

#include "coordinator/torch_dtype.h"

namespace shardcast {
namespace {

at::TensorOptions options_for(const LoadedTensor& t) {
  auto type = to_scalar_type(t.dtype);
  if (!type) {
    throw Error(ErrorCode::kInvalidArgument,
                fmt::format("tensor '{}' has dtype {}, which this LibTorch ({}.{}) cannot represent; leave it out with "
                            "a tensor filter, or convert the checkpoint",
                            t.info->name, dtype_name(t.dtype), TORCH_VERSION_MAJOR, TORCH_VERSION_MINOR));
  }
  return at::TensorOptions().dtype(*type).device(at::kCPU);
}

}  // namespace

at::Tensor view_of(const LoadedTensor& t) {
  std::shared_ptr<shm::Segment> keep = t.mapping;
  return at::from_blob(
      t.data, t.info->shape, [keep](void*) mutable { keep.reset(); }, options_for(t));
}

at::Tensor copy_of(const LoadedTensor& t) {
  at::Tensor out = at::empty(t.info->shape, options_for(t));
  if (t.nbytes > 0) std::memcpy(out.data_ptr(), t.data, t.nbytes);
  return out;
}

}  // namespace shardcast
