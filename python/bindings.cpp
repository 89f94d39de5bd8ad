// The Python binding: converts arguments and results and calls worker/'s public API, nothing else. The package
// (shardcast/__init__.py) adds docstrings, type hints and the module surgery of load_into(assign=True).
#include <torch/extension.h>

#include <atomic>
#include <memory>
#include <mutex>

#include <fmt/format.h>

#include "coordinator/device_map.h"
#include "coordinator/inspect.h"
#include "coordinator/verify.h"
#include "core/duration.h"
#include "core/size.h"
#include "launch/communicator.h"
#include "launch/launch_env.h"
#include "shardcast/config.h"
#include "shardcast/shardcast.h"
#include "worker/gpu_info.h"

namespace py = pybind11;

namespace shardcast::python {
namespace {

// One Session per process, made on the first call that needs the job (import alone opens nothing), closed at exit.
std::mutex session_mutex;
std::unique_ptr<Session> session;
// Loads are collectives, in the same order on every rank: two Python threads of one rank take turns.
std::mutex load_mutex;

Session& job(double timeout_s) {
  std::lock_guard<std::mutex> lock(session_mutex);
  if (!session) {
    const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000));
    session = std::make_unique<Session>(Session::from_env(timeout));
  }
  return *session;
}

void close_job() {
  std::unique_ptr<Session> closing;
  {
    std::lock_guard<std::mutex> lock(session_mutex);
    closing = std::move(session);
  }
}

py::dict topology_dict(const Topology& t) {
  py::dict d;
  d["rank"] = t.rank;
  d["world_size"] = t.world_size;
  d["local_rank"] = t.local_rank;
  d["local_size"] = t.local_size;
  d["node"] = t.node;
  d["node_count"] = t.node_count;
  d["job_id"] = t.job_id;
  d["launcher"] = t.launcher;
  d["evidence"] = t.evidence;
  d["communicator"] = t.communicator;
  return d;
}

py::dict stats_dict(const LoadStats& s) {
  py::dict d;
  py::dict phases;
  for (const PhaseTime& p : s.phases) phases[py::str(p.name)] = p.seconds;
  d["phases"] = phases;
  d["tensor_bytes"] = s.tensor_bytes;
  d["node_bytes_staged"] = s.node_bytes_staged;
  d["node_bytes_mapped"] = s.node_bytes_mapped;
  py::dict sources;  // name -> "mapped", or "staged (why)"
  for (const auto& [name, source] : s.tensor_sources)
    sources[py::str(name)] = py::str(std::string(source_name(source)));
  d["sources"] = sources;
  py::dict kept;  // this node's kept copy: "reused", "kept", "not kept" (why in "note"), or "none"
  kept["state"] = std::string(kept_state_name(s.kept.state));
  kept["key"] = s.kept.key;
  kept["expires_unix"] = s.kept.expires_unix;
  kept["note"] = s.kept.note;
  d["kept"] = kept;
  d["rank_bytes_staged"] = s.rank_bytes_staged;
  d["rank_bytes_read"] = s.rank_bytes_read;
  d["tensors"] = s.tensors;
  d["segments"] = s.segments;
  if (!s.device_map.empty()) {
    py::dict map, bytes;
    for (const auto& [prefix, device] : s.device_map) map[py::str(prefix)] = device;
    for (const auto& [device, n] : s.device_bytes) bytes[py::str(device)] = n;
    d["device_map"] = map;
    d["device_bytes"] = bytes;
  }
  if (!s.device.empty()) {
    d["device"] = s.device;
    d["transport_choice"] = s.transport_choice;
    d["transports"] = s.transports;
    d["ring_bytes"] = s.ring_bytes;
    d["rank_bytes_to_device"] = s.rank_bytes_to_device;
    d["rank_bytes_received"] = s.rank_bytes_received;
  }
  return d;
}

// The keyword arguments of shardcast.load(), already checked for type by __init__.py.
struct PyLoadOptions {
  std::string placement = "shared";
  std::string dtype = "keep";
  std::string map_files = "auto";
  std::vector<std::string> keep_in_fp32;
  std::vector<std::string> tensors;
  std::vector<std::pair<std::string, std::string>> device_map;  // prefix -> device, normalized by the core
  std::string device_map_strategy;
  std::vector<std::pair<std::string, std::string>> max_memory;  // device -> size text ("20GiB", "1073741824")
  std::vector<std::string> no_split_modules;
  std::string offload_folder;
  int tp_size = 1;
  std::vector<std::string> tp_rules;
  double timeout = 600;
  std::string keep_for;  // a duration ("10m", "600"); empty: keep nothing
  std::string shm_dir;
  bool parallel_read = true;
  int device = -1;
  std::string transport = "auto";
  int ring_slots = 2;
  uint64_t ring_slot_bytes = 256ull << 20;
  bool device_stand_in = false;
  py::object progress = py::none();  // callable(done_bytes, total_bytes), called with the GIL held

  LoadOptions to_cpp() const {
    LoadOptions o;
    o.placement = parse_placement(placement);
    o.dtype = dtype;
    o.map_files = parse_map_files(map_files);
    o.keep_in_fp32 = keep_in_fp32;
    o.tensors = tensors;
    for (const auto& [prefix, device] : device_map) o.device_map.emplace_back(prefix, normalize_device(device));
    if (!device_map_strategy.empty()) parse_map_strategy(device_map_strategy);
    o.device_map_strategy = device_map_strategy;
    std::string budgets;  // checked as the CLI's --max-memory is: known devices, each once
    for (const auto& [device, size] : max_memory) budgets += (budgets.empty() ? "" : ",") + device + "=" + size;
    if (!budgets.empty()) o.max_memory = parse_max_memory(budgets);
    o.no_split_modules = no_split_modules;
    o.offload_folder = offload_folder;
    if (timeout <= 0) throw Error(ErrorCode::kInvalidArgument, fmt::format("timeout={} is not positive", timeout));
    o.timeout = std::chrono::seconds(static_cast<int64_t>(timeout + 0.999));
    if (!keep_for.empty()) o.keep_for = parse_duration(keep_for);
    o.shm_dir = shm_dir;
    o.parallel_read = parallel_read;
    if (tp_size < 1) throw Error(ErrorCode::kInvalidArgument, fmt::format("tp_size={} is below 1", tp_size));
    o.tp.size = tp_size;
    for (const std::string& rule : tp_rules) o.tp.rules.push_back(parse_slice_rule(rule));
    o.gpu.device = device;
    o.gpu.transport = transport;
    parse_transport(transport);  // a bad name fails here, before any rank waits
    o.gpu.ring_slots = ring_slots;
    o.gpu.ring_slot_bytes = ring_slot_bytes;
    o.gpu.host_stand_in = device_stand_in;
    if (!progress.is_none()) {
      py::object callback = progress;
      auto shared = std::make_shared<py::object>(callback);
      o.progress_bytes = [shared](uint64_t done, uint64_t total) {
        py::gil_scoped_acquire gil;
        (*shared)(done, total);
      };
    }
    return o;
  }
};

py::list named_list(const std::vector<std::pair<std::string, at::Tensor>>& named) {
  py::list out;
  for (const auto& [name, tensor] : named) out.append(py::make_tuple(name, tensor));
  return out;
}

// Errors cross as Python exceptions carrying the C++ message unchanged (shardcast/errors.py).
void translate(const Error& e) {
  py::module_ errors = py::module_::import("shardcast.errors");
  py::list ranks;
  for (int r : e.ranks()) ranks.append(r);
  py::object type;
  switch (e.code()) {
    case ErrorCode::kInvalidArgument: type = py::reinterpret_borrow<py::object>(PyExc_ValueError); break;
    case ErrorCode::kCorruptCheckpoint: type = errors.attr("CheckpointError"); break;
    case ErrorCode::kRemoteRankFailed: type = errors.attr("PeerError"); break;
    case ErrorCode::kTimeout:
      type =
          e.ranks().empty() ? py::reinterpret_borrow<py::object>(PyExc_TimeoutError) : errors.attr("PeerTimeoutError");
      break;
    case ErrorCode::kSystem:
      type = e.ranks().empty() ? py::reinterpret_borrow<py::object>(PyExc_OSError) : errors.attr("PeerError");
      break;
    case ErrorCode::kCuda:
    case ErrorCode::kNccl: type = errors.attr("DeviceError"); break;
  }
  py::object error = type(e.what());
  if (py::hasattr(error, "ranks")) error.attr("ranks") = ranks;
  PyErr_SetObject(type.ptr(), error.ptr());
}

}  // namespace
}  // namespace shardcast::python

PYBIND11_MODULE(_shardcast, m) {
  using namespace shardcast;
  using namespace shardcast::python;
  m.doc() = "shardcast's C++ core; use the shardcast package, not this module";
  m.attr("__version__") = SHARDCAST_VERSION;
  m.attr("built_with_cuda") = static_cast<bool>(SHARDCAST_HAVE_CUDA);

  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const Error& e) {
      translate(e);
    }
  });

  py::class_<PyLoadOptions>(m, "LoadOptions")
      .def(py::init<>())
      .def_readwrite("placement", &PyLoadOptions::placement)
      .def_readwrite("dtype", &PyLoadOptions::dtype)
      .def_readwrite("map_files", &PyLoadOptions::map_files)
      .def_readwrite("keep_in_fp32", &PyLoadOptions::keep_in_fp32)
      .def_readwrite("device_map", &PyLoadOptions::device_map)
      .def_readwrite("device_map_strategy", &PyLoadOptions::device_map_strategy)
      .def_readwrite("max_memory", &PyLoadOptions::max_memory)
      .def_readwrite("no_split_modules", &PyLoadOptions::no_split_modules)
      .def_readwrite("offload_folder", &PyLoadOptions::offload_folder)
      .def_readwrite("tensors", &PyLoadOptions::tensors)
      .def_readwrite("tp_size", &PyLoadOptions::tp_size)
      .def_readwrite("tp_rules", &PyLoadOptions::tp_rules)
      .def_readwrite("timeout", &PyLoadOptions::timeout)
      .def_readwrite("keep_for", &PyLoadOptions::keep_for)
      .def_readwrite("shm_dir", &PyLoadOptions::shm_dir)
      .def_readwrite("parallel_read", &PyLoadOptions::parallel_read)
      .def_readwrite("device", &PyLoadOptions::device)
      .def_readwrite("transport", &PyLoadOptions::transport)
      .def_readwrite("ring_slots", &PyLoadOptions::ring_slots)
      .def_readwrite("ring_slot_bytes", &PyLoadOptions::ring_slot_bytes)
      .def_readwrite("device_stand_in", &PyLoadOptions::device_stand_in)
      .def_readwrite("progress", &PyLoadOptions::progress);

  m.def(
      "topology",
      [](double timeout) {
        Session* s = nullptr;
        {
          py::gil_scoped_release release;
          s = &job(timeout);
        }
        return topology_dict(s->topology());
      },
      py::arg("timeout"), "Joins the job on first use (launcher detected from the environment); this rank's place");

  m.def("close", [] {
    py::gil_scoped_release release;
    close_job();
  });

  m.def(
      "load",
      [](const std::string& checkpoint, const PyLoadOptions& py_options) {
        const LoadOptions options = py_options.to_cpp();
        StateDict state;
        LoadStats stats;
        {
          py::gil_scoped_release release;
          std::lock_guard<std::mutex> lock(load_mutex);
          Session& s = job(py_options.timeout);
          state = s.load(checkpoint, options);
          stats = s.last_stats();
        }
        py::list tensors;
        for (const auto& item : state) tensors.append(py::make_tuple(item.key(), item.value()));
        return py::make_tuple(tensors, stats_dict(stats));
      },
      py::arg("checkpoint"), py::arg("options"));

  m.def(
      "load_into",
      [](std::vector<std::pair<std::string, at::Tensor>> targets, const std::string& checkpoint,
         const PyLoadOptions& py_options, bool strict, bool assign) {
        const LoadOptions options = py_options.to_cpp();
        LoadReport report;
        {
          py::gil_scoped_release release;
          std::lock_guard<std::mutex> lock(load_mutex);
          report = job(py_options.timeout).load_into(targets, checkpoint, options, strict, assign);
        }
        py::dict out;
        out["missing_keys"] = report.missing_keys;
        out["unexpected_keys"] = report.unexpected_keys;
        out["mismatched_keys"] = report.mismatched_keys;
        out["loaded"] = report.loaded;
        out["stats"] = stats_dict(report.stats);
        return py::make_tuple(out, assign ? named_list(targets) : py::list());
      },
      py::arg("targets"), py::arg("checkpoint"), py::arg("options"), py::arg("strict"), py::arg("assign"));

  m.def(
      "plan",
      [](const std::string& checkpoint, const PyLoadOptions& py_options) {
        const LoadOptions options = py_options.to_cpp();
        DevicePlan plan;
        {
          py::gil_scoped_release release;
          std::lock_guard<std::mutex> lock(load_mutex);
          plan = job(py_options.timeout).plan(checkpoint, options);
        }
        py::dict map, bytes, budgets, out;
        for (const auto& [prefix, device] : plan.device_map) map[py::str(prefix)] = device;
        for (const auto& [device, n] : plan.device_bytes) bytes[py::str(device)] = n;
        for (const auto& [device, n] : plan.budgets) {
          budgets[py::str(device)] = n == UINT64_MAX ? py::object(py::none()) : py::object(py::int_(n));
        }
        out["device_map"] = map;
        out["device_bytes"] = bytes;
        out["budgets"] = budgets;
        out["tensors"] = plan.tensors;
        out["tensor_bytes"] = plan.tensor_bytes;
        return out;
      },
      py::arg("checkpoint"), py::arg("options"));

  m.def(
      "save_sharded",
      [](const std::vector<std::pair<std::string, at::Tensor>>& tensors, const std::string& dir,
         const std::string& max_shard_size, bool safe_serialization) {
        StateDict state;
        for (const auto& [name, tensor] : tensors) state.insert(name, tensor);
        std::vector<std::filesystem::path> files;
        {
          py::gil_scoped_release release;
          files = save_sharded(state, dir, max_shard_size, safe_serialization);
        }
        std::vector<std::string> out;
        for (const auto& f : files) out.push_back(f.string());
        return out;
      },
      py::arg("tensors"), py::arg("dir"), py::arg("max_shard_size"), py::arg("safe_serialization"));

  m.def(
      "inspect",
      [](const std::string& path) {
        py::gil_scoped_release release;
        return summary_json(summarize_checkpoint(path)).dump();
      },
      py::arg("path"), "The checkpoint's summary as JSON text (what `shardcast inspect --json` prints)");

  m.def(
      "verify",
      [](const std::string& path) {
        VerifyReport report;
        {
          py::gil_scoped_release release;
          report = verify_checkpoint(path);
        }
        py::dict d;
        d["ok"] = report.problems.empty();
        d["problems"] = report.problems;
        d["shards"] = report.shards;
        d["tensors"] = report.tensors;
        d["bytes_read"] = report.bytes_read;
        return d;
      },
      py::arg("path"));

  m.def("info", [] {
    py::dict d;
    d["version"] = SHARDCAST_VERSION;
    d["torch"] = fmt::format("{}.{}.{}", TORCH_VERSION_MAJOR, TORCH_VERSION_MINOR, TORCH_VERSION_PATCH);
    d["gpu"] = describe(query_gpu_info());
    d["communicators"] = built_communicators();
    try {
      d["launcher"] = detect_launch_env().describe();
    } catch (const Error& e) {
      d["launcher"] = fmt::format("unusable: {}", e.what());
    }
    return d;
  });
}
