#include "worker/session.h"

#include <cstdlib>
#include <map>
#include <set>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <fmt/ranges.h>  // fmt::join (its home since fmt 11)
#include <torch/torch.h>

#include "coordinator/sharded_writer.h"
#include "coordinator/torch_dtype.h"
#include "core/size.h"
#include "worker/torch_bridge.h"

namespace shardcast {

struct Session::Impl {
  Group group;
  NodeLoader loader{group};
  LoadStats last;

  explicit Impl(Group g) : group(std::move(g)) {}

  // Every selected tensor as the placement says, sorted by name.
  std::vector<std::pair<std::string, at::Tensor>> load(const std::filesystem::path& checkpoint,
                                                       const NodeLoadOptions& n, const LoadOptions& options);
};

namespace {

NodeLoadOptions node_options(const LoadOptions& o) {
  NodeLoadOptions n;
  n.placement = o.placement;
  if (o.dtype != "auto") {
    n.request.dtype = dtype_from_user_name(o.dtype);
    if (!n.request.dtype) throw Error(ErrorCode::kInvalidArgument, fmt::format("unknown dtype '{}'", o.dtype));
  }
  n.request.tensors = o.tensors;
  n.request.parallel_read = o.parallel_read;
  n.location.dir = o.shm_dir;
  if (n.location.dir.empty() && std::getenv("SHARDCAST_SHM_DIR")) n.location.dir = std::getenv("SHARDCAST_SHM_DIR");
  n.timeout = o.timeout;
  n.on_step = o.progress;
  n.on_bytes = o.progress_bytes;
  n.tp = o.tp;
  return n;
}

// This rank's part of a host tensor: the whole view, or its tensor-parallel slice (a view; private copies it alone).
at::Tensor host_tensor(const LoadedTensor& t, Placement placement, const TensorParallel& tp) {
  const RankSlice slice = rank_slice(*t.info, tp);
  if (!slice.sliced) return placement == Placement::kPrivate ? copy_of(t) : view_of(t);
  at::Tensor part = view_of(t).narrow(slice.dim, slice.begin, slice.length);
  return placement == Placement::kPrivate ? part.clone(at::MemoryFormat::Contiguous) : part;
}

std::string shape_text(at::IntArrayRef shape) {
  return shape_string(shape.vec());
}

}  // namespace

std::vector<std::filesystem::path> save_sharded(const StateDict& state, const std::filesystem::path& dir,
                                                const std::string& max_shard_size, bool safe_serialization) {
  std::vector<TensorData> tensors;
  for (const auto& item : state) {
    at::Tensor t = item.value().detach().to(at::kCPU).contiguous();
    auto dtype = from_scalar_type(t.scalar_type());
    if (!dtype) {
      throw Error(ErrorCode::kInvalidArgument, fmt::format("tensor '{}' has dtype {}, which safetensors cannot hold",
                                                           item.key(), c10::toString(t.scalar_type())));
    }
    auto keep = std::make_shared<at::Tensor>(t);
    TensorData data;
    data.name = item.key();
    data.dtype = *dtype;
    data.shape = t.sizes().vec();
    data.bytes = Bytes{static_cast<const uint8_t*>(t.data_ptr()), t.nbytes(), keep};
    tensors.push_back(std::move(data));
  }
  WriterOptions options;
  options.max_shard_size = parse_size(max_shard_size);
  options.format = safe_serialization ? CheckpointFormat::kSafetensors : CheckpointFormat::kTorchBin;
  return shardcast::save_sharded(tensors, dir, options);
}

Session Session::from_env(Timeout timeout) {
  const LaunchEnv env = detect_launch_env();
  return Session(make_world_communicator(env, timeout), timeout, env);
}

Session::Session(std::unique_ptr<Communicator> world, Timeout timeout, const LaunchEnv& env)
    : impl_(std::make_unique<Impl>(make_group(std::move(world), env, timeout))) {}
Session::~Session() = default;
Session::Session(Session&&) noexcept = default;
Session& Session::operator=(Session&&) noexcept = default;

const Topology& Session::topology() const {
  return impl_->group.topology;
}
const LoadStats& Session::last_stats() const {
  return impl_->last;
}

std::vector<std::pair<std::string, at::Tensor>> Session::Impl::load(const std::filesystem::path& checkpoint,
                                                                    const NodeLoadOptions& n,
                                                                    const LoadOptions& options) {
  if (options.placement == Placement::kCuda) return load_on_device(loader, group, checkpoint, n, options.gpu, &last);
  const Topology& topo = group.topology;
  const TensorParallel tp = tp_for_rank(options.tp, topo.rank, topo.world_size);
  std::vector<std::pair<std::string, at::Tensor>> loaded;
  // Tied .bin weights come back as one tensor under each name, as torch.load returns them (a private copy once). The
  // first name of a storage that was selected holds it, as in the plan.
  std::map<std::string, at::Tensor> by_storage;
  last = loader.load(checkpoint, n, [&](std::vector<LoadedTensor>& batch) {
    for (const LoadedTensor& t : batch) {
      if (rank_slice(*t.info, tp).sliced) {
        loaded.emplace_back(t.info->name, host_tensor(t, options.placement, tp));
        continue;
      }
      const std::string& storage = t.info->tied_to.empty() ? t.info->name : t.info->tied_to;
      auto it = by_storage.find(storage);
      if (it == by_storage.end()) it = by_storage.emplace(storage, host_tensor(t, options.placement, tp)).first;
      loaded.emplace_back(t.info->name, it->second);
    }
  });
  std::sort(loaded.begin(), loaded.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  return loaded;
}

StateDict Session::load(const std::filesystem::path& checkpoint, const LoadOptions& options) {
  auto loaded = impl_->load(checkpoint, node_options(options), options);
  StateDict dict;
  for (auto& [name, tensor] : loaded) dict.insert(name, std::move(tensor));
  return dict;
}

LoadReport Session::load_into(torch::nn::Module& module, const std::filesystem::path& checkpoint,
                              const LoadOptions& options, bool strict) {
  NamedTensors targets;
  for (const auto& item : module.named_parameters(/*recurse=*/true)) targets.emplace_back(item.key(), item.value());
  for (const auto& item : module.named_buffers(/*recurse=*/true)) targets.emplace_back(item.key(), item.value());
  return load_into(targets, checkpoint, options, strict, /*assign=*/false);
}

LoadReport Session::load_into(NamedTensors& named, const std::filesystem::path& checkpoint, const LoadOptions& options,
                              bool strict, bool assign) {
  // The module's tensors by name; tied parameters (one TensorImpl under several names) are filled once.
  std::map<std::string, at::Tensor> targets(named.begin(), named.end());

  LoadReport report;
  NodeLoadOptions n = node_options(options);
  const Topology& topo = impl_->group.topology;
  const TensorParallel tp = tp_for_rank(options.tp, topo.rank, topo.world_size);
  n.select = [&](const Catalog& catalog) {
    std::vector<std::string> wanted;
    std::set<std::string> in_checkpoint;
    for (const TensorInfo& t : catalog.tensors) {
      in_checkpoint.insert(t.name);
      auto it = targets.find(t.name);
      if (it == targets.end()) {
        report.unexpected_keys.push_back(t.name);
      } else if (const std::vector<int64_t> shape = rank_slice(t, tp).shape; it->second.sizes().vec() != shape) {
        report.mismatched_keys.push_back(
            fmt::format("{}: checkpoint {}{} vs module {}", t.name, shape_string(shape),
                        shape == t.shape ? "" : fmt::format(" (slice of {})", shape_string(t.shape)),
                        shape_text(it->second.sizes())));
      } else if (tensor_selected(t.name, options.tensors)) {
        if (!assign && it->second.is_meta()) {
          throw Error(ErrorCode::kInvalidArgument,
                      fmt::format("'{}' is on the meta device (built under init_empty_weights): it has no memory to "
                                  "fill; load with assign=true, which makes the loaded tensors the module's",
                                  t.name));
        }
        wanted.push_back(t.name);
      }
    }
    // A tied parameter is missing only if none of its names is in the checkpoint (safetensors checkpoints keep one).
    std::map<const void*, bool> tie_found;
    for (const auto& [name, tensor] : targets) tie_found[tensor.unsafeGetTensorImpl()] |= in_checkpoint.count(name) > 0;
    for (const auto& [name, tensor] : targets) {
      if (!tie_found[tensor.unsafeGetTensorImpl()]) report.missing_keys.push_back(name);
    }
    if (strict &&
        (!report.missing_keys.empty() || !report.unexpected_keys.empty() || !report.mismatched_keys.empty())) {
      throw Error(ErrorCode::kInvalidArgument,
                  fmt::format("checkpoint '{}' does not match the module: missing keys [{}], unexpected keys [{}], "
                              "mismatched shapes [{}] (pass strict=false to load what matches)",
                              checkpoint.string(), fmt::join(report.missing_keys, ", "),
                              fmt::join(report.unexpected_keys, ", "), fmt::join(report.mismatched_keys, "; ")));
    }
    return wanted;
  };

  std::set<const void*> filled;
  std::map<const void*, at::Tensor> assigned;  // assign: the loaded tensor for each target TensorImpl
  auto first_fill = [&](const std::string& name) -> at::Tensor* {
    at::Tensor& target = targets.at(name);
    if (!filled.insert(target.unsafeGetTensorImpl()).second) return nullptr;  // a tied parameter, already loaded
    ++report.loaded;
    return &target;
  };
  torch::NoGradGuard no_grad;
  if (options.placement == Placement::kCuda) {
    // The parameters become the rank's device tensors (in the checkpoint's or the asked dtype): no second copy.
    for (auto& [name, tensor] : impl_->load(checkpoint, n, options)) {
      at::Tensor* target = first_fill(name);
      if (!target) continue;
      if (assign) {
        assigned[target->unsafeGetTensorImpl()] = tensor;
      } else {
        target->set_data(tensor);
      }
    }
  } else {
    // A tied storage in the checkpoint is one place in the segment: a second, separate parameter gets its own copy,
    // as load_state_dict copies into each (writes to one must not show in the other).
    std::map<const uint8_t*, const c10::TensorImpl*> holder;
    impl_->last = impl_->loader.load(checkpoint, n, [&](std::vector<LoadedTensor>& batch) {
      for (const LoadedTensor& t : batch) {
        at::Tensor* target = first_fill(t.info->name);
        if (!target) continue;
        const bool aliased = t.nbytes > 0 && !holder.emplace(t.data, target->unsafeGetTensorImpl()).second &&
                             holder.at(t.data) != target->unsafeGetTensorImpl();
        const bool same_dtype = to_scalar_type(t.dtype) == target->scalar_type();
        if (assign) {
          assigned[target->unsafeGetTensorImpl()] = host_tensor(t, options.placement, tp);
        } else if (options.placement == Placement::kPrivate && same_dtype) {
          // in place, on whatever device the module lives: no second copy
          target->copy_(host_tensor(t, Placement::kShared, tp));
        } else if (!target->device().is_cpu()) {
          throw Error(ErrorCode::kInvalidArgument,
                      fmt::format("parameter '{}' is on {}: the {} placement gives host views; use private (copies "
                                  "into the module in its dtype {}), cuda, or load before moving the module",
                                  t.info->name, target->device().str(), placement_name(options.placement),
                                  c10::toString(target->scalar_type())));
        } else {
          // shared/cow: the parameter becomes the staged view; a different dtype (dtype "auto") follows the
          // checkpoint, as transformers' torch_dtype="auto" does.
          target->set_data(host_tensor(t, aliased ? Placement::kPrivate : options.placement, tp));
        }
      }
    });
  }
  if (assign) {
    for (auto& [name, tensor] : named) {
      auto it = assigned.find(tensor.unsafeGetTensorImpl());
      if (it != assigned.end()) tensor = it->second;
    }
  }
  report.stats = impl_->last;
  return report;
}

}  // namespace shardcast
