#include "worker/session.h"

#include <cstdlib>
#include <functional>
#include <map>
#include <set>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <fmt/ranges.h>  // fmt::join (its home since fmt 11)
#include <torch/torch.h>

#include "coordinator/sharded_writer.h"
#include "coordinator/torch_dtype.h"
#include "core/io_stats.h"
#include "core/size.h"
#include "worker/device_assignment.h"
#include "worker/disk_load.h"
#include "worker/load_steps.h"
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

  // What a device_map load needs from its caller (load or load_into).
  struct MappedLoad {
    // The selected names, in the order the planner fills devices (module order).
    std::function<std::vector<std::string>(const Catalog&)> select;
    std::function<ModelLayout(const Catalog&, const std::vector<std::string>&, const LoadRequest&)> layout;
    std::function<void(std::vector<LoadedTensor>&, Placement)> host;    // the cpu part, batch by batch
    std::function<void(const std::string&, const at::Tensor&)> tensor;  // each cuda and disk tensor
  };
  // Opens the catalog, selects, and agrees on each tensor's device: the first half of a device_map load.
  struct Assigned {
    LoadRequest request;  // dtype resolved
    DeviceAssignment assignment;
    LoadStats stats;
  };
  Assigned assign(const std::filesystem::path& checkpoint, const NodeLoadOptions& n, const LoadOptions& options,
                  const MappedLoad& calls);
  // Then loads each device's part in turn.
  void load_mapped(const std::filesystem::path& checkpoint, const NodeLoadOptions& n, const LoadOptions& options,
                   const MappedLoad& calls);
};

namespace {

using detail::attempt;
using detail::Clock;
using detail::seconds_since;

NodeLoadOptions node_options(const LoadOptions& o) {
  NodeLoadOptions n;
  n.placement = o.placement;
  if (o.dtype == "auto") {
    n.request.dtype_auto = true;
  } else if (o.dtype != "keep") {
    n.request.dtype = dtype_from_user_name(o.dtype);
    if (!n.request.dtype) {
      throw Error(ErrorCode::kInvalidArgument,
                  fmt::format("unknown dtype '{}' (keep, auto, bf16, f16, f32, f64)", o.dtype));
    }
  }
  n.request.keep_in_fp32 = o.keep_in_fp32;
  n.request.map_files = o.map_files;
  if (!o.device_map.empty() && !o.device_map_strategy.empty()) {
    throw Error(
        ErrorCode::kInvalidArgument,
        fmt::format("give either a device_map or a device_map strategy ('{}'), not both", o.device_map_strategy));
  }
  n.request.tensors = o.tensors;
  n.request.parallel_read = o.parallel_read;
  n.request.node_share_slack = o.node_share_slack;
  n.location = shm::Location::resolve(o.shm_dir);
  n.timeout = o.timeout;
  if (o.keep_for.count() < 0) throw Error(ErrorCode::kInvalidArgument, "keep_for is negative");
  if (o.keep_for.count() > 0 && o.placement == Placement::kCuda && o.device_map.empty() &&
      o.device_map_strategy.empty()) {
    throw Error(ErrorCode::kInvalidArgument,
                "keep_for applies to a node's staged host copy (placement shared, cow or private, or a device_map's "
                "\"cpu\" part); placement cuda streams from the files and keeps nothing");
  }
  n.keep_for = o.keep_for;
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

// This rank's tensor for `t` in a state dict: tied .bin weights come back as one tensor under each name, as
// torch.load returns them (a private copy once); the first name of a storage that was selected holds it, as in the
// plan. A tensor-parallel slice is its own.
at::Tensor storage_tensor(const LoadedTensor& t, Placement placement, const TensorParallel& tp,
                          std::map<std::string, at::Tensor>& by_storage) {
  if (rank_slice(*t.info, tp).sliced) return host_tensor(t, placement, tp);
  const std::string& storage = t.info->tied_to.empty() ? t.info->name : t.info->tied_to;
  auto it = by_storage.find(storage);
  if (it == by_storage.end()) it = by_storage.emplace(storage, host_tensor(t, placement, tp)).first;
  return it->second;
}

std::string shape_text(at::IntArrayRef shape) {
  return shape_string(shape.vec());
}

// The names `patterns` select, in catalog order; a pattern matching nothing is an error, as in make_plan.
std::vector<std::string> selected_names(const Catalog& catalog, const std::vector<std::string>& patterns) {
  check_patterns_match(catalog, patterns);
  std::vector<std::string> names;
  for (const TensorInfo& t : catalog.tensors) {
    if (tensor_selected(t.name, patterns)) names.push_back(t.name);
  }
  return names;
}

// With no model, the planner's module tree comes from the checkpoint's names.
ModelLayout layout_of_checkpoint(const Catalog& catalog, const std::vector<std::string>& names,
                                 const LoadRequest& request) {
  std::vector<DType> dtypes;
  for (const std::string& name : names) dtypes.push_back(loaded_dtype(*catalog.find(name), request));
  return checkpoint_layout(catalog, names, dtypes);
}

bool mapped(const LoadOptions& o) {
  return !o.device_map.empty() || !o.device_map_strategy.empty();
}

// One device's part of a device_map load, added to the whole: its phases under the device's name.
void add_part(LoadStats& total, const LoadStats& part, const std::string& device) {
  for (const PhaseTime& p : part.phases) total.phases.push_back({device + " " + p.name, p.seconds});
  total.node_bytes_staged += part.node_bytes_staged;
  total.node_bytes_mapped += part.node_bytes_mapped;
  total.tensor_sources.insert(total.tensor_sources.end(), part.tensor_sources.begin(), part.tensor_sources.end());
  total.tensor_bytes += part.tensor_bytes;
  total.rank_bytes_staged += part.rank_bytes_staged;
  total.tensors += part.tensors;
  total.segments += part.segments;
  if (part.kept.state != KeptState::kNone) total.kept = part.kept;
  total.ring_bytes = std::max(total.ring_bytes, part.ring_bytes);
  total.rank_bytes_to_device += part.rank_bytes_to_device;
  total.rank_bytes_received += part.rank_bytes_received;
  if (!part.device.empty()) total.device = part.device;
  if (!part.transport_choice.empty()) total.transport_choice = part.transport_choice;
  for (const auto& [how, count] : part.transports) total.transports[how] += count;
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
      loaded.emplace_back(t.info->name, storage_tensor(t, options.placement, tp, by_storage));
    }
  });
  std::sort(loaded.begin(), loaded.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  return loaded;
}

Session::Impl::Assigned Session::Impl::assign(const std::filesystem::path& checkpoint, const NodeLoadOptions& n,
                                              const LoadOptions& options, const MappedLoad& calls) {
  const Topology& topo = group.topology;
  const auto start = Clock::now();
  loader.open(checkpoint, n.timeout);
  Assigned out;
  out.stats.phases.push_back({"catalog", seconds_since(start)});
  const Catalog& catalog = loader.catalog();
  std::vector<std::string> names;
  std::unique_ptr<Error> own;
  loader.agree("select", attempt([&] { names = calls.select(catalog); }, &own), n.timeout);
  if (own) throw *own;
  out.request = resolve_dtype(catalog, n.request);
  ModelLayout layout = calls.layout(catalog, names, out.request);
  layout.no_split.insert(layout.no_split.end(), options.no_split_modules.begin(), options.no_split_modules.end());
  const Placement cpu_placement = options.placement == Placement::kCuda ? Placement::kShared : options.placement;
  const int ordinal = options.gpu.device >= 0 ? options.gpu.device : topo.local_rank;
  out.assignment =
      assign_devices(loader, group, layout, {options.device_map, options.device_map_strategy, options.max_memory},
                     cpu_placement, n.location, ordinal, n.timeout);
  out.stats.device_map = out.assignment.map;
  out.stats.device_bytes = out.assignment.bytes;
  return out;
}

void Session::Impl::load_mapped(const std::filesystem::path& checkpoint, const NodeLoadOptions& n,
                                const LoadOptions& options, const MappedLoad& calls) {
  const uint64_t read_before = checkpoint_bytes_read();
  Assigned assigned = assign(checkpoint, n, options, calls);
  const LoadRequest& request = assigned.request;
  LoadStats& total = assigned.stats;
  const Placement cpu_placement = options.placement == Placement::kCuda ? Placement::kShared : options.placement;
  for (const auto& [device, part] : assigned.assignment.parts) {
    NodeLoadOptions pn = n;
    pn.request = request;
    pn.select = [part = part](const Catalog&) { return part; };
    LoadStats stats;
    if (device == "cpu") {
      pn.placement = cpu_placement;
      stats = loader.load_opened(pn, [&](std::vector<LoadedTensor>& batch) { calls.host(batch, cpu_placement); });
    } else if (device == "disk") {
      for (const auto& [name, tensor] : load_from_disk(loader, group, part, request, cpu_placement,
                                                       options.offload_folder, options.tp, n.timeout, &stats)) {
        calls.tensor(name, tensor);
      }
    } else {
      GpuOptions gpu = options.gpu;
      if (device != "cuda") gpu.device = std::stoi(device.substr(5));
      pn.placement = Placement::kCuda;
      for (const auto& [name, tensor] : load_on_device_opened(loader, group, pn, gpu, &stats))
        calls.tensor(name, tensor);
    }
    add_part(total, stats, device);
  }
  total.rank_bytes_read = checkpoint_bytes_read() - read_before;
  last = total;
}

DevicePlan Session::plan(const std::filesystem::path& checkpoint, const LoadOptions& options) {
  if (!mapped(options)) throw Error(ErrorCode::kInvalidArgument, "plan needs a device_map or a device_map strategy");
  Impl::MappedLoad calls;
  calls.select = [&](const Catalog& catalog) { return selected_names(catalog, options.tensors); };
  calls.layout = layout_of_checkpoint;
  const Impl::Assigned assigned = impl_->assign(checkpoint, node_options(options), options, calls);
  DevicePlan plan;
  plan.device_map = assigned.assignment.map;
  plan.device_bytes = assigned.assignment.bytes;
  for (const DeviceBudget& b : assigned.assignment.budgets) plan.budgets.emplace_back(b.device, b.bytes);
  for (const auto& [device, names] : assigned.assignment.parts) plan.tensors += names.size();
  for (const auto& [device, bytes] : plan.device_bytes) plan.tensor_bytes += bytes;
  return plan;
}

StateDict Session::load(const std::filesystem::path& checkpoint, const LoadOptions& options) {
  if (mapped(options)) {
    const NodeLoadOptions n = node_options(options);
    const Topology& topo = impl_->group.topology;
    const TensorParallel tp = tp_for_rank(options.tp, topo.rank, topo.world_size);
    std::map<std::string, at::Tensor> loaded;
    std::map<std::string, at::Tensor> by_storage;
    Impl::MappedLoad calls;
    calls.select = [&](const Catalog& catalog) { return selected_names(catalog, options.tensors); };
    calls.layout = layout_of_checkpoint;
    calls.host = [&](std::vector<LoadedTensor>& batch, Placement placement) {
      for (const LoadedTensor& t : batch) loaded[t.info->name] = storage_tensor(t, placement, tp, by_storage);
    };
    calls.tensor = [&](const std::string& name, const at::Tensor& tensor) { loaded[name] = tensor; };
    impl_->load_mapped(checkpoint, n, options, calls);
    StateDict dict;
    for (auto& [name, tensor] : loaded) dict.insert(name, std::move(tensor));
    return dict;
  }
  auto loaded = impl_->load(checkpoint, node_options(options), options);
  StateDict dict;
  for (auto& [name, tensor] : loaded) dict.insert(name, std::move(tensor));
  return dict;
}

LoadReport Session::load_into(torch::nn::Module& module, const std::filesystem::path& checkpoint,
                              const LoadOptions& options, bool strict) {
  // In accelerate's order, which device_map "auto" fills devices in: a module's own parameters, its children, then
  // its own buffers. no_split_modules may name classes (Module::name()): each such module is kept whole.
  NamedTensors targets;
  LoadOptions with_paths = options;
  const auto& classes = options.no_split_modules;
  std::function<void(const std::string&, const torch::nn::Module&)> add = [&](const std::string& prefix,
                                                                              const torch::nn::Module& m) {
    for (const auto& p : m.named_parameters(/*recurse=*/false)) targets.emplace_back(prefix + p.key(), p.value());
    for (const auto& child : m.named_children()) {
      if (std::find(classes.begin(), classes.end(), child.value()->name()) != classes.end()) {
        with_paths.no_split_modules.push_back(prefix + child.key());
      }
      add(prefix + child.key() + ".", *child.value());
    }
    for (const auto& b : m.named_buffers(/*recurse=*/false)) targets.emplace_back(prefix + b.key(), b.value());
  };
  add("", module);
  return load_into(targets, checkpoint, with_paths, strict, /*assign=*/false);
}

LoadReport Session::load_into(NamedTensors& named, const std::filesystem::path& checkpoint, const LoadOptions& options,
                              bool strict, bool assign) {
  // The module's tensors by name; tied parameters (one TensorImpl under several names) are filled once.
  std::map<std::string, at::Tensor> targets(named.begin(), named.end());

  LoadReport report;
  NodeLoadOptions n = node_options(options);
  const Topology& topo = impl_->group.topology;
  const TensorParallel tp = tp_for_rank(options.tp, topo.rank, topo.world_size);
  auto select = [&](const Catalog& catalog) {
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
  n.select = select;

  std::set<const void*> filled;
  std::map<const void*, at::Tensor> assigned;  // assign: the loaded tensor for each target TensorImpl
  auto first_fill = [&](const std::string& name) -> at::Tensor* {
    at::Tensor& target = targets.at(name);
    if (!filled.insert(target.unsafeGetTensorImpl()).second) return nullptr;  // a tied parameter, already loaded
    ++report.loaded;
    return &target;
  };
  // A whole tensor (cuda or disk): the parameter becomes it (in the checkpoint's or the asked dtype), no second copy.
  auto fill_tensor = [&](const std::string& name, const at::Tensor& tensor) {
    at::Tensor* target = first_fill(name);
    if (!target) return;
    if (assign) {
      assigned[target->unsafeGetTensorImpl()] = tensor;
    } else {
      target->set_data(tensor);
    }
  };
  // A tied storage in the checkpoint is one place in the segment: a second, separate parameter gets its own copy,
  // as load_state_dict copies into each (writes to one must not show in the other).
  std::map<const uint8_t*, const c10::TensorImpl*> holder;
  auto fill_host = [&](std::vector<LoadedTensor>& batch, Placement placement) {
    for (const LoadedTensor& t : batch) {
      at::Tensor* target = first_fill(t.info->name);
      if (!target) continue;
      const bool aliased = t.nbytes > 0 && !holder.emplace(t.data, target->unsafeGetTensorImpl()).second &&
                           holder.at(t.data) != target->unsafeGetTensorImpl();
      const bool same_dtype = to_scalar_type(t.dtype) == target->scalar_type();
      if (assign) {
        assigned[target->unsafeGetTensorImpl()] = host_tensor(t, placement, tp);
      } else if (placement == Placement::kPrivate && same_dtype) {
        // in place, on whatever device the module lives: no second copy
        target->copy_(host_tensor(t, Placement::kShared, tp));
      } else if (!target->device().is_cpu()) {
        throw Error(ErrorCode::kInvalidArgument,
                    fmt::format("parameter '{}' is on {}: the {} placement gives host views; use private (copies "
                                "into the module in its dtype {}), cuda, or load before moving the module",
                                t.info->name, target->device().str(), placement_name(placement),
                                c10::toString(target->scalar_type())));
      } else {
        // shared/cow: the parameter becomes the staged view; a different dtype (dtype "keep" or "auto") follows the
        // checkpoint, as transformers' torch_dtype="auto" does.
        target->set_data(host_tensor(t, aliased ? Placement::kPrivate : placement, tp));
      }
    }
  };
  torch::NoGradGuard no_grad;
  if (mapped(options)) {
    Impl::MappedLoad calls;
    calls.select = [&](const Catalog& catalog) {  // in module order
      const std::vector<std::string> wanted = select(catalog);
      const std::set<std::string> chosen(wanted.begin(), wanted.end());
      std::vector<std::string> ordered;
      for (const auto& item : named) {
        if (chosen.count(item.first)) ordered.push_back(item.first);
      }
      return ordered;
    };
    calls.layout = [&](const Catalog& catalog, const std::vector<std::string>& names, const LoadRequest& request) {
      ModelLayout layout;
      std::map<const void*, std::string> first_name;  // tied parameters: one TensorImpl, the device of its first name
      for (const std::string& name : names) {
        const TensorInfo& t = *catalog.find(name);
        ModelTensor m{name, t.numel() * dtype_size(loaded_dtype(t, request)), t.tied_to};
        auto [it, first] = first_name.emplace(targets.at(name).unsafeGetTensorImpl(), name);
        if (!first) m.tied_to = it->second;
        layout.tensors.push_back(std::move(m));
      }
      return layout;
    };
    calls.host = fill_host;
    calls.tensor = fill_tensor;
    impl_->load_mapped(checkpoint, n, options, calls);
  } else if (options.placement == Placement::kCuda) {
    for (auto& [name, tensor] : impl_->load(checkpoint, n, options)) fill_tensor(name, tensor);
  } else {
    impl_->last = impl_->loader.load(checkpoint, n,
                                     [&](std::vector<LoadedTensor>& batch) { fill_host(batch, options.placement); });
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
