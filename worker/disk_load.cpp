#include "worker/disk_load.h"

#include <stdlib.h>

#include <map>
#include <set>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <fmt/ranges.h>  // fmt::join (its home since fmt 11)

#include "coordinator/bool_check.h"
#include "coordinator/shard_reader.h"
#include "coordinator/sharded_writer.h"
#include "core/dtype_cast.h"
#include "shm/file_view.h"
#include "worker/load_steps.h"
#include "worker/torch_bridge.h"

namespace shardcast {
namespace {

namespace fs = std::filesystem;
using detail::attempt;
using detail::Clock;
using detail::seconds_since;

constexpr uint64_t kOffloadShardBytes = 1'000'000'000;  // the leader buffers one such shard while writing

// Each file mapped once per rank.
class Views {
 public:
  explicit Views(shm::Access access) : access_(access) {}

  // A tensor over [offset, offset + nbytes) of `path` (the file `expected`, when given); checks the file still holds
  // that range.
  at::Tensor tensor(const fs::path& path, uint64_t offset, const TensorInfo& info, DType dtype,
                    const FileIdentity* expected = nullptr) {
    auto it = files_.find(path);
    if (it == files_.end()) it = files_.emplace(path, shm::FileView::map(path, access_, expected)).first;
    std::shared_ptr<shm::FileView> file = it->second;
    const uint64_t nbytes = info.numel() * dtype_size(dtype);
    if (offset + nbytes > file->size()) {
      throw Error(ErrorCode::kCorruptCheckpoint,
                  fmt::format("'{}' is {} bytes now, but tensor '{}' ends at byte {}: the file changed since its "
                              "header was read",
                              path.string(), file->size(), info.name, offset + nbytes));
    }
    uint8_t* data = const_cast<uint8_t*>(file->data()) + offset;  // written only through a copy-on-write mapping
    if (dtype == DType::kBool) check_bool_bytes(info.name, data, nbytes);
    return at::from_blob(
        data, info.shape, [file](void*) mutable { file.reset(); },
        at::TensorOptions().dtype(scalar_type_for(info.name, dtype)).device(at::kCPU));
  }

 private:
  shm::Access access_;
  std::map<fs::path, std::shared_ptr<shm::FileView>> files_;
};

// The node leader's part: `tensors` (in read order, each storage once) in their loaded dtypes, as a new sharded
// safetensors checkpoint in a fresh folder under `offload_folder`.
fs::path write_offload(const Catalog& catalog, const std::vector<const TensorInfo*>& tensors,
                       const LoadRequest& request, const fs::path& offload_folder) {
  fs::create_directories(offload_folder);
  std::string pattern = (offload_folder / "shardcast-offload-XXXXXX").string();
  if (!mkdtemp(pattern.data())) throw_system_error("mkdtemp", pattern, errno);
  const fs::path folder = pattern;
  try {
    std::vector<TensorSpec> specs;
    std::set<std::string> wanted;
    for (const TensorInfo* t : tensors) {
      specs.push_back({t->name, loaded_dtype(*t, request), t->shape});
      wanted.insert(t->name);
    }
    WriterOptions options;
    options.max_shard_size = kOffloadShardBytes;
    ShardedWriter writer(folder, specs, options);
    std::set<uint32_t> shards;
    for (const TensorInfo* t : tensors) shards.insert(t->shard);
    for (uint32_t shard : shards) {
      read_shard_tensors(catalog, shard, [&](const TensorInfo& t, const Bytes& bytes) {
        if (!wanted.count(t.name)) return;
        TensorData data;
        static_cast<TensorSpec&>(data) = {t.name, loaded_dtype(t, request), t.shape};
        if (data.dtype == DType::kBool) check_bool_bytes(t.name, bytes.data, bytes.size);
        if (data.dtype == t.dtype) {
          data.bytes = bytes;
        } else {
          std::vector<uint8_t> converted(data.nbytes());
          cast_elements(bytes.data, t.dtype, converted.data(), data.dtype, t.numel());
          data.bytes = Bytes::from_vector(std::move(converted));
        }
        writer.add(std::move(data));
      });
    }
    writer.finish();
  } catch (...) {
    std::error_code ec;
    fs::remove_all(folder, ec);
    throw;
  }
  return folder;
}

}  // namespace

std::vector<std::pair<std::string, at::Tensor>> load_from_disk(NodeLoader& loader, const Group& group,
                                                               const std::vector<std::string>& names,
                                                               const LoadRequest& request, Placement placement,
                                                               const fs::path& offload_folder, const TensorParallel& tp,
                                                               Timeout timeout, LoadStats* stats) {
  const auto start = Clock::now();
  const Topology& topo = group.topology;
  const Catalog& catalog = loader.catalog();
  const TensorParallel my_tp = tp_for_rank(tp, topo.rank, topo.world_size);

  // A tied .bin weight is one storage: its first name selected holds it, the others share that tensor.
  std::vector<const TensorInfo*> direct, offload;
  std::map<std::string, std::string> holder;  // name -> the name whose tensor it shares
  std::map<std::string, std::string> storage_holder;
  for (const std::string& name : names) {
    const TensorInfo* t = catalog.find(name);
    if (!t) throw Error(ErrorCode::kInvalidArgument, fmt::format("tensor '{}' is not in the checkpoint", name));
    const std::string storage = t->tied_to.empty() ? t->name : t->tied_to;
    auto [it, first] = storage_holder.emplace(storage, t->name);
    holder[t->name] = it->second;
    if (!first) continue;
    (t->has_file_range && loaded_dtype(*t, request) == t->dtype ? direct : offload).push_back(t);
  }
  if (!offload.empty() && offload_folder.empty()) {
    std::vector<std::string> some;
    for (size_t i = 0; i < std::min<size_t>(offload.size(), 3); ++i) some.push_back(offload[i]->name);
    throw Error(ErrorCode::kInvalidArgument,
                fmt::format("device_map puts {} tensor(s) on disk that cannot be mapped from the checkpoint ({}{}: "
                            "{}): give an offload_folder to write them to",
                            offload.size(), fmt::join(some, ", "), offload.size() > 3 ? ", ..." : "",
                            catalog.format == CheckpointFormat::kTorchBin ? ".bin has no byte ranges to map"
                                                                          : "they load in another dtype"));
  }

  std::unique_ptr<Error> own;
  auto check = [&](const std::string& step, const std::string& error) {
    loader.agree(step, error, timeout);
    if (own) throw *own;
  };
  Views views(placement == Placement::kShared ? shm::Access::kReadOnly : shm::Access::kCopyOnWrite);
  std::map<std::string, at::Tensor> loaded;
  if (!offload.empty()) {
    // In the order read_shard_tensors visits them, which the writer must be given.
    std::set<const TensorInfo*> chosen(offload.begin(), offload.end());
    offload.clear();
    for (uint32_t s = 0; s < catalog.shards.size(); ++s) {
      for (const TensorInfo* t : shard_tensors_in_read_order(catalog, s)) {
        if (chosen.count(t)) offload.push_back(t);
      }
    }
    fs::path folder;
    std::string error;
    // The leader removes the folder however this ends: once every local rank has mapped it, or on a failure.
    struct RemoveFolder {
      const fs::path& folder;
      ~RemoveFolder() {
        std::error_code ec;
        if (!folder.empty()) fs::remove_all(folder, ec);
      }
    };
    fs::path written;
    RemoveFolder remove{written};
    if (topo.local_rank == 0) {
      error = attempt([&] { written = write_offload(catalog, offload, request, offload_folder); }, &own);
      folder = written;
    }
    folder = group.node->all_gather(folder.string(), "offload folder", timeout)[0];
    check("write offload", error);
    check("map offload", attempt(
                             [&] {
                               const Catalog offloaded = open_catalog(folder);
                               for (const TensorInfo& t : offloaded.tensors) {
                                 loaded[t.name] =
                                     views.tensor(offloaded.shards[t.shard].path, t.file_offset, t, t.dtype);
                               }
                             },
                             &own));
    // Leaving this block removes the folder: every local rank has mapped it, and the mappings keep the data.
  }
  check("map checkpoint files", attempt(
                                    [&] {
                                      for (const TensorInfo* t : direct) {
                                        const ShardInfo& shard = catalog.shards[t->shard];
                                        loaded[t->name] =
                                            views.tensor(shard.path, t->file_offset, *t, t->dtype, &shard.identity);
                                      }
                                    },
                                    &own));

  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const std::string& name : names) {
    at::Tensor tensor = loaded.at(holder.at(name));
    const RankSlice slice = rank_slice(*catalog.find(name), my_tp);
    if (slice.sliced) tensor = tensor.narrow(slice.dim, slice.begin, slice.length);
    stats->tensor_bytes += holder.at(name) == name ? tensor.nbytes() : 0;
    out.emplace_back(name, std::move(tensor));
  }
  stats->tensors += out.size();
  stats->phases.push_back({"map", seconds_since(start)});
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  return out;
}

}  // namespace shardcast
