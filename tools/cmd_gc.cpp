#include <fmt/format.h>

#include "core/size.h"
#include "shm/kept_copies.h"
#include "shm/segment.h"
#include "tools/commands.h"

namespace shardcast::cli {

void add_gc(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "gc", "Remove what dead jobs left (named segments, half-published kept copies) and expired kept copies");
  static std::string shm_dir;
  static bool dry_run = false, kept = false;
  cmd->add_option("--shm-dir", shm_dir,
                  "segment directory used with load --shm-dir (default $SHARDCAST_SHM_DIR, else /dev/shm)")
      ->check(CLI::ExistingDirectory);  // a mistyped directory would read as "0 orphans"
  cmd->add_flag("--kept", kept, "also remove this user's kept copies that have not expired");
  cmd->add_flag("--dry-run", dry_run, "only list them");
  cmd->callback([] {
    const shm::Location location = shm::Location::resolve(shm_dir);
    auto orphans = dry_run ? shm::find_orphans(location) : shm::remove_orphans(location);
    for (const auto& o : orphans) {
      fmt::print("{} {} ({}, {}, creator pid {})\n", dry_run ? "orphan" : "removed", o.name, format_size(o.bytes),
                 o.state, o.creator_pid);
    }
    fmt::print("{} orphaned segment(s) {} in {}\n", orphans.size(), dry_run ? "found" : "removed", location.describe());

    shm::KeptStore store(location);
    const int64_t now = shm::unix_now();
    std::vector<shm::KeptCopyInfo> copies;
    if (dry_run) {
      for (auto& c : store.list(now, false)) {
        if (kept || c.expired || !c.problem.empty()) copies.push_back(std::move(c));
      }
    } else {
      copies = store.collect(now, kept);
    }
    for (const auto& c : copies) {
      const std::string why = !c.problem.empty() ? "orphan: " + c.problem : c.expired ? "expired" : "kept";
      fmt::print("{} kept copy {} ({}, {})\n", dry_run ? "would remove" : "removed", c.name, format_size(c.allocated),
                 why);
    }
    fmt::print("{} kept cop{} {} in {}\n", copies.size(), copies.size() == 1 ? "y" : "ies",
               dry_run ? "to remove" : "removed", store.dir().string());
  });
}

}  // namespace shardcast::cli
