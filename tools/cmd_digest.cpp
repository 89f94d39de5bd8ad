#include <fmt/format.h>

#include "coordinator/catalog.h"
#include "coordinator/digest.h"
#include "core/file.h"
#include "tools/cli_checks.h"
#include "tools/commands.h"

namespace shardcast::cli {

void add_digest(CLI::App& app) {
  auto* cmd =
      app.add_subcommand("digest", "One line per tensor: name, dtype, shape, sha256 of its bytes (sorted by name)");
  static std::string path;
  static std::string out;
  cmd->add_option("PATH", path, "checkpoint directory, index file, or .safetensors/.bin file")->required();
  cmd->add_option("--out", out, "write the lines to this file instead of stdout")->check(output_file());
  cmd->callback([] {
    std::string text;
    for (const std::string& line : digest_checkpoint(open_catalog(path))) text += line + "\n";
    if (out.empty()) {
      fmt::print("{}", text);
      return;
    }
    std::error_code ec;
    std::filesystem::remove(out, ec);
    File file = File::create_exclusive(out);
    file.write_all(text.data(), text.size());
  });
}

}  // namespace shardcast::cli
