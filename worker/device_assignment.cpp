#include "worker/device_assignment.h"

#include <algorithm>
#include <limits>
#include <map>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/meminfo.h"
#include "worker/gpu_info.h"
#include "worker/load_steps.h"

namespace shardcast {
namespace {

using detail::attempt;
using json = nlohmann::json;
constexpr uint64_t kUnbounded = std::numeric_limits<uint64_t>::max();

// This rank's budgets when max_memory gives none, as "device=bytes,...".
std::string local_budgets(Placement cpu_placement, const shm::Location& location, int gpu_ordinal) {
  std::string text;
  if (const uint64_t gpu = gpu_free_bytes(gpu_ordinal); gpu > 0) text += fmt::format("cuda={},", gpu / 10 * 9);
  uint64_t cpu = mem_available_bytes();  // 0: unknown (no /proc/meminfo), so free /dev/shm alone
  if (cpu_placement != Placement::kPrivate) {
    const uint64_t shm = shm::free_bytes(location);
    cpu = cpu == 0 ? shm : std::min(cpu, shm);
  }
  return text + fmt::format("cpu={}", cpu);
}

// The least of every rank's budgets; a device some rank lacks is left out.
std::vector<std::pair<std::string, uint64_t>> least_budgets(const std::vector<std::string>& per_rank) {
  std::map<std::string, std::pair<uint64_t, size_t>> least;  // device -> (bytes, ranks that have it)
  for (const std::string& text : per_rank) {
    for (const auto& [device, bytes] : parse_max_memory(text)) {
      auto [it, added] = least.emplace(device, std::make_pair(bytes, 0));
      it->second.first = std::min(it->second.first, bytes);
      ++it->second.second;
    }
  }
  std::vector<std::pair<std::string, uint64_t>> out;
  for (const auto& [device, entry] : least) {
    if (entry.second == per_rank.size()) out.emplace_back(device, entry.first);
  }
  return out;
}

std::vector<std::string> layout_names(const ModelLayout& layout) {
  std::vector<std::string> names;
  for (const ModelTensor& t : layout.tensors) names.push_back(t.name);
  return names;
}

// Bytes per device of a resolved map, each storage once.
std::vector<std::pair<std::string, uint64_t>> bytes_per_device(const ModelLayout& layout,
                                                               const std::vector<std::string>& devices) {
  std::map<std::string, uint64_t> names;
  for (const ModelTensor& t : layout.tensors) names.emplace(t.name, 0);
  std::map<std::string, uint64_t> bytes;
  for (size_t i = 0; i < layout.tensors.size(); ++i) {
    const ModelTensor& t = layout.tensors[i];
    bytes[devices[i]] += t.tied_to.empty() || !names.count(t.tied_to) ? t.bytes : 0;
  }
  std::vector<std::pair<std::string, uint64_t>> out(bytes.begin(), bytes.end());
  std::sort(out.begin(), out.end(),
            [](const auto& a, const auto& b) { return device_rank(a.first) < device_rank(b.first); });
  return out;
}

}  // namespace

DeviceAssignment assign_devices(NodeLoader& loader, const Group& group, const ModelLayout& layout,
                                const DeviceMapOptions& options, Placement cpu_placement, const shm::Location& location,
                                int gpu_ordinal, Timeout timeout) {
  const Topology& topo = group.topology;
  DeviceAssignment out;
  std::unique_ptr<Error> own;
  if (options.strategy.empty()) {
    std::string error = attempt(
        [&] {
          for (const auto& [prefix, device] : options.map) {
            try {
              out.map.emplace_back(prefix, normalize_device(device));
            } catch (const Error& e) {
              throw e.with_context(fmt::format("device_map entry '{}'", prefix));
            }
          }
        },
        &own);
    loader.agree("device_map", error, timeout);
    if (own) throw *own;
  } else {
    // Budgets every rank agrees on, then rank 0 plans and everyone takes its map (or its error).
    const MapStrategy strategy = parse_map_strategy(options.strategy);
    std::vector<std::pair<std::string, uint64_t>> given = options.max_memory;
    if (given.empty()) {
      // A rank that cannot tell its budgets says why through the same gather, so no rank waits for it.
      std::string mine;
      const std::string error =
          attempt([&] { mine = "O" + local_budgets(cpu_placement, location, gpu_ordinal); }, &own);
      std::vector<std::string> all = group.world->all_gather(own ? "E" + error : mine, "device budgets", timeout);
      for (size_t r = 0; r < all.size(); ++r) {
        if (all[r].empty() || all[r][0] != 'O') {
          if (own) throw *own;
          throw Error(
              ErrorCode::kRemoteRankFailed,
              fmt::format("rank {} could not tell its memory budgets: {}", r, all[r].empty() ? "" : all[r].substr(1)),
              {static_cast<int>(r)});
        }
        all[r] = all[r].substr(1);
      }
      given = least_budgets(all);
    }
    for (const auto& [device, bytes] : given) {
      const uint64_t copies = device == "cpu" && cpu_placement == Placement::kPrivate ? topo.local_size : 1;
      out.budgets.push_back({normalize_device(device), bytes, copies});
    }
    if (std::none_of(out.budgets.begin(), out.budgets.end(),
                     [](const DeviceBudget& b) { return b.device == "disk"; })) {
      out.budgets.push_back({"disk", kUnbounded, 1});
    }
    std::stable_sort(out.budgets.begin(), out.budgets.end(), [](const DeviceBudget& a, const DeviceBudget& b) {
      return device_rank(a.device) < device_rank(b.device);
    });
    std::string wire;
    if (topo.rank == 0) {
      std::string error =
          attempt([&] { wire = "O" + json(plan_device_map(layout, out.budgets, strategy).map).dump(); }, &own);
      if (own) wire = "E" + error;
    }
    wire = group.world->all_gather(wire, "device map", timeout)[0];
    if (own) throw *own;
    if (wire.empty() || wire[0] != 'O') {
      throw Error(ErrorCode::kInvalidArgument,
                  fmt::format("rank 0 planning the device_map: {}", wire.empty() ? "no answer" : wire.substr(1)));
    }
    out.map = json::parse(wire.substr(1)).get<DeviceMap>();
  }

  std::string error = attempt(
      [&] {
        const std::vector<std::string> names = layout_names(layout);
        std::vector<std::string> devices = resolve_devices(out.map, names);
        // A tied tensor goes where the tensor holding its storage went (a planned map says so already).
        std::map<std::string, size_t> index;
        for (size_t i = 0; i < names.size(); ++i) index.emplace(names[i], i);
        for (size_t i = 0; i < names.size(); ++i) {
          auto holder = index.find(layout.tensors[i].tied_to);
          if (holder == index.end() || devices[i] == devices[holder->second]) continue;
          devices[i] = devices[holder->second];
          out.map.emplace_back(names[i], devices[i]);
        }
        out.bytes = bytes_per_device(layout, devices);
        for (const auto& [device, bytes] : out.bytes) {
          std::vector<std::string> part;
          for (size_t i = 0; i < names.size(); ++i) {
            if (devices[i] == device) part.push_back(names[i]);
          }
          out.parts.emplace_back(device, std::move(part));
        }
      },
      &own);
  loader.agree("device_map", error, timeout);
  if (own) throw *own;

  // Each device is one collective pass: every rank must make the same ones (load_into selects per rank's module).
  std::string mine;
  for (const auto& part : out.parts) mine += part.first + " ";
  const std::vector<std::string> all = group.world->all_gather(mine, "device map devices", timeout);
  for (size_t r = 0; r < all.size(); ++r) {
    if (all[r] != all[0]) {
      throw Error(ErrorCode::kInvalidArgument,
                  fmt::format("the ranks' device_maps put their tensors on different devices (rank 0: {}; rank {}: "
                              "{}): every rank must load onto the same devices",
                              all[0], r, all[r]));
    }
  }
  return out;
}

}  // namespace shardcast
