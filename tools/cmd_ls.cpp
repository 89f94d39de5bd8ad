#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/duration.h"
#include "core/size.h"
#include "shm/kept_copies.h"
#include "tools/commands.h"

namespace shardcast::cli {

void add_ls(CLI::App& app) {
  auto* cmd = app.add_subcommand("ls", "List this user's kept copies on this node (load --keep)");
  static std::string shm_dir;
  static bool json = false;
  cmd->add_option("--shm-dir", shm_dir, "segment directory of load --shm-dir (default $SHARDCAST_SHM_DIR, /dev/shm)")
      ->check(CLI::ExistingDirectory);
  cmd->add_flag("--json", json, "print them as JSON");
  cmd->callback([] {
    const shm::KeptStore store(shm::Location::resolve(shm_dir));
    const int64_t now = shm::unix_now();
    const std::vector<shm::KeptCopyInfo> copies = store.list(now);
    uint64_t total = 0;
    for (const auto& c : copies) total += c.allocated;
    if (json) {
      nlohmann::ordered_json out;
      out["dir"] = store.dir().string();
      out["bytes"] = total;
      out["copies"] = nlohmann::ordered_json::array();
      for (const auto& c : copies) {
        out["copies"].push_back({{"key", c.name},
                                 {"checkpoint", c.manifest.checkpoint},
                                 {"request", c.manifest.request},
                                 {"bytes", c.allocated},
                                 {"created_unix", c.manifest.created_unix},
                                 {"expires_unix", c.manifest.expires_unix},
                                 {"expired", c.expired},
                                 {"users", c.users},
                                 {"problem", c.problem}});
      }
      fmt::print("{}\n", out.dump(2));
      return;
    }
    if (!copies.empty()) {
      fmt::print("{:<32}  {:>9}  {:>7}  {:>10}  {:>5}  {}\n", "KEY", "SIZE", "AGE", "EXPIRES", "USERS",
                 "CHECKPOINT: REQUEST");
    }
    for (const auto& c : copies) {
      if (!c.problem.empty()) {
        fmt::print("{:<32}  {:>9}  {:>7}  {:>10}  {:>5}  orphan: {}\n", c.name, format_size(c.allocated), "-", "-",
                   c.users, c.problem);
        continue;
      }
      const auto age = std::chrono::seconds(now - c.manifest.created_unix);
      const auto left = std::chrono::seconds(c.manifest.expires_unix - now);
      fmt::print("{:<32}  {:>9}  {:>7}  {:>10}  {:>5}  {}: {}\n", c.name, format_size(c.allocated),
                 format_duration(age), c.expired ? "expired" : "in " + format_duration(left), c.users,
                 c.manifest.checkpoint, c.manifest.request);
    }
    fmt::print("{} kept cop{} holding {} in {}\n", copies.size(), copies.size() == 1 ? "y" : "ies", format_size(total),
               store.dir().string());
  });
}

}  // namespace shardcast::cli
