#include "worker/device_placement.h"

#include <map>
#include <set>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <torch/cuda.h>
#include <torch/version.h>

#include "core/io_stats.h"
#include "worker/gpu_info.h"
#include "worker/load_steps.h"
#include "worker/torch_bridge.h"

namespace shardcast {
namespace {

using detail::attempt;
using detail::Clock;
using detail::seconds_since;

// Why this rank cannot place tensors on cuda:`ordinal`, or "" when it can.
std::string device_problem(int ordinal) {
  const GpuInfo info = query_gpu_info();
  if (!info.built_with_cuda) return "placement cuda needs a build with CUDA: " + info.problem;
  if (info.device_count <= ordinal) {
    return fmt::format("no cuda:{} on this host ({})", ordinal, describe(info));
  }
  if (!torch::cuda::is_available()) {
    return fmt::format(
        "the LibTorch this shardcast links has no CUDA (version {}; Debian's libtorch is CPU-only): "
        "build against PyTorch's LibTorch (docs/gpu.md)",
        TORCH_VERSION);
  }
  return "";
}

}  // namespace

std::vector<std::pair<std::string, at::Tensor>> load_on_device(NodeLoader& loader, const Group& group,
                                                               const std::filesystem::path& checkpoint,
                                                               const NodeLoadOptions& options, const GpuOptions& gpu,
                                                               LoadStats* stats) {
  const uint64_t read_before = checkpoint_bytes_read();
  const auto start = Clock::now();
  loader.open(checkpoint, options.timeout);
  const double catalog_s = seconds_since(start);
  auto out = load_on_device_opened(loader, group, options, gpu, stats);
  stats->phases.insert(stats->phases.begin(), {"catalog", catalog_s});
  stats->rank_bytes_read = checkpoint_bytes_read() - read_before;
  return out;
}

std::vector<std::pair<std::string, at::Tensor>> load_on_device_opened(NodeLoader& loader, const Group& group,
                                                                      const NodeLoadOptions& options,
                                                                      const GpuOptions& gpu, LoadStats* stats) {
  const Topology& topo = group.topology;
  const uint64_t read_before = checkpoint_bytes_read();
  const Catalog& catalog = loader.catalog();
  const bool ring_format = catalog.format == CheckpointFormat::kSafetensors;
  RingOptions ring{parse_transport(gpu.transport), gpu.ring_slots, gpu.ring_slot_bytes};

  // Every rank finds its device before any collective set-up, so one rank without a GPU fails the job at once.
  auto start = Clock::now();
  const int ordinal = gpu.device >= 0 ? gpu.device : topo.local_rank;
  std::unique_ptr<Error> own;
  auto check = [&](const std::string& step, const std::string& error) {
    loader.agree(step, error, options.timeout);
    if (own) throw *own;
  };
  check("find device", attempt(
                           [&] {
                             if (gpu.host_stand_in) return;
                             const std::string problem = device_problem(ordinal);
                             if (!problem.empty()) throw Error(ErrorCode::kInvalidArgument, problem);
                           },
                           &own));
  const bool collectives =
      ring_format && ring.transport != Transport::kH2D && !(ring.transport == Transport::kAuto && topo.node_count == 1);
  std::unique_ptr<Device> device;
  check("set up device", attempt(
                             [&] {
                               device = gpu.host_stand_in
                                            ? make_host_stand_in(*group.world, options.timeout)
                                            : make_cuda_device({ordinal, collectives, options.timeout}, *group.world);
                             },
                             &own));
  const at::Device torch_device(device->torch_device());
  const double device_s = seconds_since(start);

  std::vector<std::pair<std::string, at::Tensor>> out;
  if (ring_format) {
    // Arrivals land in the checkpoint's dtype; a different dtype is cast on the device once the tensor is whole.
    struct Pending {
      at::Tensor staging;
      c10::ScalarType target;
    };
    std::map<std::string, Pending> pending;
    DeviceTensorSink sink;
    sink.allocate = [&](const TensorInfo& info, const RankSlice& slice, DType target) {
      Pending p{at::empty(slice.shape,
                          at::TensorOptions().dtype(scalar_type_for(info.name, info.dtype)).device(torch_device)),
                scalar_type_for(info.name, target)};
      uint8_t* data = static_cast<uint8_t*>(p.staging.data_ptr());
      pending.emplace(info.name, std::move(p));
      return data;
    };
    sink.complete = [&](const TensorInfo& info) {
      Pending p = std::move(pending.at(info.name));
      pending.erase(info.name);
      out.emplace_back(info.name, p.staging.scalar_type() == p.target ? p.staging : p.staging.to(p.target));
    };
    *stats = loader.load_to_device(options, ring, *device, sink);
  } else {
    // .bin has no byte ranges to stream: stage one shard at a time in node-shared memory (host peak: one shard) and
    // copy each rank's part from there.
    NodeLoadOptions staged = options;
    staged.placement = Placement::kCuda;
    uint64_t to_device = 0;
    const TensorParallel tp = tp_for_rank(options.tp, topo.rank, topo.world_size);
    *stats = loader.load_opened(staged, [&](std::vector<LoadedTensor>& batch) {
      std::set<const shm::Segment*> segments;
      std::vector<std::unique_ptr<PinnedHost>> pinned;
      for (const LoadedTensor& t : batch) {
        if (segments.insert(t.mapping.get()).second) {
          pinned.push_back(std::make_unique<PinnedHost>(*device, t.mapping->data(), t.mapping->data_size(), true));
        }
      }
      std::vector<std::pair<RankSlice, at::Tensor>> placed;
      for (const LoadedTensor& t : batch) {
        TensorSpec spec{t.info->name, t.dtype, t.info->shape};
        RankSlice slice = rank_slice(spec, tp);
        at::Tensor tensor =
            at::empty(slice.shape, at::TensorOptions().dtype(scalar_type_for(spec.name, t.dtype)).device(torch_device));
        placed.emplace_back(std::move(slice), std::move(tensor));
      }
      device->synchronize();  // torch's earlier work on this memory is done
      for (size_t i = 0; i < batch.size(); ++i) {
        const auto& [slice, tensor] = placed[i];
        device->copy(slice.block, static_cast<uint8_t*>(tensor.data_ptr()), batch[i].data, Lane::kCopy);
        to_device += slice.block.bytes();
        out.emplace_back(batch[i].info->name, tensor);
      }
      device->synchronize();
    });
    stats->rank_bytes_to_device = to_device;
    stats->device = device->describe();
    stats->transport_choice =
        ".bin checkpoint: staged one shard at a time in node-shared memory, then h2d (the ring "
        "streams safetensors byte ranges; shardcast convert makes them)";
    stats->transports["staged-shard+h2d"] = out.size();
  }
  stats->phases.insert(stats->phases.begin(), {"device", device_s});
  stats->rank_bytes_read = checkpoint_bytes_read() - read_before;
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  return out;
}

}  // namespace shardcast
