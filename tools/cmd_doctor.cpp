// `shardcast doctor [CKPT]`: what on this host would make a load fail, and the fix, before a job finds out. Each check
// is ok, warn (works, but watch it) or fail (a load of CKPT would fail here); exit status 1 on any fail.
#include <sys/resource.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <optional>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "coordinator/catalog.h"
#include "core/meminfo.h"
#include "core/size.h"
#include "launch/launch_env.h"
#include "shm/kept_copies.h"
#include "shm/node_link.h"
#include "shm/segment.h"
#include "tools/commands.h"

namespace shardcast::cli {
namespace {

namespace fs = std::filesystem;

struct Check {
  std::string name;
  std::string status;  // ok, warn, fail
  std::string detail;
  std::string fix;
};

std::optional<uint64_t> read_number(const fs::path& path) {
  std::ifstream in(path);
  std::string text;
  if (!(in >> text) || text == "max") return std::nullopt;
  try {
    const uint64_t value = std::stoull(text);
    return value >= (1ull << 62) ? std::nullopt : std::optional<uint64_t>(value);  // v1 says "no limit" this way
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

// The tightest memory limit of this process's cgroup (v2: the cgroup and its ancestors; v1: the memory controller's
// cgroup): limit, usage, and where it is set. Shared memory is charged to the cgroup of the process that touches it.
struct CgroupMemory {
  std::string where;
  uint64_t limit = 0;
  uint64_t usage = 0;
};

std::optional<CgroupMemory> cgroup_memory() {
  std::ifstream in("/proc/self/cgroup");
  std::string line, v2_path;
  std::optional<CgroupMemory> tightest;
  auto consider = [&](const fs::path& dir, const char* limit_file, const char* usage_file) {
    const auto limit = read_number(dir / limit_file);
    if (!limit) return;
    const uint64_t usage = read_number(dir / usage_file).value_or(0);
    if (!tightest || *limit - std::min(usage, *limit) < tightest->limit - std::min(tightest->usage, tightest->limit)) {
      tightest = CgroupMemory{(dir / limit_file).string(), *limit, usage};
    }
  };
  while (std::getline(in, line)) {
    const size_t first = line.find(':'), second = line.find(':', first + 1);
    if (first == std::string::npos || second == std::string::npos) continue;
    const std::string controllers = line.substr(first + 1, second - first - 1), path = line.substr(second + 1);
    if (controllers == "memory" || controllers.find(",memory") != std::string::npos) {  // v1
      for (const fs::path& dir :
           {fs::path("/sys/fs/cgroup/memory") / fs::path(path).relative_path(), fs::path("/sys/fs/cgroup/memory")}) {
        consider(dir, "memory.limit_in_bytes", "memory.usage_in_bytes");
      }
      return tightest;
    }
    if (controllers.empty() && line.rfind("0::", 0) == 0) v2_path = path;
  }
  for (fs::path dir = fs::path("/sys/fs/cgroup") / fs::path(v2_path).relative_path();; dir = dir.parent_path()) {
    consider(dir, "memory.max", "memory.current");
    if (dir == "/sys/fs/cgroup" || dir == dir.parent_path()) break;
  }
  return tightest;
}

std::vector<Check> run_checks(const shm::Location& location, const std::optional<uint64_t>& need) {
  std::vector<Check> checks;
  const std::string needs = need ? fmt::format("the checkpoint's node copy needs {}", format_size(*need)) : "";

  const LaunchEnv launch = detect_launch_env();
  checks.push_back({"launcher", "ok", fmt::format("{} ({})", launcher_name(launch.launcher), launch.evidence), ""});

  const uint64_t free_shm = shm::free_bytes(location);
  Check shared{"shared memory", "ok", fmt::format("{} has {} free", location.describe(), format_size(free_shm)), ""};
  const std::string shm_fix =
      "give the container more (docker run --shm-size=...), or put segments on a local disk with --shm-dir DIR";
  if (need && *need > free_shm) {
    shared = {"shared memory", "fail", shared.detail + "; " + needs, shm_fix};
  } else if (!need && free_shm < (1ull << 30)) {
    shared = {"shared memory", "warn", shared.detail + ": a load needs its checkpoint's size free here", shm_fix};
  }
  checks.push_back(shared);

  const uint64_t available = mem_available_bytes();
  Check memory{"memory", "ok", fmt::format("{} available (MemAvailable)", format_size(available)), ""};
  if (need && *need > available) {
    memory = {"memory", "fail", memory.detail + "; " + needs,
              "load a part per rank (tensor filter, tensor-parallel slices) or use a node with more memory"};
  }
  checks.push_back(memory);

  const auto cgroup = cgroup_memory();
  Check limit{"cgroup memory", "ok", "no memory limit", ""};
  if (cgroup) {
    const uint64_t headroom = cgroup->limit - std::min(cgroup->usage, cgroup->limit);
    limit.detail = fmt::format("{} of {} used ({}); shared memory counts against it", format_size(cgroup->usage),
                               format_size(cgroup->limit), cgroup->where);
    if (need && *need > headroom) {
      limit = {"cgroup memory", "fail", limit.detail + "; " + needs + ": the OOM killer would end the job",
               "raise the job's memory limit (SLURM --mem, docker run --memory)"};
    }
  }
  checks.push_back(limit);

  rlimit memlock{};
  getrlimit(RLIMIT_MEMLOCK, &memlock);
  if (memlock.rlim_cur == RLIM_INFINITY) {
    checks.push_back({"locked memory", "ok", "RLIMIT_MEMLOCK unlimited", ""});
  } else {
    checks.push_back({"locked memory", "warn",
                      fmt::format("RLIMIT_MEMLOCK is {} (hard {}): NCCL's InfiniBand/RoCE transport registers (locks) "
                                  "memory and wants it unlimited",
                                  format_size(memlock.rlim_cur),
                                  memlock.rlim_max == RLIM_INFINITY ? "unlimited" : format_size(memlock.rlim_max)),
                      "ulimit -l unlimited (in the job script, or memlock in /etc/security/limits.conf)"});
  }

  try {
    shm::Segment::create("doctor's probe segment", 0, 0, location);
    checks.push_back({"segments", "ok", fmt::format("unnamed segments can be made in {}", location.describe()), ""});
  } catch (const std::exception& e) {
    checks.push_back({"segments", "fail", e.what(), "point --shm-dir at a writable local directory"});
  }
  try {
    shm::NodeLink::listen(0);
    checks.push_back({"node link", "ok", "local ranks can be linked (abstract Unix sockets)", ""});
  } catch (const std::exception& e) {
    checks.push_back({"node link", "fail", e.what(), "run the job's ranks of a node in one network namespace"});
  }

  uint64_t orphan_bytes = 0;
  const auto orphans = shm::find_orphans(location);
  for (const auto& o : orphans) orphan_bytes += o.bytes;
  if (orphans.empty()) {
    checks.push_back({"left segments", "ok", "no named segment left by an earlier version or a dead job", ""});
  } else {
    checks.push_back({"left segments", "warn",
                      fmt::format("{} named segment(s) of dead jobs hold {} in {}", orphans.size(),
                                  format_size(orphan_bytes), location.describe()),
                      "shardcast gc"});
  }
  try {
    uint64_t kept = 0, expired = 0;
    size_t count = 0;
    for (const auto& c : shm::KeptStore(location).list(shm::unix_now(), false)) {
      kept += c.allocated;
      count += 1;
      if (c.expired || !c.problem.empty()) expired += c.allocated;
    }
    if (count == 0) {
      checks.push_back({"kept copies", "ok", "none (load --keep makes them)", ""});
    } else {
      checks.push_back(
          {"kept copies", expired > 0 ? "warn" : "ok",
           fmt::format("{} kept cop{} of earlier jobs hold {} of {} ({} expired or orphaned); the free space above is "
                       "what they leave (shardcast ls lists them, shardcast gc --kept frees them)",
                       count, count == 1 ? "y" : "ies", format_size(kept), location.describe(), format_size(expired)),
           expired > 0 ? "shardcast gc" : ""});
    }
  } catch (const std::exception& e) {
    checks.push_back({"kept copies", "warn", e.what(), "remove the directory named"});
  }
  return checks;
}

}  // namespace

void add_doctor(CLI::App& app) {
  auto* cmd = app.add_subcommand("doctor", "Check this host for what would make a load fail, and say the fix");
  static std::string checkpoint, shm_dir;
  static bool json = false;
  cmd->add_option("CHECKPOINT", checkpoint, "also check room for this checkpoint's node copy");
  cmd->add_option("--shm-dir", shm_dir, "segment directory of load --shm-dir (default $SHARDCAST_SHM_DIR, /dev/shm)")
      ->check(CLI::ExistingDirectory);
  cmd->add_flag("--json", json, "print the checks as JSON");
  cmd->callback([] {
    const shm::Location location = shm::Location::resolve(shm_dir);
    std::optional<uint64_t> need;
    if (!checkpoint.empty()) need = open_catalog(checkpoint).tensor_bytes();
    const std::vector<Check> checks = run_checks(location, need);
    int failures = 0;
    for (const Check& c : checks) failures += c.status == "fail";
    if (json) {
      nlohmann::ordered_json out;
      char host[256] = {};
      gethostname(host, sizeof(host) - 1);
      out["host"] = host;
      out["location"] = location.describe();
      out["checkpoint_bytes"] = need ? nlohmann::ordered_json(*need) : nlohmann::ordered_json(nullptr);
      for (const Check& c : checks) {
        out["checks"].push_back({{"check", c.name}, {"status", c.status}, {"detail", c.detail}, {"fix", c.fix}});
      }
      out["failures"] = failures;
      fmt::print("{}\n", out.dump(2));
    } else {
      for (const Check& c : checks) {
        fmt::print("{:<5} {:<14} {}\n", c.status, c.name, c.detail);
        if (!c.fix.empty()) fmt::print("{:<20} fix: {}\n", "", c.fix);
      }
    }
    exit_code = failures > 0 ? 1 : 0;
  });
}

}  // namespace shardcast::cli
