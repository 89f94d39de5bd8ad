#include "tools/bench/baseline_loaders.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <map>

#include <ATen/ATen.h>
#include <fmt/format.h>

#include "coordinator/catalog.h"
#include "coordinator/torch_dtype.h"
#include "core/error.h"
#include "core/file.h"
#include "core/io_stats.h"

namespace shardcast::bench {
namespace {

using Clock = std::chrono::steady_clock;

// The model as a training script builds it before loading: every tensor allocated and randomly initialised.
std::map<std::string, at::Tensor> build_model(const Catalog& catalog) {
  std::map<std::string, at::Tensor> model;
  for (const TensorInfo& t : catalog.tensors) {
    auto type = to_scalar_type(t.dtype);
    if (!type)
      throw Error(ErrorCode::kInvalidArgument,
                  fmt::format("tensor '{}': dtype {} not loadable", t.name, dtype_name(t.dtype)));
    at::Tensor tensor = at::empty(t.shape, at::TensorOptions().dtype(*type));
    if (at::isFloatingType(*type)) {
      tensor.uniform_();
    } else {
      tensor.zero_();
    }
    model.emplace(t.name, tensor);
  }
  return model;
}

void require_safetensors(const Catalog& catalog) {
  if (catalog.format != CheckpointFormat::kSafetensors) {
    throw Error(ErrorCode::kInvalidArgument, "the baselines read safetensors checkpoints");
  }
}

}  // namespace

double load_naive(const std::filesystem::path& checkpoint) {
  const auto start = Clock::now();
  Catalog catalog = open_catalog(checkpoint);
  require_safetensors(catalog);
  auto model = build_model(catalog);
  std::vector<std::vector<uint8_t>> files;  // the whole state dict in private memory, like torch.load
  for (const ShardInfo& shard : catalog.shards) {
    File file = File::open_read(shard.path);
    files.emplace_back(file.size());
    file.read_exact_at(files.back().data(), files.back().size(), 0);
  }
  for (const TensorInfo& t : catalog.tensors) {
    at::Tensor& dst = model.at(t.name);
    if (t.nbytes() > 0) std::memcpy(dst.data_ptr(), files[t.shard].data() + t.file_offset, t.nbytes());
  }
  files.clear();
  return std::chrono::duration<double>(Clock::now() - start).count();
}

double load_mmap(const std::filesystem::path& checkpoint) {
  const auto start = Clock::now();
  Catalog catalog = open_catalog(checkpoint);
  require_safetensors(catalog);
  auto model = build_model(catalog);
  for (uint32_t s = 0; s < catalog.shards.size(); ++s) {
    File file = File::open_read(catalog.shards[s].path);
    const size_t size = file.size();
    void* map = mmap(nullptr, size, PROT_READ, MAP_SHARED, file.fd(), 0);
    if (map == MAP_FAILED) throw_system_error("mmap", catalog.shards[s].path.string(), errno);
    for (const TensorInfo& t : catalog.tensors) {
      if (t.shard != s || t.nbytes() == 0) continue;
      std::memcpy(model.at(t.name).data_ptr(), static_cast<const uint8_t*>(map) + t.file_offset, t.nbytes());
      // Mapped bytes come in by page faults, not pread, so File does not count them: count what the copy touched.
      count_checkpoint_read(t.nbytes());
    }
    munmap(map, size);
  }
  return std::chrono::duration<double>(Clock::now() - start).count();
}

}  // namespace shardcast::bench
