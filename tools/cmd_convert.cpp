#include <fmt/format.h>

#include "coordinator/convert.h"
#include "core/error.h"
#include "core/size.h"
#include "tools/cli_checks.h"
#include "tools/commands.h"

namespace shardcast::cli {

void add_convert(CLI::App& app) {
  auto* cmd = app.add_subcommand("convert", "Write a checkpoint as sharded safetensors: from .bin, resharded, or cast");
  static std::string src, dst, max_shard = "5GB", dtype;
  cmd->add_option("SRC", src, "source checkpoint (safetensors or .bin)")->required();
  cmd->add_option("DST", dst, "new or empty output directory")->required();
  cmd->add_option("--max-shard-size", max_shard, "largest shard: bytes, or 200MB (10^6), 2GiB (2^30)")
      ->check(size_at_least(1))
      ->capture_default_str();
  cmd->add_option("--dtype", dtype, "cast floating tensors to bf16, f16, f32 or f64 (ints and bools keep theirs)")
      ->check(dtype_name(false));
  cmd->callback([] {
    ConvertOptions options;
    options.max_shard_size = parse_size(max_shard);
    if (!dtype.empty()) {
      options.dtype = dtype_from_user_name(dtype);
      if (!options.dtype) throw Error(ErrorCode::kInvalidArgument, fmt::format("unknown dtype '{}'", dtype));
    }
    ConvertResult r = convert_checkpoint(src, dst, options);
    fmt::print("wrote {} tensors in {} file(s) to {}", r.tensors, r.files.size(), dst);
    if (r.cast) fmt::print(", {} cast to {}", r.cast, dtype_name(*options.dtype));
    if (r.untied) fmt::print(", {} tied weight(s) stored as separate copies", r.untied);
    fmt::print("\n");
  });
}

}  // namespace shardcast::cli
