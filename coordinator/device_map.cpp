#include "coordinator/device_map.h"

#include <algorithm>
#include <cctype>
#include <deque>
#include <functional>
#include <limits>
#include <map>
#include <set>

#include <fmt/format.h>
#include <fmt/ranges.h>  // fmt::join (its home since fmt 11)
#include <nlohmann/json.hpp>

#include "core/size.h"

namespace shardcast {
namespace {

bool all_digits(const std::string& s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](unsigned char c) { return std::isdigit(c); });
}

std::vector<std::string> components(const std::string& name) {
  std::vector<std::string> out;
  size_t start = 0;
  for (;;) {
    const size_t dot = name.find('.', start);
    out.push_back(name.substr(start, dot - start));
    if (dot == std::string::npos) return out;
    start = dot + 1;
  }
}

// "layers.2" < "layers.10": numeric components compare as numbers.
bool natural_less(const std::string& a, const std::string& b) {
  const auto ca = components(a), cb = components(b);
  for (size_t i = 0; i < std::min(ca.size(), cb.size()); ++i) {
    if (ca[i] == cb[i]) continue;
    if (all_digits(ca[i]) && all_digits(cb[i]) && ca[i].size() != cb[i].size()) return ca[i].size() < cb[i].size();
    return ca[i] < cb[i];
  }
  return ca.size() < cb.size();
}

// "K=V,K=V" as (K, V) pairs; `what` and `form` name the option and its form in errors.
std::vector<std::pair<std::string, std::string>> key_values(const std::string& text, const char* what,
                                                            const char* form) {
  std::vector<std::pair<std::string, std::string>> out;
  size_t start = 0;
  while (start <= text.size()) {
    const size_t comma = std::min(text.find(',', start), text.size());
    const std::string entry = text.substr(start, comma - start);
    const size_t eq = entry.find('=');
    if (eq == std::string::npos) {
      throw Error(ErrorCode::kInvalidArgument, fmt::format("{} entry '{}' is not {}", what, entry, form));
    }
    out.emplace_back(entry.substr(0, eq), entry.substr(eq + 1));
    start = comma + 1;
  }
  return out;
}

// The module tree: one node per module path, tensors as leaves.
struct Node {
  std::string path;
  std::vector<size_t> children;  // nodes, in module order
  int tensor = -1;               // a leaf: index into the layout's tensors
  uint64_t bytes = 0;            // the subtree's own bytes (tied tensors hold none)
  bool whole = false;            // kept on one device: in no_split, or a leaf module (only tensors below it)
};

class Tree {
 public:
  explicit Tree(const ModelLayout& layout) {
    nodes_.push_back(Node{});
    std::map<std::string, size_t> modules{{"", 0}};
    std::set<std::string> names;
    for (const ModelTensor& t : layout.tensors) names.insert(t.name);
    for (size_t i = 0; i < layout.tensors.size(); ++i) {
      const ModelTensor& t = layout.tensors[i];
      size_t parent = 0;
      const std::vector<std::string> parts = components(t.name);
      std::string path;
      for (size_t k = 0; k + 1 < parts.size(); ++k) {
        path += (k ? "." : "") + parts[k];
        if (names.count(path)) {
          throw Error(ErrorCode::kInvalidArgument,
                      fmt::format("tensor '{}' is also the module holding '{}': a device_map cannot tell them apart",
                                  path, t.name));
        }
        auto [it, added] = modules.emplace(path, nodes_.size());
        if (added) {
          nodes_.push_back(Node{path, {}, -1, 0, false});
          nodes_[parent].children.push_back(it->second);
        }
        parent = it->second;
      }
      const uint64_t own = t.tied_to.empty() || !names.count(t.tied_to) ? t.bytes : 0;
      nodes_.push_back(Node{t.name, {}, static_cast<int>(i), own, true});
      nodes_[parent].children.push_back(nodes_.size() - 1);
    }
    for (const std::string& path : layout.no_split) {
      auto it = modules.find(path);
      if (it != modules.end()) nodes_[it->second].whole = true;
    }
    sum(0);
  }

  const Node& node(size_t i) const { return nodes_[i]; }

  void for_each_tensor(size_t i, const std::function<void(int)>& visit) const {
    if (nodes_[i].tensor >= 0) visit(nodes_[i].tensor);
    for (size_t c : nodes_[i].children) for_each_tensor(c, visit);
  }

 private:
  uint64_t sum(size_t i) {
    bool only_tensors = nodes_[i].tensor < 0 && !nodes_[i].children.empty();
    for (size_t c : nodes_[i].children) {
      nodes_[i].bytes += sum(c);
      only_tensors &= nodes_[c].tensor >= 0;
    }
    if (only_tensors && i != 0) nodes_[i].whole = true;
    return nodes_[i].bytes;
  }

  std::vector<Node> nodes_;
};

// One key per subtree whose tensors all sit on one device.
void emit(const Tree& tree, size_t i, const std::vector<int>& device_of, const std::vector<DeviceBudget>& budgets,
          DeviceMap& out) {
  std::set<int> devices;
  tree.for_each_tensor(i, [&](int t) { devices.insert(device_of[t]); });
  if (devices.empty()) return;
  if (devices.size() == 1) {
    out.emplace_back(tree.node(i).path, budgets[*devices.begin()].device);
    return;
  }
  for (size_t c : tree.node(i).children) emit(tree, c, device_of, budgets, out);
}

}  // namespace

std::string normalize_device(const std::string& text) {
  if (text == "cuda" || text == "cpu" || text == "disk") return text;
  if (all_digits(text) && text.size() < 6) return "cuda:" + std::to_string(std::stoi(text));
  if (text.rfind("cuda:", 0) == 0 && all_digits(text.substr(5)) && text.size() < 11) {
    return "cuda:" + std::to_string(std::stoi(text.substr(5)));
  }
  throw Error(ErrorCode::kInvalidArgument,
              fmt::format("device '{}' is not one a device_map may name: use \"cuda\" (the rank's own GPU), "
                          "\"cuda:K\" or K, \"cpu\" or \"disk\"",
                          text));
}

bool prefix_covers(const std::string& prefix, const std::string& name) {
  if (prefix.empty()) return true;
  return name.compare(0, prefix.size(), prefix) == 0 && (name.size() == prefix.size() || name[prefix.size()] == '.');
}

std::vector<std::string> resolve_devices(const DeviceMap& map, const std::vector<std::string>& names) {
  std::set<std::string> keys;
  for (const auto& entry : map) {
    if (!keys.insert(entry.first).second) {
      throw Error(ErrorCode::kInvalidArgument, fmt::format("device_map names '{}' twice", entry.first));
    }
  }
  std::vector<std::string> devices;
  devices.reserve(names.size());
  for (const std::string& name : names) {
    const std::pair<std::string, std::string>* best = nullptr;
    for (const auto& entry : map) {
      if (prefix_covers(entry.first, name) && (!best || entry.first.size() > best->first.size())) best = &entry;
    }
    if (!best) {
      throw Error(ErrorCode::kInvalidArgument,
                  fmt::format("tensor '{}' is on no device: no device_map key covers it (add its module, or \"\" for "
                              "everything else)",
                              name));
    }
    devices.push_back(best->second);
  }
  return devices;
}

ModelLayout checkpoint_layout(const Catalog& catalog, const std::vector<std::string>& names,
                              const std::vector<DType>& loaded_dtypes) {
  ModelLayout layout;
  std::set<std::string> units;
  for (size_t i = 0; i < names.size(); ++i) {
    const TensorInfo* t = catalog.find(names[i]);
    if (!t) throw Error(ErrorCode::kInvalidArgument, fmt::format("tensor '{}' is not in the checkpoint", names[i]));
    ModelTensor m{t->name, t->numel() * dtype_size(loaded_dtypes.at(i)), t->tied_to};
    layout.tensors.push_back(std::move(m));
    const std::vector<std::string> parts = components(t->name);
    std::string unit;
    for (size_t k = 0; k + 1 < parts.size(); ++k) {
      unit += (k ? "." : "") + parts[k];
      if (all_digits(parts[k])) {
        units.insert(unit);
        break;
      }
    }
  }
  std::stable_sort(layout.tensors.begin(), layout.tensors.end(),
                   [](const ModelTensor& a, const ModelTensor& b) { return natural_less(a.name, b.name); });
  layout.no_split.assign(units.begin(), units.end());
  return layout;
}

bool is_map_strategy(const std::string& text) {
  return text == "auto" || text == "balanced" || text == "sequential";
}

MapStrategy parse_map_strategy(const std::string& text) {
  if (text == "auto" || text == "balanced") return MapStrategy::kBalanced;
  if (text == "sequential") return MapStrategy::kSequential;
  throw Error(ErrorCode::kInvalidArgument,
              fmt::format("device_map '{}' is not a strategy: use \"auto\", \"balanced\" or \"sequential\"", text));
}

PlannedDeviceMap plan_device_map(const ModelLayout& layout, const std::vector<DeviceBudget>& budgets,
                                 MapStrategy strategy) {
  if (budgets.empty()) throw Error(ErrorCode::kInvalidArgument, "device_map auto needs at least one device budget");
  const Tree tree(layout);
  std::vector<uint64_t> cap;
  for (const DeviceBudget& b : budgets) cap.push_back(b.bytes);
  std::vector<size_t> gpus;
  for (size_t d = 0; d < budgets.size(); ++d) {
    if (budgets[d].device.rfind("cuda", 0) == 0) gpus.push_back(d);
  }
  if (strategy == MapStrategy::kBalanced && gpus.size() > 1) {
    // An even share each, whole pieces rounding up; the last GPU keeps its budget for what is left.
    const uint64_t share = (tree.node(0).bytes + gpus.size() - 1) / gpus.size();
    for (size_t k = 0; k + 1 < gpus.size(); ++k) cap[gpus[k]] = std::min(cap[gpus[k]], share);
  }

  std::vector<uint64_t> used(budgets.size(), 0);
  std::vector<int> device_of(layout.tensors.size(), -1);
  std::deque<size_t> todo(tree.node(0).children.begin(), tree.node(0).children.end());
  size_t d = 0;
  while (!todo.empty()) {
    const Node& n = tree.node(todo.front());
    const uint64_t cost = n.bytes * budgets[d].copies;
    if (cost <= cap[d] - used[d]) {
      tree.for_each_tensor(todo.front(), [&](int t) { device_of[t] = static_cast<int>(d); });
      used[d] += cost;
      todo.pop_front();
    } else if (!n.whole && !n.children.empty()) {
      todo.pop_front();
      todo.insert(todo.begin(), n.children.begin(), n.children.end());
    } else if (++d == budgets.size()) {
      std::vector<std::string> state;
      for (size_t k = 0; k < budgets.size(); ++k) {
        state.push_back(fmt::format("{} {} of {}{}", budgets[k].device, format_size(used[k]), budget_text(cap[k]),
                                    budgets[k].copies > 1 ? fmt::format(" ({} copies)", budgets[k].copies) : ""));
      }
      throw Error(ErrorCode::kInvalidArgument,
                  fmt::format("device_map: '{}' ({}) fits on no device; used of each budget: {} (raise max_memory, "
                              "allow \"disk\", or load fewer tensors)",
                              n.path, format_size(n.bytes), fmt::join(state, ", ")));
    }
  }

  // Tied tensors follow the tensor holding their storage.
  std::map<std::string, size_t> index;
  for (size_t i = 0; i < layout.tensors.size(); ++i) index.emplace(layout.tensors[i].name, i);
  for (size_t i = 0; i < layout.tensors.size(); ++i) {
    auto it = index.find(layout.tensors[i].tied_to);
    if (it != index.end()) device_of[i] = device_of[it->second];
  }

  PlannedDeviceMap planned;
  emit(tree, 0, device_of, budgets, planned.map);
  std::vector<uint64_t> bytes(budgets.size(), 0);
  for (size_t i = 0; i < layout.tensors.size(); ++i) {
    const ModelTensor& t = layout.tensors[i];
    if (t.tied_to.empty() || !index.count(t.tied_to)) bytes[device_of[i]] += t.bytes;
  }
  for (size_t k = 0; k < budgets.size(); ++k) {
    if (std::count(device_of.begin(), device_of.end(), static_cast<int>(k))) {
      planned.bytes.emplace_back(budgets[k].device, bytes[k]);
    }
  }
  return planned;
}

DeviceMap parse_device_map(const std::string& text) {
  DeviceMap map;
  auto add = [&](const std::string& prefix, const std::string& device) {
    if (std::any_of(map.begin(), map.end(), [&](const auto& e) { return e.first == prefix; })) {
      throw Error(ErrorCode::kInvalidArgument, fmt::format("device_map names '{}' twice", prefix));
    }
    try {
      map.emplace_back(prefix, normalize_device(device));
    } catch (const Error& e) {
      throw e.with_context(fmt::format("device_map entry '{}'", prefix));
    }
  };
  if (!text.empty() && text.front() == '{') {
    nlohmann::ordered_json j;
    try {
      j = nlohmann::ordered_json::parse(text);
    } catch (const nlohmann::json::exception& e) {
      throw Error(ErrorCode::kInvalidArgument, fmt::format("device_map is not valid JSON: {}", e.what()));
    }
    for (const auto& [prefix, device] : j.items()) {
      if (device.is_number_unsigned()) {
        add(prefix, std::to_string(device.get<uint64_t>()));
      } else if (device.is_string()) {
        add(prefix, device.get<std::string>());
      } else {
        throw Error(ErrorCode::kInvalidArgument,
                    fmt::format("device_map entry '{}' is {}, not a device", prefix, device.dump()));
      }
    }
    return map;
  }
  for (const auto& [prefix, device] :
       key_values(text, "device_map", "PREFIX=DEVICE (as in model.layers.0=cuda,=cpu)")) {
    add(prefix, device);
  }
  return map;
}

std::vector<std::pair<std::string, uint64_t>> parse_max_memory(const std::string& text) {
  std::vector<std::pair<std::string, uint64_t>> out;
  for (const auto& [key, size] : key_values(text, "max_memory", "DEVICE=SIZE (as in cuda=20GiB,cpu=60GiB)")) {
    const std::string device = normalize_device(key);
    if (std::any_of(out.begin(), out.end(), [&](const auto& e) { return e.first == device; })) {
      throw Error(ErrorCode::kInvalidArgument, fmt::format("max_memory names {} twice", device));
    }
    out.emplace_back(device, parse_size(size));
  }
  return out;
}

std::string budget_text(uint64_t bytes) {
  return bytes == std::numeric_limits<uint64_t>::max() ? "unbounded" : format_size(bytes);
}

int device_rank(const std::string& device) {
  if (device == "cuda") return -1;
  if (device == "cpu") return 1 << 20;
  if (device == "disk") return (1 << 20) + 1;
  return std::stoi(device.substr(5));  // "cuda:K"
}

}  // namespace shardcast
