// `shardcast plan`: the device_map a load would use, without loading (budgets, map, bytes per device).
#include <limits>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/size.h"
#include "tools/cli_checks.h"
#include "tools/commands.h"
#include "tools/device_map_options.h"
#include "worker/session.h"

namespace shardcast::cli {
namespace {

struct PlanArgs {
  std::string checkpoint, placement = "shared", dtype = "keep", shm_dir;
  std::vector<std::string> tensors;
  DeviceMapArgs map;
  bool json = false;
};

void run_plan(const PlanArgs& args) {
  Session session = Session::from_env();
  LoadOptions options;
  options.placement = parse_placement(args.placement);
  options.dtype = args.dtype;
  options.tensors = args.tensors;
  options.shm_dir = args.shm_dir;
  apply_device_map_options(args.map, options);
  const DevicePlan plan = session.plan(args.checkpoint, options);
  if (session.topology().rank != 0) return;

  if (args.json) {
    nlohmann::ordered_json out;
    out["checkpoint"] = args.checkpoint;
    out["tensors"] = plan.tensors;
    out["tensor_bytes"] = plan.tensor_bytes;
    out["device_map"] = nlohmann::ordered_json::object();
    for (const auto& [prefix, device] : plan.device_map) out["device_map"][prefix] = device;
    out["device_bytes"] = nlohmann::ordered_json::object();
    for (const auto& [device, bytes] : plan.device_bytes) out["device_bytes"][device] = bytes;
    if (!plan.budgets.empty()) {
      for (const auto& [device, bytes] : plan.budgets) {
        out["budgets"][device] = bytes == std::numeric_limits<uint64_t>::max() ? nlohmann::ordered_json(nullptr)
                                                                               : nlohmann::ordered_json(bytes);
      }
    }
    fmt::print("{}\n", out.dump(2));
    return;
  }
  size_t width = 6;
  for (const auto& entry : plan.device_map) width = std::max(width, entry.first.size() + 2);
  fmt::print("device_map for '{}': {} tensors, {}\n\n", args.checkpoint, plan.tensors, format_size(plan.tensor_bytes));
  fmt::print("{:<{}} {}\n", "module", width, "device");
  for (const auto& [prefix, device] : plan.device_map)
    fmt::print("{:<{}} {}\n", prefix.empty() ? "\"\"" : prefix, width, device);
  fmt::print("\n{:<8} {:>12} {:>12}\n", "device", "bytes", "budget");
  for (const auto& [device, bytes] : plan.device_bytes) {
    std::string budget = "-";
    for (const auto& b : plan.budgets) {
      if (b.first == device) budget = budget_text(b.second);
    }
    fmt::print("{:<8} {:>12} {:>12}\n", device, format_size(bytes), budget);
  }
}

}  // namespace

void add_plan(CLI::App& app) {
  auto* cmd = app.add_subcommand("plan", "Print the device_map a load would use, without loading");
  static PlanArgs args;
  cmd->add_option("CHECKPOINT", args.checkpoint, "checkpoint directory, index or file")->required();
  add_device_map_options(*cmd, args.map);
  cmd->get_option("--device-map")->required();
  cmd->add_option("--placement", args.placement,
                  "what a cpu byte costs: shared/cow (once per node), private (per rank)")
      ->check(CLI::IsMember({"shared", "cow", "private", "cuda"}))
      ->capture_default_str();
  cmd->add_option("--dtype", args.dtype, "the dtype tensors are sized in (as for load)")
      ->check(dtype_name(true))
      ->capture_default_str();
  cmd->add_option("--tensors", args.tensors, "plan only these names (a trailing * matches a prefix)");
  cmd->add_option("--shm-dir", args.shm_dir, "where segments would live (the free space of the cpu budget)")
      ->check(CLI::ExistingDirectory);
  cmd->add_flag("--json", args.json, "print JSON");
  cmd->callback([] { run_plan(args); });
}

}  // namespace shardcast::cli
