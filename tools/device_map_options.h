// The device_map options `shardcast load` and `shardcast plan` share: --device-map, --max-memory, --offload-folder,
// --no-split, --dtype, --keep-in-fp32, checked while the command line is parsed.
#pragma once

#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "coordinator/device_map.h"
#include "tools/cli_checks.h"
#include "worker/session.h"

namespace shardcast::cli {

struct DeviceMapArgs {
  std::string device_map, max_memory, offload_folder;
  std::vector<std::string> no_split, keep_in_fp32;
};

inline void add_device_map_options(CLI::App& cmd, DeviceMapArgs& args) {
  cmd.add_option("--device-map", args.device_map,
                 "where tensors live: auto, balanced, sequential (planned within --max-memory), or PREFIX=DEVICE,... "
                 "(DEVICE: cuda, cuda:K, cpu, disk; an empty PREFIX covers the rest) or a JSON object")
      ->check(parsed_by(
          [](const std::string& text) {
            if (!is_map_strategy(text)) parse_device_map(text);
          },
          "MAP"));
  cmd.add_option("--max-memory", args.max_memory,
                 "budgets for --device-map auto: DEVICE=SIZE,... (cuda per rank, cpu per node; default: what is free)")
      ->check(parsed_by([](const std::string& text) { parse_max_memory(text); }, "BUDGETS"));
  cmd.add_option("--offload-folder", args.offload_folder,
                 "where disk tensors that cannot be mapped from the checkpoint (.bin, another dtype) are written");
  cmd.add_option("--no-split", args.no_split, "module paths --device-map auto keeps on one device");
  cmd.add_option("--keep-in-fp32", args.keep_in_fp32,
                 "with --dtype f16 or bf16: modules whose floating tensors load in f32");
}

inline void apply_device_map_options(const DeviceMapArgs& args, LoadOptions& options) {
  if (is_map_strategy(args.device_map)) {
    options.device_map_strategy = args.device_map;
  } else if (!args.device_map.empty()) {
    options.device_map = parse_device_map(args.device_map);
  }
  if (!args.max_memory.empty()) options.max_memory = parse_max_memory(args.max_memory);
  options.offload_folder = args.offload_folder;
  options.no_split_modules = args.no_split;
  options.keep_in_fp32 = args.keep_in_fp32;
}

}  // namespace shardcast::cli
