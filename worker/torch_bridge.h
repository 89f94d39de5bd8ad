// The only place bytes become torch::Tensor: views that keep their segment mapped, or private copies.
#pragma once

#include <ATen/Tensor.h>

#include "worker/node_loader.h"

namespace shardcast {

// torch's type for `dtype`, or kInvalidArgument naming the tensor when this LibTorch cannot represent it.
c10::ScalarType scalar_type_for(const std::string& name, DType dtype);

// A tensor over the segment bytes; it keeps the mapping alive. Throws kInvalidArgument for a dtype this LibTorch
// cannot represent.
at::Tensor view_of(const LoadedTensor& tensor);

// A tensor of the rank's own memory holding a copy.
at::Tensor copy_of(const LoadedTensor& tensor);

}  // namespace shardcast
