// torch.save zip archives (pytorch_model.bin), decoded with LibTorch's own unpickler: no Python, and no code from the
// file runs (only the globals torch.save emits for tensors are understood). Torch types stay inside torch_bin.cpp.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "coordinator/tensor_data.h"

namespace shardcast {

struct BinTensor : TensorData {
  // Set when this name shares storage, offset, shape and strides with an earlier name (tied weights): the bytes are
  // the same object.
  std::string tied_to;
};

// Decodes a flat state dict (name -> tensor), sorted by name. Strided views and storage offsets come back as
// contiguous bytes. Throws kCorruptCheckpoint naming the file (legacy non-zip files get their own message).
std::vector<BinTensor> read_torch_bin(const std::filesystem::path& path);

// The same names, dtypes, shapes and ties without reading any storage: only the zip directory and the pickle. Bytes
// are empty. What the catalog uses, so a .bin checkpoint is read from storage once, when it is staged.
std::vector<BinTensor> read_torch_bin_metadata(const std::filesystem::path& path);

// Writes tensors as a torch.save-compatible zip archive (loadable with torch.load). Refuses dtypes this LibTorch
// cannot represent.
void write_torch_bin(const std::filesystem::path& path, const std::vector<TensorData>& tensors);

}  // namespace shardcast
