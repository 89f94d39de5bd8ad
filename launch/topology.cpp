#include "launch/topology.h"

#include <unistd.h>

#include <chrono>
#include <map>

#include <fmt/format.h>

#include "core/error.h"

namespace shardcast {
namespace {

std::string make_job_id(const LaunchEnv& launch) {
  if (!launch.job_id.empty()) return launch.job_id;
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  auto now = std::chrono::system_clock::now().time_since_epoch();
  return fmt::format("{}-{}-{}", host, getpid(), std::chrono::duration_cast<std::chrono::milliseconds>(now).count());
}

}  // namespace

std::string sanitize_job_id(const std::string& id) {
  std::string out;
  for (char c : id) out += (std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-') ? c : '_';
  return out.substr(0, 120);
}

std::string Topology::describe() const {
  return fmt::format("rank {}/{} (local {}/{}) on node {}/{}, job '{}', launched by {} ({}), talking over {}", rank,
                     world_size, local_rank, local_size, node, node_count, job_id, launcher, evidence, communicator);
}

Group make_group(std::unique_ptr<Communicator> world, const LaunchEnv& launch, Timeout timeout) {
  Group g;
  Topology& t = g.topology;
  t.rank = world->rank();
  t.world_size = world->size();
  t.launcher = launcher_name(launch.launcher);
  t.evidence = launch.evidence;
  t.communicator = world->kind();

  // Every rank must have been given the same job id by its launcher (ranks of two jobs that meet at one rendezvous
  // would otherwise mix); rank 0's is used, or one it makes when the launcher gives none.
  // Each entry is "<launcher's id>\n<rank 0's pick>" (the pick empty on other ranks).
  auto ids = world->all_gather(launch.job_id + "\n" + (t.rank == 0 ? make_job_id(launch) : ""), "job id", timeout);
  const auto launcher_id = [&](int r) { return ids[r].substr(0, ids[r].find('\n')); };
  for (int r = 1; r < t.world_size; ++r) {
    if (launcher_id(r) != launcher_id(0)) {
      throw Error(ErrorCode::kInvalidArgument,
                  fmt::format("rank {} belongs to job '{}' but rank 0 to job '{}': ranks of different jobs met at one "
                              "rendezvous (same MASTER_ADDR:MASTER_PORT?)",
                              r, launcher_id(r), launcher_id(0)));
    }
  }
  t.job_id = sanitize_job_id(ids[0].substr(ids[0].find('\n') + 1));

  const std::string key = launch.ranks_per_node > 0 ? fmt::format("virtual-node-{}", t.rank / launch.ranks_per_node)
                                                    : world->node_key(timeout);
  auto keys = world->all_gather(key, "node grouping", timeout);
  std::map<std::string, int> node_of_key;  // in order of first appearance by rank
  std::vector<int> node_of_rank(t.world_size);
  for (int r = 0; r < t.world_size; ++r) {
    auto it = node_of_key.emplace(keys[r], static_cast<int>(node_of_key.size())).first;
    node_of_rank[r] = it->second;
  }
  t.node = node_of_rank[t.rank];
  t.node_count = static_cast<int>(node_of_key.size());
  g.node = world->split(t.node, t.rank, "split by node", timeout);
  t.local_rank = g.node->rank();
  t.local_size = g.node->size();
  auto leaders = world->split(t.local_rank == 0 ? 0 : 1, t.node, "split node leaders", timeout);
  if (t.local_rank == 0) g.leaders = std::move(leaders);
  g.world = std::move(world);
  return g;
}

}  // namespace shardcast
