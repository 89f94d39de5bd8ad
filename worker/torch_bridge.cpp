#include "worker/torch_bridge.h"

#include <cstring>

#include <ATen/ATen.h>
#include <fmt/format.h>

#include "coordinator/torch_dtype.h"

namespace shardcast {
namespace {

at::TensorOptions options_for(const LoadedTensor& t) {
  return at::TensorOptions().dtype(scalar_type_for(t.info->name, t.dtype)).device(at::kCPU);
}

}  // namespace

c10::ScalarType scalar_type_for(const std::string& name, DType dtype) {
  auto type = to_scalar_type(dtype);
  if (!type) {
    throw Error(ErrorCode::kInvalidArgument,
                fmt::format("tensor '{}' has dtype {}, which this LibTorch ({}.{}) cannot represent; leave it out with "
                            "a tensor filter, or convert the checkpoint",
                            name, dtype_name(dtype), TORCH_VERSION_MAJOR, TORCH_VERSION_MINOR));
  }
  return *type;
}

at::Tensor view_of(const LoadedTensor& t) {
  std::shared_ptr<shm::Segment> segment = t.mapping;
  std::shared_ptr<shm::FileView> file = t.file;
  return at::from_blob(
      t.data, t.info->shape,
      [segment, file](void*) mutable {
        segment.reset();
        file.reset();
      },
      options_for(t));
}

at::Tensor copy_of(const LoadedTensor& t) {
  at::Tensor out = at::empty(t.info->shape, options_for(t));
  if (t.nbytes > 0) std::memcpy(out.data_ptr(), t.data, t.nbytes);
  return out;
}

}  // namespace shardcast
