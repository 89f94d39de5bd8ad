#include <atomic>

#include <fmt/format.h>

#include "core/error.h"
#include "launch/communicator.h"
#include "launch/launch_env.h"
#include "shardcast/config.h"

namespace shardcast {

std::string built_communicators() {
  return fmt::format("{}store ({}), self", SHARDCAST_HAVE_MPI ? "mpi, " : "",
                     SHARDCAST_HAVE_GLOO ? "Gloo broadcasts" : "broadcasts through the store");
}

std::unique_ptr<Communicator> make_world_communicator(const LaunchEnv& env, Timeout timeout) {
  std::unique_ptr<Communicator> world;
  switch (env.launcher) {
    case Launcher::kNone: return make_self_communicator();
    case Launcher::kOpenMpi:
    case Launcher::kSlurm:
    case Launcher::kPmi: world = make_mpi_world_communicator(); break;
    case Launcher::kTorchrun: {
      // Keys of each Session in this process apart: every rank creates its sessions in the same order.
      static std::atomic<int> sessions{0};
      world = make_tcp_store_communicator(env.master_addr, env.master_port, env.rank, env.world_size, env.agent_store,
                                          fmt::format("{}/session{}", env.store_namespace, sessions++), timeout);
      break;
    }
  }
  // A launcher and MPI that disagree (e.g. an MPI library that does not speak the launcher's PMI) would otherwise
  // give several jobs of one rank, each loading alone.
  if ((env.world_size >= 0 && env.world_size != world->size()) || (env.rank >= 0 && env.rank != world->rank())) {
    throw Error(ErrorCode::kInvalidArgument,
                fmt::format("the launcher says rank {} of {} ({}) but the {} communicator says rank {} of {}", env.rank,
                            env.world_size, env.describe(), world->kind(), world->rank(), world->size()));
  }
  return world;
}

}  // namespace shardcast
