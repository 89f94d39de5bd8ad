// Where each tensor lives, in transformers' and accelerate's words: a device_map from module or parameter prefixes to
// devices, and the planner behind device_map="auto" / "balanced" / "sequential" (accelerate's infer_auto_device_map)
// over a module tree with a memory budget per device. Torch-free: the module tree comes as names in module order.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "coordinator/catalog.h"

namespace shardcast {

// Keys: module or parameter prefixes as transformers writes them ("model.layers.3", "lm_head", "" for everything);
// values: devices (normalize_device). In the order given (the planner: module order).
using DeviceMap = std::vector<std::pair<std::string, std::string>>;

// A device as a device_map value: "cuda" (the rank's own GPU, cuda:LOCAL_RANK), "cuda:K", "cpu" or "disk". Accepts
// what transformers users write besides: an integer K for "cuda:K". Throws kInvalidArgument on anything else.
std::string normalize_device(const std::string& text);

// Does key `prefix` cover tensor `name`: "" covers every name; otherwise the name itself, or a name below it on a
// component boundary ("layers.1" covers "layers.1.w", never "layers.10.w").
bool prefix_covers(const std::string& prefix, const std::string& name);

// "name: device" for each name, by the longest covering key. Throws kInvalidArgument naming the first name no key
// covers, or a key given twice.
std::vector<std::string> resolve_devices(const DeviceMap& map, const std::vector<std::string>& names);

// The module tree the planner fills devices with.
struct ModelTensor {
  std::string name;
  uint64_t bytes = 0;   // as loaded (in the requested dtype)
  std::string tied_to;  // another tensor of the layout holding the same storage: no bytes of its own, its device
};
struct ModelLayout {
  std::vector<ModelTensor> tensors;   // in module order
  std::vector<std::string> no_split;  // module paths kept whole on one device (transformer layers)
};

// With no model: the checkpoint's `names` (all of them when empty) in natural order ("layers.2" before "layers.10"),
// sized in the loaded dtypes, tied .bin weights as ties, and each name's prefix up to its first numeric component
// ("model.layers.3") kept whole.
ModelLayout checkpoint_layout(const Catalog& catalog, const std::vector<std::string>& names,
                              const std::vector<DType>& loaded_dtypes);

struct DeviceBudget {
  std::string device;  // normalize_device's form
  uint64_t bytes = 0;  // what it may hold
  // A tensor placed here costs bytes x copies: cpu under placement private, where each local rank holds its own.
  uint64_t copies = 1;
};

enum class MapStrategy { kBalanced, kSequential };
// "auto" and "balanced" balance the GPUs (as accelerate's "auto"); "sequential" fills them in order.
bool is_map_strategy(const std::string& text);
MapStrategy parse_map_strategy(const std::string& text);

struct PlannedDeviceMap {
  DeviceMap map;  // one key per subtree that landed on one device, in module order ("" when everything did)
  std::vector<std::pair<std::string, uint64_t>> bytes;  // per device used, in budget order (each tensor once)
};

// accelerate's infer_auto_device_map: walks the top-level modules in order and puts each on the current device if
// its bytes fit what is left there; a module that does not fit is split into its children, unless it is in no_split
// or holds only tensors (a leaf module), in which case the next device is tried. Budgets are filled in the order
// given (GPUs, cpu, disk). Balanced (with more than one GPU) caps every GPU but the last at an even share of the
// model. A tied tensor goes where the tensor it is tied to went. Throws kInvalidArgument naming the module and every
// budget when something fits nowhere.
PlannedDeviceMap plan_device_map(const ModelLayout& layout, const std::vector<DeviceBudget>& budgets,
                                 MapStrategy strategy);

// A device_map as users type it: "PREFIX=DEVICE,..." ("model.layers.0=cuda,model=cpu,=disk": an empty prefix is "",
// everything else), or a JSON object ({"model.embed_tokens": 0, "": "cpu"}, as hf_device_map prints). Devices are
// normalized. Throws kInvalidArgument naming the entry.
DeviceMap parse_device_map(const std::string& text);

// "cuda=20GiB,cpu=60GiB,disk=0" (also "0=20GiB" for cuda:0): (device, bytes) in the order given. Sizes as
// parse_size reads them. Throws kInvalidArgument naming the entry.
std::vector<std::pair<std::string, uint64_t>> parse_max_memory(const std::string& text);

// A budget as the planner's messages and `shardcast plan` print it: "unbounded" for UINT64_MAX, else format_size.
std::string budget_text(uint64_t bytes);

// "cuda" < "cuda:0" < "cuda:1" < ... < "cpu" < "disk": the order budgets are filled in.
int device_rank(const std::string& device);

}  // namespace shardcast
