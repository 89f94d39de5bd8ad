#include <cstdlib>

#include <fmt/format.h>

#include "core/size.h"
#include "shm/segment.h"
#include "tools/commands.h"

namespace shardcast::cli {

void add_gc(CLI::App& app) {
  auto* cmd = app.add_subcommand("gc", "Remove shared-memory segments left by crashed jobs (creator process gone)");
  static std::string shm_dir;
  static bool dry_run = false;
  cmd->add_option("--shm-dir", shm_dir,
                  "segment directory used with load --shm-dir (default $SHARDCAST_SHM_DIR, else /dev/shm)")
      ->check(CLI::ExistingDirectory);  // a mistyped directory would read as "0 orphans"
  cmd->add_flag("--dry-run", dry_run, "only list them");
  cmd->callback([] {
    if (shm_dir.empty() && std::getenv("SHARDCAST_SHM_DIR")) shm_dir = std::getenv("SHARDCAST_SHM_DIR");
    shm::Location location{shm_dir};
    auto orphans = dry_run ? shm::find_orphans(location) : shm::remove_orphans(location);
    for (const auto& o : orphans) {
      fmt::print("{} {} ({}, {}, creator pid {})\n", dry_run ? "orphan" : "removed", o.name, format_size(o.bytes),
                 o.state, o.creator_pid);
    }
    fmt::print("{} orphaned segment(s) {} in {}\n", orphans.size(), dry_run ? "found" : "removed", location.describe());
  });
}

}  // namespace shardcast::cli
